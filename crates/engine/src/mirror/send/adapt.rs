//! How hard to compress for one target: the level that moves the most source bytes a second
//! to it, found by measuring.
//!
//! Compression pays only while the link is slower than the compressor: over a 20 Mbit/s home
//! uplink zstd turns tick data into a third of the bytes, on a LAN it is the compressor that
//! holds the transfer back. Which one holds for a target is not known in advance (the link, the
//! CPU's other work and the data all change it), so each target's sender measures, as zstd's
//! `--adapt` does, two things about each window of a few MiB of source data:
//! - where it waited: for the link (its writes blocked: the socket is full) or for the blocks
//!   (read and compressed ahead on other threads, not ready). Only a window that clearly
//!   waited for the link asks for a stronger level; any other asks for a lighter one (as fast
//!   for less CPU is better). Where the system tells (Linux's `TCP_INFO`,
//!   `transport::SendTimes`), the part of a write's wait the target's receive window caused
//!   (its disk or CPU not keeping up with what arrives) is not the link's: compressing harder
//!   cannot help a target that writes the same bytes to its disk whatever crossed the link.
//!   And a target that says it is busy (`Message::Load`: the share of its time it worked on
//!   what arrived rather than waited for more) is what holds the transfer back: a window in
//!   which it was busy asks for a lighter level, as stronger compression would only give it
//!   more to decompress (three targets sharing the source's two cores took zstd -4 for two
//!   thirds of their blocks without it). Nor is a stronger level tried while the source's
//!   machine has no CPU to spare (85% busy, all programs): it would take it from the
//!   trading platform, or, where the targets run on the same machine, from them;
//! - how fast it went. The level asked for is tried for one window and kept unless it was
//!   clearly slower (the data may not compress, or the CPU the sender's TLS shares may be the
//!   limit); a try that lost makes the next one in that direction wait twice as long (up to 16
//!   windows), so a level that fits costs few tries.
//! - whether a stronger level could pay at all: a level whose compressor (as measured on this
//!   push's blocks, threads sharing the CPU counted as slower, the cores shared by the targets
//!   sending at once) delivers fewer bytes a second than the target already takes is not tried. A target held back by its own disk looks like
//!   a slow link (the writes block), but compressing harder cannot speed it up, and on a
//!   source feeding three such targets the tries that won by noise took the CPU the others
//!   needed.
//!
//! The levels run from none, through zstd's fast level -4 (below level 1), to 1, 4, 6 and 9.
//! On tick data in 128 KiB blocks (`zstd -b -B128K`, this kind of CPU, one thread) they make
//! 36%, 31%, 30%, 27.5% and 27.2% of the bytes at 480, 330, 280, 95 and 46 MB/s: each rung is
//! a step in size or in speed (level 3 was not: it made more bytes than 1 on that data, so a
//! climb stalled below the levels that pay on a home uplink, 12% fewer bytes at 6).

use std::time::{Duration, Instant};

/// How a block is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// As it is.
    Raw,
    /// zstd at this level (negative: zstd's fast levels).
    Zstd(i32),
}

impl Level {
    /// Its place on [`LADDER`] (a level not on it: the first).
    pub(super) fn rung(self) -> usize {
        LADDER.iter().position(|l| *l == self).unwrap_or(0)
    }
}

/// The levels a target moves between, from the cheapest to the strongest.
pub(super) const LADDER: [Level; 6] = [
    Level::Raw,
    Level::Zstd(-4),
    Level::Zstd(1),
    Level::Zstd(4),
    Level::Zstd(6),
    Level::Zstd(9),
];

/// How fast each level compresses relative to the others (one thread, tick data, MB/s), to
/// estimate a level not measured yet from one that was.
const RELATIVE_SPEED: [f64; LADDER.len()] = [f64::INFINITY, 480.0, 330.0, 280.0, 95.0, 46.0];

/// Source bytes in a window: enough blocks that one slow block does not decide.
const WINDOW_BYTES: u64 = 4 << 20;
/// A window lasts at least this long (on a LAN 4 MiB can take a few milliseconds).
const WINDOW_TIME: Duration = Duration::from_millis(100);
/// The most windows between two tries in one direction.
const MAX_WAIT: u64 = 16;
/// Windows before trying the level just left for being slower.
const CAME_FROM_WAIT: u64 = 8;
/// A stronger level must be this much faster to be kept: compressing takes the trading PC's
/// CPU, so it has to pay (and the measurements are noisy).
const UP_IF_FASTER_BY: f64 = 1.03;
/// A window asks for a stronger level when it waited for the link this many times as long as
/// for the blocks, and for a lighter one otherwise.
const LOPSIDED: f64 = 2.0;
/// A lighter level is kept unless it is this much slower: as fast for less CPU is better.
const DOWN_UNLESS_SLOWER_BY: f64 = 0.97;
/// A target busy this share of a window (its own reports, `Message::Load`) is what holds the
/// transfer back: the window asks for a lighter level, whatever the link did.
const TARGET_BUSY: f64 = 0.8;
/// While the source's machine is this busy (its CPU, all programs), no stronger level is
/// tried: compressing harder would take the CPU from the trading platform, or, where the
/// targets run on the same machine, from the targets.
const MACHINE_BUSY: f64 = 0.85;
/// Under that pressure (a busy target, a busy machine) a lighter level is kept unless it is
/// this much slower for this target: the CPU it saves is another's.
const PRESSED_DOWN_UNLESS_SLOWER_BY: f64 = 0.8;

/// One target's choice of level, and what it measured.
#[derive(Debug, Clone)]
pub struct Adapt {
    /// The level in use, as a place on [`LADDER`].
    rung: usize,
    /// The level it comes back to after a probe.
    home: usize,
    /// Fixed by the user: never moves.
    fixed: bool,
    /// The last rate measured at each level, source bytes a second.
    rates: [Option<f64>; LADDER.len()],
    window: Option<(Instant, u64)>,
    /// Time the window waited for the link (writes) and for the blocks (reads, compression).
    waited_link: Duration,
    waited_blocks: Duration,
    /// The target's reports of how busy it was during the window: their sum and count.
    target_busy: (f64, u32),
    /// The source machine's CPU use, 0 to 1, as last read.
    machine_busy: Option<f64>,
    /// Windows to spend at home before trying the level below (0) and above (1).
    wait: [u64; 2],
    /// Windows spent at home since the last try.
    since: u64,
    /// The direction of the try in progress (1: up).
    trying: usize,
    /// Source bytes a second the compressor can deliver to this target at each level, as
    /// measured (none: not measured).
    compressors: [Option<f64>; LADDER.len()],
    /// Source bytes sent at each level, for the report.
    pub bytes_at: [u64; LADDER.len()],
}

impl Adapt {
    /// Always `level`.
    pub fn fixed(level: Level) -> Adapt {
        Adapt {
            fixed: true,
            ..Adapt::starting_at(level.rung())
        }
    }

    /// Measures, starting at `level`.
    pub fn adaptive(level: Level) -> Adapt {
        Adapt::starting_at(level.rung())
    }

    fn starting_at(rung: usize) -> Adapt {
        Adapt {
            rung,
            home: rung,
            fixed: false,
            rates: [None; LADDER.len()],
            window: None,
            waited_link: Duration::ZERO,
            waited_blocks: Duration::ZERO,
            target_busy: (0.0, 0),
            machine_busy: None,
            wait: [1, 1],
            since: 0,
            trying: 0,
            compressors: [None; LADDER.len()],
            bytes_at: [0; LADDER.len()],
        }
    }

    /// The level the next block is sent at.
    pub fn level(&self) -> Level {
        LADDER[self.rung]
    }

    /// The level the next block is sent at, as its place on [`LADDER`].
    pub fn rung(&self) -> usize {
        self.rung
    }

    /// Source bytes sent at each level, in words (for the log).
    pub fn summary(&self) -> String {
        let parts: Vec<String> = LADDER
            .iter()
            .zip(self.bytes_at)
            .filter(|(_, bytes)| *bytes > 0)
            .map(|(level, bytes)| match level {
                Level::Raw => format!("{bytes} B raw"),
                Level::Zstd(l) => format!("{bytes} B at zstd {l}"),
            })
            .collect();
        parts.join(", ")
    }

    /// Time that must not count against the level in use (the guard's pause, a bandwidth
    /// cap's wait is the link's and does count): the window in progress starts over.
    pub fn restart_window(&mut self) {
        self.window = None;
        self.waited_link = Duration::ZERO;
        self.waited_blocks = Duration::ZERO;
        self.target_busy = (0.0, 0);
    }

    /// Takes the source machine's CPU use (0 to 1, all programs), as last read.
    pub fn machine_busy(&mut self, share: f64) {
        self.machine_busy = Some(share);
    }

    /// Takes the target's report of the share of its time it was busy (its CPU or disk
    /// working on what arrived rather than waiting for more).
    pub fn target_busy(&mut self, share: f64) {
        self.target_busy.0 += share;
        self.target_busy.1 += 1;
    }

    /// Records time spent waiting for the link (a write) and for the blocks (the next one to
    /// send was not ready).
    pub fn waited(&mut self, link: Duration, blocks: Duration) {
        self.waited_link += link;
        self.waited_blocks += blocks;
    }

    /// Takes the source bytes a second the compressor can deliver to this target at each
    /// level (its threads together), as measured so far.
    pub fn compressors(&mut self, speeds: [Option<f64>; LADDER.len()]) {
        self.compressors = speeds;
    }

    /// The compressor's speed at `rung`: measured, or estimated from the nearest measured
    /// level below it; none when no level was measured (a first try is cheap: it is one
    /// window).
    fn compressor(&self, rung: usize) -> Option<f64> {
        if rung == 0 {
            return None;
        }
        self.compressors[rung].or_else(|| {
            (1..rung).rev().find_map(|m| {
                self.compressors[m].map(|speed| speed * RELATIVE_SPEED[rung] / RELATIVE_SPEED[m])
            })
        })
    }

    /// Records that `bytes` of source data were sent at `now`; at the end of a window, may
    /// change the level.
    pub fn sent(&mut self, bytes: u64, now: Instant) {
        self.bytes_at[self.rung] += bytes;
        if self.fixed {
            return;
        }
        let (start, total) = self.window.get_or_insert((now, 0));
        *total += bytes;
        let elapsed = now.duration_since(*start);
        if *total < WINDOW_BYTES || elapsed < WINDOW_TIME {
            return;
        }
        let rate = *total as f64 / elapsed.as_secs_f64();
        self.window = Some((now, 0));
        let (link, blocks) = (self.waited_link, self.waited_blocks);
        self.waited_link = Duration::ZERO;
        self.waited_blocks = Duration::ZERO;
        let busy = match std::mem::take(&mut self.target_busy) {
            (_, 0) => None,
            (sum, n) => Some(sum / f64::from(n)),
        };
        // Only a window that clearly waited for the link asks for more compression, and only
        // while the target keeps up; any other asks for less (as fast for less CPU is better,
        // and a busy target would only have more to decompress).
        let machine = self.machine_busy;
        let pressed = busy.is_some_and(|busy| busy >= TARGET_BUSY)
            || machine.is_some_and(|machine| machine >= MACHINE_BUSY);
        let up = link.as_secs_f64() > LOPSIDED * blocks.as_secs_f64() && !pressed;
        tracing::trace!(level = ?LADDER[self.rung], rate, ?link, ?blocks, ?busy, ?machine, up, "compression window");
        self.decide(rate, usize::from(up), pressed);
    }

    /// Takes the rate of the window that just ended at the current level, and the direction
    /// it asked for (1: a stronger level, 0: a lighter one); `pressed`: the target or the
    /// source's machine had no CPU to spare, so lighter levels are tried at once and kept
    /// unless clearly slower.
    fn decide(&mut self, rate: f64, asks: usize, pressed: bool) {
        self.rates[self.rung] = Some(rate);
        if self.rung != self.home {
            // A try ended: keep it unless it did not pay.
            let home_rate = self.rates[self.home].unwrap_or(0.0);
            let bar = match (self.rung > self.home, pressed) {
                (true, _) => UP_IF_FASTER_BY,
                (false, false) => DOWN_UNLESS_SLOWER_BY,
                (false, true) => PRESSED_DOWN_UNLESS_SLOWER_BY,
            };
            if rate > home_rate * bar {
                tracing::debug!(from = ?LADDER[self.home], to = ?LADDER[self.rung], rate, home_rate, "compression level changed");
                self.home = self.rung;
                // The level it came from was just measured slower: going back waits longer.
                self.wait = [1, 1];
                self.wait[1 - self.trying] = CAME_FROM_WAIT;
            } else {
                self.wait[self.trying] = (self.wait[self.trying] * 2).min(MAX_WAIT);
            }
            self.rung = self.home;
            self.since = 0;
            return;
        }
        self.since += 1;
        let open = match asks {
            1 => self.home < LADDER.len() - 1,
            _ => self.home > 0,
        };
        // A stronger level whose compressor is slower than this target already goes cannot
        // make it faster (asked only below the top: there is no stronger level there).
        let could_pay = || {
            asks == 0
                || self
                    .compressor(self.home + 1)
                    .is_none_or(|speed| speed > rate * UP_IF_FASTER_BY)
        };
        let waited = self.since >= self.wait[asks] || (pressed && asks == 0);
        if open && waited && could_pay() {
            self.trying = asks;
            self.rung = if asks == 1 {
                self.home + 1
            } else {
                self.home - 1
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `adapt` where, at level `l`, the blocks are ready at `producer(l)` source bytes a
    /// second and the link takes `link(l)` (its wire rate over the level's ratio): each block
    /// waits for the slower of the two. Runs `windows` windows' worth of blocks twice; returns
    /// the level it settled on and the share of the second half's bytes sent there.
    fn run(adapt: Adapt, windows: u32, rates: impl FnMut(Level) -> (f64, f64)) -> (Level, f64) {
        run_reporting(adapt, windows, None, rates)
    }

    /// [`run`], where the target reports after every block that it was busy `busy` of the
    /// time (none: it never reports, as an older peer).
    fn run_reporting(
        mut adapt: Adapt,
        windows: u32,
        busy: Option<f64>,
        mut rates: impl FnMut(Level) -> (f64, f64),
    ) -> (Level, f64) {
        let mut now = Instant::now();
        let block = 128 << 10;
        let mut half = [0; LADDER.len()];
        let mut measured = [None; LADDER.len()];
        for round in 0..2 {
            if round == 1 {
                half = adapt.bytes_at;
            }
            for _ in 0..windows * 64 {
                let (producer, link) = rates(adapt.level());
                // Only levels blocks were compressed at are measured.
                if adapt.level() != Level::Raw {
                    measured[adapt.rung()] = Some(producer);
                    adapt.compressors(measured);
                }
                let (ready, sent) = (block as f64 / producer, block as f64 / link);
                let seconds = ready.max(sent);
                // The slower side makes the other wait.
                let wait = |s: f64| Duration::from_secs_f64(s.max(0.0));
                adapt.waited(wait(sent - ready), wait(ready - sent));
                if let Some(busy) = busy {
                    adapt.target_busy(busy);
                }
                now += Duration::from_secs_f64(seconds);
                adapt.sent(block, now);
            }
        }
        let second: Vec<u64> = adapt
            .bytes_at
            .iter()
            .zip(half)
            .map(|(a, b)| a - b)
            .collect();
        // Where it settled: the level a try comes back to.
        let at = adapt.home;
        (
            LADDER[at],
            second[at] as f64 / second.iter().sum::<u64>() as f64,
        )
    }

    /// Source bytes a second the blocks are ready at, per level (reading from the page cache,
    /// then zstd on this kind of CPU: `zstd -b -B128K` on tick data).
    fn producer(l: Level) -> f64 {
        match l {
            Level::Raw => 1.5e9,
            Level::Zstd(-4) => 480e6,
            Level::Zstd(1) => 330e6,
            Level::Zstd(4) => 280e6,
            Level::Zstd(6) => 95e6,
            _ => 46e6,
        }
    }

    /// The share of the bytes left after compression at each level (tick data, as measured).
    fn ratio(l: Level) -> f64 {
        match l {
            Level::Raw => 1.0,
            Level::Zstd(-4) => 0.361,
            Level::Zstd(1) => 0.311,
            Level::Zstd(4) => 0.299,
            Level::Zstd(6) => 0.275,
            _ => 0.272,
        }
    }

    #[test]
    fn on_a_fast_link_it_stops_compressing() {
        // A LAN: 600 MB/s of wire; the compressor is the limit at every level.
        let (level, share) = run(Adapt::adaptive(Level::Zstd(1)), 60, |l| {
            (producer(l), 600e6 / ratio(l))
        });
        assert_eq!(level, Level::Raw);
        assert!(share > 0.75, "most bytes go raw once found: {share}");
    }

    #[test]
    fn where_the_link_waits_for_tls_it_still_sends_raw() {
        // The writes block (TLS on a shared CPU), but every zstd level delivers less.
        let (level, share) = run(Adapt::adaptive(Level::Raw), 60, |l| match l {
            Level::Raw => (producer(l), 400e6),
            _ => (producer(l).min(250e6), 1e9),
        });
        assert_eq!(level, Level::Raw);
        assert!(share > 0.75, "tries are few once they lose: {share}");
    }

    #[test]
    fn on_a_slow_link_with_compressible_data_it_compresses_harder() {
        // A home uplink: 2.5 MB/s of wire.
        let (level, share) = run(Adapt::adaptive(Level::Raw), 40, |l| {
            (producer(l), 2.5e6 / ratio(l))
        });
        // Level 9 makes 1% fewer bytes than 6 for twice the CPU: under the bar a stronger
        // level must clear.
        assert_eq!(level, Level::Zstd(6));
        assert!(share > 0.9, "{share}");
    }

    #[test]
    fn at_the_strongest_level_a_window_that_asks_for_more_keeps_it() {
        // Text on a very slow link: every level pays, the strongest most; at the top, windows
        // still wait for the link and ask for a level there is none of.
        let text = |l: Level| match l {
            Level::Raw => 1.0,
            Level::Zstd(-4) => 0.40,
            Level::Zstd(1) => 0.30,
            Level::Zstd(4) => 0.24,
            Level::Zstd(6) => 0.20,
            _ => 0.15,
        };
        let (level, share) = run(Adapt::adaptive(Level::Zstd(1)), 60, |l| {
            (producer(l), 0.5e6 / text(l))
        });
        assert_eq!(level, Level::Zstd(9));
        assert!(share > 0.9, "{share}");
    }

    #[test]
    fn it_climbs_no_higher_than_the_compressor_keeps_up() {
        // 50 MB/s of wire (a fast WAN): level 4 sends more than 1, level 6 compresses slower
        // than the link would carry its bytes.
        let (level, share) = run(Adapt::adaptive(Level::Zstd(1)), 40, |l| {
            (producer(l), 50e6 / ratio(l))
        });
        assert_eq!(level, Level::Zstd(4));
        assert!(share > 0.85, "{share}");
    }

    /// A factor within 10% of 1 (the same sequence every run), new every 32 blocks: a window's
    /// worth of blocks goes faster or slower than the next.
    fn noise() -> impl FnMut() -> f64 {
        let (mut n, mut blocks, mut noise) = (0u64, 0u64, 1.0);
        move || {
            if blocks % 32 == 0 {
                n = n
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                noise = 1.0 + 0.2 * ((n >> 33) as f64 / (1u64 << 31) as f64 - 0.5);
            }
            blocks += 1;
            noise
        }
    }

    #[test]
    fn a_target_held_back_by_its_disk_is_not_fed_levels_slower_than_it() {
        // One of three targets on one slow disk: it takes 125 MB/s of source data whatever the
        // level (its writes block, as on a slow link), give or take 10% from one window's
        // worth of blocks to the next (the disk's flushes); its share of two cores compresses
        // at half the speed of one thread.
        let mut noise = noise();
        let mut sent_at = [0; LADDER.len()];
        let (_, _) = run(Adapt::adaptive(Level::Zstd(1)), 200, |l| {
            sent_at[l.rung()] += 1;
            (producer(l) / 2.0, 125e6 * noise())
        });
        // Levels 6 and 9 compress at 47 and 23 MB/s here: never worth a try.
        assert_eq!(sent_at[4..], [0, 0], "{sent_at:?}");
    }

    #[test]
    fn a_target_that_says_it_is_busy_gets_its_blocks_raw() {
        // Three targets and the source on two cores (bench/lan.sh's S5): a target takes 125
        // MB/s of source data whatever the level, its CPU the limit, give or take 10% from one
        // window's worth of blocks to the next; the source's compressor is faster than that.
        // The writes block as on a slow link, and tries of zstd win by noise.
        let noisy = || {
            let mut noise = noise();
            move |l: Level| (producer(l), 125e6 * noise())
        };
        let (level, share) = run_reporting(Adapt::adaptive(Level::Raw), 200, None, noisy());
        assert!(
            (level, share) != (Level::Raw, 1.0),
            "without the target's word, noise wins some tries: {level:?}, {share}"
        );
        // The target says it is busy 95% of the time: compressing harder cannot help it.
        let (level, share) = run_reporting(Adapt::adaptive(Level::Raw), 200, Some(0.95), noisy());
        assert_eq!((level, share), (Level::Raw, 1.0));
        // Started at zstd 1, a busy target is brought down to raw even where raw measures a
        // little slower for it (more bytes through its TLS): the CPU the source saves goes to
        // the others.
        let slightly = |l: Level| match l {
            Level::Raw => (producer(l), 118e6),
            _ => (producer(l), 125e6),
        };
        let (level, _) = run_reporting(Adapt::adaptive(Level::Zstd(1)), 100, None, slightly);
        assert_ne!(level, Level::Raw, "unpressed, the faster level wins");
        let (level, share) =
            run_reporting(Adapt::adaptive(Level::Zstd(1)), 100, Some(0.95), slightly);
        assert_eq!(level, Level::Raw);
        assert!(share > 0.95, "{share}");
        // One that waits for data half of the time is not held back by itself.
        let (level, _) = run_reporting(Adapt::adaptive(Level::Raw), 40, Some(0.5), |l| {
            (producer(l), 2.5e6 / ratio(l))
        });
        assert_eq!(
            level,
            Level::Zstd(6),
            "an idle target on a slow link still climbs"
        );
        // On a source whose CPU is taken by other programs, not even a slow link makes it
        // compress harder.
        let mut adapt = Adapt::adaptive(Level::Raw);
        adapt.machine_busy(0.95);
        let (level, share) = run(adapt, 40, |l| (producer(l), 2.5e6 / ratio(l)));
        assert_eq!((level, share), (Level::Raw, 1.0));
    }

    #[test]
    fn a_fixed_level_never_moves() {
        let (level, share) = run(Adapt::fixed(Level::Zstd(1)), 20, |l| {
            (producer(l), 400e6 / ratio(l))
        });
        assert_eq!((level, share), (Level::Zstd(1), 1.0));
    }

    #[test]
    fn where_both_sides_wait_alike_it_goes_lighter() {
        // Blocks and link equally fast, within 3% of noise: no stronger level pays, and a
        // lighter one is as fast for less CPU.
        let mut n = 0u32;
        let (level, share) = run(Adapt::adaptive(Level::Zstd(1)), 40, move |_| {
            n += 1;
            let rate = 100e6 * (1.0 + 0.03 * f64::from(n % 3) / 2.0);
            (rate, rate)
        });
        assert_eq!(level, Level::Raw);
        assert!(share > 0.9, "{share}");
    }
}
