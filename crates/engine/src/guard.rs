//! The resource guard: samples of the machine go in, pause and resume decisions come out.
//!
//! Sync pauses when the CPU stays above a threshold for a window, when available memory falls
//! below a threshold, or when traffic that is not RainMaker's exceeds a threshold; it resumes
//! only after every condition has stayed clear for a hold time, so a noisy signal does not
//! make it flap. [`Guard`] is the pure policy, driven by [`Sample`]s with their own times so
//! tests can script them; [`Sampler`] reads the real machine with sysinfo, and on Windows
//! reads CPU use with `GetSystemTimes` ([`crate::win32`]) instead of sysinfo's performance
//! counters, which Wine lacks.

use serde::Serialize;
use std::fmt;
use std::time::Duration;

/// One reading of the machine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// When it was taken, from any fixed origin.
    pub at: Duration,
    /// System-wide CPU use, 0 to 100.
    pub cpu_percent: f32,
    /// Memory available to programs, bytes.
    pub available_memory: u64,
    /// Network traffic that is not RainMaker's, bytes per second, both directions.
    pub other_traffic: f64,
}

/// When to pause.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    pub cpu_above: f32,
    /// How long the CPU must stay above `cpu_above`.
    pub cpu_window: Duration,
    pub memory_below: Option<u64>,
    pub traffic_above: Option<f64>,
    /// How long every condition must stay clear before sync resumes.
    pub hold: Duration,
}

impl Default for Thresholds {
    fn default() -> Thresholds {
        Thresholds {
            cpu_above: 85.0,
            cpu_window: Duration::from_secs(10),
            memory_below: None,
            traffic_above: None,
            hold: Duration::from_secs(15),
        }
    }
}

/// Why sync is paused, with the figure that was measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "cause", rename_all = "snake_case")]
pub enum Reason {
    Cpu {
        percent: f32,
        above: f32,
        for_secs: f64,
    },
    Memory {
        available: u64,
        below: u64,
    },
    Traffic {
        bytes_per_second: f64,
        above: f64,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Cpu {
                percent,
                above,
                for_secs,
            } => write!(f, "CPU {percent:.0}% above {above:.0}% for {for_secs:.0} s"),
            Reason::Memory { available, below } => write!(
                f,
                "available memory {} below {}",
                mib(*available),
                mib(*below)
            ),
            Reason::Traffic {
                bytes_per_second,
                above,
            } => write!(
                f,
                "other network traffic {} above {}",
                mbit(*bytes_per_second),
                mbit(*above)
            ),
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1u64 << 20) as f64)
}

fn mbit(bytes_per_second: f64) -> String {
    format!("{:.1} Mbit/s", bytes_per_second * 8.0 / 1e6)
}

/// A change of the guard's decision.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    Paused(Reason),
    /// Resumed after the conditions stayed clear for the hold time; the last reason.
    Resumed(Reason),
}

/// The pause/resume policy.
#[derive(Debug, Clone)]
pub struct Guard {
    thresholds: Thresholds,
    cpu_high_since: Option<Duration>,
    paused: Option<Reason>,
    clear_since: Option<Duration>,
}

impl Guard {
    pub fn new(thresholds: Thresholds) -> Guard {
        Guard {
            thresholds,
            cpu_high_since: None,
            paused: None,
            clear_since: None,
        }
    }

    /// Why sync is paused now, if it is.
    pub fn paused(&self) -> Option<&Reason> {
        self.paused.as_ref()
    }

    /// Takes a sample; returns a transition when the decision changes.
    pub fn observe(&mut self, sample: &Sample) -> Option<Transition> {
        let t = &self.thresholds;
        self.cpu_high_since = match (sample.cpu_percent > t.cpu_above, self.cpu_high_since) {
            (true, None) => Some(sample.at),
            (true, since) => since,
            (false, _) => None,
        };
        let cpu = self.cpu_high_since.and_then(|since| {
            let lasted = sample.at.saturating_sub(since);
            (lasted >= t.cpu_window).then_some(Reason::Cpu {
                percent: sample.cpu_percent,
                above: t.cpu_above,
                for_secs: lasted.as_secs_f64().max(t.cpu_window.as_secs_f64()),
            })
        });
        let memory = t
            .memory_below
            .filter(|below| sample.available_memory < *below)
            .map(|below| Reason::Memory {
                available: sample.available_memory,
                below,
            });
        let traffic = t
            .traffic_above
            .filter(|above| sample.other_traffic > *above)
            .map(|above| Reason::Traffic {
                bytes_per_second: sample.other_traffic,
                above,
            });
        let violation = cpu.or(memory).or(traffic);
        match (&self.paused, violation) {
            (None, Some(reason)) => {
                self.paused = Some(reason.clone());
                self.clear_since = None;
                Some(Transition::Paused(reason))
            }
            (None, None) => None,
            (Some(_), Some(reason)) => {
                // Still over: the hold starts again once everything is clear.
                self.paused = Some(reason);
                self.clear_since = None;
                None
            }
            (Some(_), None) => {
                // While paused the CPU must only stay at or under the threshold, not for a
                // whole window, to count as clear.
                if sample.cpu_percent > t.cpu_above {
                    self.clear_since = None;
                    return None;
                }
                let since = *self.clear_since.get_or_insert(sample.at);
                if sample.at.saturating_sub(since) >= t.hold {
                    self.clear_since = None;
                    self.paused.take().map(Transition::Resumed)
                } else {
                    None
                }
            }
        }
    }
}

/// Reads CPU, memory and network throughput of the real machine.
#[derive(Debug)]
pub struct Sampler {
    system: sysinfo::System,
    networks: sysinfo::Networks,
    cpu: Cpu,
    started: std::time::Instant,
    last: Option<(std::time::Instant, u64, u64)>,
}

/// Where CPU use comes from: sysinfo, or on Windows the machine's CPU times, kept from the
/// last sample to the next (with the last share, for when no time passed between them).
#[cfg(not(windows))]
#[derive(Debug)]
struct Cpu;

#[cfg(windows)]
#[derive(Debug)]
struct Cpu {
    last: Option<crate::win32::SystemTimes>,
    percent: f32,
}

impl Cpu {
    #[cfg(not(windows))]
    fn new(system: &mut sysinfo::System) -> Cpu {
        system.refresh_cpu_usage();
        Cpu
    }

    #[cfg(not(windows))]
    fn percent(&mut self, system: &mut sysinfo::System) -> f32 {
        system.refresh_cpu_usage();
        system.global_cpu_usage()
    }

    #[cfg(windows)]
    fn new(_system: &mut sysinfo::System) -> Cpu {
        Cpu {
            last: crate::win32::system_times().ok(),
            percent: 0.0,
        }
    }

    #[cfg(windows)]
    fn percent(&mut self, _system: &mut sysinfo::System) -> f32 {
        let now = crate::win32::system_times().ok();
        if let (Some(now), Some(last)) = (now, self.last)
            && let Some(percent) = now.busy_percent_since(&last)
        {
            self.percent = percent;
        }
        if now.is_some() {
            self.last = now;
        }
        self.percent
    }
}

impl Default for Sampler {
    fn default() -> Sampler {
        Sampler::new()
    }
}

impl Sampler {
    pub fn new() -> Sampler {
        let mut system = sysinfo::System::new();
        let cpu = Cpu::new(&mut system);
        Sampler {
            system,
            cpu,
            networks: sysinfo::Networks::new_with_refreshed_list(),
            started: std::time::Instant::now(),
            last: None,
        }
    }

    /// Takes a sample. `ours` is the total of bytes RainMaker has sent and received so far,
    /// so that its own traffic is not counted against it. Call it at least
    /// [`sysinfo::MINIMUM_CPU_UPDATE_INTERVAL`] apart.
    pub fn sample(&mut self, ours: u64) -> Sample {
        let cpu_percent = self.cpu.percent(&mut self.system);
        self.system.refresh_memory();
        self.networks.refresh(true);
        let total: u64 = self
            .networks
            .iter()
            .filter(|(name, _)| !name.starts_with("lo"))
            .map(|(_, data)| data.total_received() + data.total_transmitted())
            .sum();
        let now = std::time::Instant::now();
        let other_traffic = match self.last {
            Some((then, total_then, ours_then)) => {
                let seconds = now.duration_since(then).as_secs_f64().max(1e-3);
                let theirs =
                    total.saturating_sub(total_then) as f64 - ours.saturating_sub(ours_then) as f64;
                theirs.max(0.0) / seconds
            }
            None => 0.0,
        };
        self.last = Some((now, total, ours));
        Sample {
            at: now.duration_since(self.started),
            cpu_percent,
            available_memory: self.system.available_memory(),
            other_traffic,
        }
    }
}

/// How often [`machine_cpu_share`] reads the machine (sysinfo's shortest interval is 200 ms).
const CPU_EVERY: Duration = Duration::from_millis(250);

/// System-wide CPU use, 0 to 1, over the last quarter second or so; `None` until two readings
/// were far enough apart. Shared by every caller in the process and cheap enough to ask for
/// every block sent: the machine is read at most every [`CPU_EVERY`].
pub fn machine_cpu_share() -> Option<f64> {
    struct Meter {
        system: sysinfo::System,
        cpu: Cpu,
        read_at: std::time::Instant,
        share: Option<f64>,
    }
    static METER: std::sync::Mutex<Option<Meter>> = std::sync::Mutex::new(None);
    let mut meter = METER.lock().ok()?;
    let now = std::time::Instant::now();
    let meter = meter.get_or_insert_with(|| {
        let mut system = sysinfo::System::new();
        let cpu = Cpu::new(&mut system);
        Meter {
            system,
            cpu,
            read_at: now,
            share: None,
        }
    });
    if now.duration_since(meter.read_at) >= CPU_EVERY {
        let percent = meter.cpu.percent(&mut meter.system);
        meter.share = Some(f64::from(percent.clamp(0.0, 100.0)) / 100.0);
        meter.read_at = now;
    }
    meter.share
}

/// Where sync waits while the guard has it paused. Cloned into every target's loop.
#[derive(Debug, Clone)]
pub struct Gate(tokio::sync::watch::Receiver<GateState>);

/// The guard's current decision, as the gate shows it.
#[derive(Debug, Clone, PartialEq)]
pub enum GateState {
    /// The guard has not measured yet (it takes a moment to read the CPU).
    Measuring,
    Open,
    Paused(Reason),
}

impl Gate {
    /// A gate with its control.
    pub fn channel() -> (tokio::sync::watch::Sender<GateState>, Gate) {
        let (tx, rx) = tokio::sync::watch::channel(GateState::Measuring);
        (tx, Gate(rx))
    }

    /// A gate that is always open (no guard).
    pub fn open() -> Gate {
        let (tx, rx) = tokio::sync::watch::channel(GateState::Open);
        drop(tx);
        Gate(rx)
    }

    /// Waits until sync may go on; returns at once when it may (or when the guard is gone).
    pub async fn pass(&mut self) {
        let _ = self.0.wait_for(|s| *s == GateState::Open).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: u64, cpu: f32) -> Sample {
        Sample {
            at: Duration::from_secs(at),
            cpu_percent: cpu,
            available_memory: 8 << 30,
            other_traffic: 0.0,
        }
    }

    #[test]
    fn cpu_pauses_only_after_the_window_and_resumes_after_the_hold() {
        let mut guard = Guard::new(Thresholds::default());
        for at in 0..10 {
            assert_eq!(guard.observe(&sample(at, 93.0)), None, "not yet 10 s above");
        }
        let paused = guard.observe(&sample(10, 93.0));
        let Some(Transition::Paused(reason)) = paused else {
            panic!("10 s above 85% pauses: {paused:?}");
        };
        assert_eq!(reason.to_string(), "CPU 93% above 85% for 10 s");
        for at in 11..25 {
            assert_eq!(
                guard.observe(&sample(at, 40.0)),
                None,
                "clear, but not for 15 s yet"
            );
        }
        assert!(matches!(
            guard.observe(&sample(26, 40.0)),
            Some(Transition::Resumed(_))
        ));
    }

    #[test]
    fn a_noisy_signal_does_not_flap() {
        let mut guard = Guard::new(Thresholds::default());
        let mut transitions = 0;
        // Around the threshold, alternating every second, for ten minutes.
        for at in 0..600 {
            let cpu = if at % 2 == 0 { 90.0 } else { 80.0 };
            transitions += guard.observe(&sample(at, cpu)).is_some() as u32;
        }
        assert_eq!(transitions, 0, "never 10 s in a row above: no pause at all");

        let mut guard = Guard::new(Thresholds::default());
        let mut transitions = Vec::new();
        for at in 0..600 {
            // High for 12 s, then high with a short dip every 7 s: pauses once, and the dips
            // are too short to resume.
            let cpu = if at >= 12 && at % 7 == 0 { 70.0 } else { 95.0 };
            if let Some(t) = guard.observe(&sample(at, cpu)) {
                transitions.push((at, t));
            }
        }
        assert_eq!(
            transitions.len(),
            1,
            "one pause, no flapping: {transitions:?}"
        );
    }

    #[test]
    fn memory_and_traffic_pause_at_once_with_their_figures() {
        let mut guard = Guard::new(Thresholds {
            memory_below: Some(1 << 30),
            traffic_above: Some(50e6 / 8.0),
            ..Thresholds::default()
        });
        let mut low = sample(0, 10.0);
        low.available_memory = 512 << 20;
        let Some(Transition::Paused(reason)) = guard.observe(&low) else {
            panic!("low memory pauses at once");
        };
        assert_eq!(
            reason.to_string(),
            "available memory 512 MiB below 1024 MiB"
        );

        let mut guard = Guard::new(Thresholds {
            traffic_above: Some(50e6 / 8.0),
            ..Thresholds::default()
        });
        let mut busy = sample(0, 10.0);
        busy.other_traffic = 80e6 / 8.0;
        let Some(Transition::Paused(reason)) = guard.observe(&busy) else {
            panic!("a busy link pauses at once");
        };
        assert_eq!(
            reason.to_string(),
            "other network traffic 80.0 Mbit/s above 50.0 Mbit/s"
        );
    }

    #[test]
    fn a_zero_threshold_pauses_on_the_first_sample_with_no_window() {
        let mut guard = Guard::new(Thresholds {
            cpu_above: 0.0,
            cpu_window: Duration::ZERO,
            ..Thresholds::default()
        });
        assert!(matches!(
            guard.observe(&sample(0, 0.5)),
            Some(Transition::Paused(_))
        ));
    }

    #[test]
    fn the_machine_s_cpu_share_is_there_once_two_readings_are_apart() {
        // Busy on one thread meanwhile, so there is something to read.
        let spin = std::thread::spawn(|| {
            let end = std::time::Instant::now() + Duration::from_millis(700);
            let mut x = 0u64;
            while std::time::Instant::now() < end {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        });
        let _ = machine_cpu_share();
        std::thread::sleep(CPU_EVERY + Duration::from_millis(50));
        let share = machine_cpu_share().expect("two readings a quarter second apart");
        assert!((0.0..=1.0).contains(&share), "{share}");
        spin.join().unwrap();
    }

    #[test]
    fn the_real_machine_can_be_sampled() {
        let mut sampler = Sampler::new();
        std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
        let sample = sampler.sample(0);
        assert!((0.0..=100.0).contains(&sample.cpu_percent));
        assert!(
            sample.available_memory > 0,
            "a machine has some memory available"
        );
    }
}
