//! The agent's log files in `--log-dir`: one a day (UTC), 14 kept, and each capped at
//! [`DAY_CAP`] bytes, so a flood of log lines (a peer knocking all day) cannot fill the disk.
//! Past the cap, one line says so and the rest of the day's lines go to stderr only; the count
//! starts from the size of today's file, so a restarted agent does not get a fresh allowance.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::fmt::MakeWriter;

/// The most bytes written to one day's log file.
pub const DAY_CAP: u64 = 32 << 20;
/// Log files kept.
const KEPT: usize = 14;
const PREFIX: &str = "rainmaker";
const SUFFIX: &str = "log";

/// Daily log files with a size cap; a `MakeWriter` for the file layer.
pub struct CappedLog {
    dir: PathBuf,
    cap: u64,
    state: Mutex<State>,
}

struct State {
    appender: RollingFileAppender,
    /// Days since the Unix epoch (UTC) of the file being written.
    day: u64,
    written: u64,
    capped: bool,
}

impl CappedLog {
    /// Daily files in `dir`, each capped at `cap` bytes.
    pub fn new(dir: &Path, cap: u64) -> Result<CappedLog, tracing_appender::rolling::InitError> {
        let appender = RollingFileAppender::builder()
            .rotation(Rotation::DAILY)
            .filename_prefix(PREFIX)
            .filename_suffix(SUFFIX)
            .max_log_files(KEPT)
            .build(dir)?;
        let day = today();
        Ok(CappedLog {
            dir: dir.to_path_buf(),
            cap,
            state: Mutex::new(State {
                appender,
                day,
                written: file_len(dir, day),
                capped: false,
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write_line(&self, line: &[u8]) -> io::Result<()> {
        let mut state = self.state();
        let day = today();
        if day != state.day {
            state.day = day;
            state.written = file_len(&self.dir, day);
            state.capped = false;
        }
        if state.written + line.len() as u64 <= self.cap {
            state.appender.write_all(line)?;
            state.written += line.len() as u64;
        } else if !state.capped {
            state.capped = true;
            let note = format!(
                "{{\"level\":\"WARN\",\"fields\":{{\"message\":\"this log file reached its cap of \
                 {} bytes; the rest of today's lines go to stderr only\"}}}}\n",
                self.cap
            );
            state.appender.write_all(note.as_bytes())?;
            state.written += note.len() as u64;
        }
        Ok(())
    }
}

/// Days since the Unix epoch, UTC.
fn today() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400)
}

/// The size of the day's file, as the appender names it (`rainmaker.YYYY-MM-DD.log`).
fn file_len(dir: &Path, day: u64) -> u64 {
    let (y, m, d) = civil_from_days(day as i64);
    let name = format!("{PREFIX}.{y:04}-{m:02}-{d:02}.{SUFFIX}");
    std::fs::metadata(dir.join(name)).map_or(0, |m| m.len())
}

/// The calendar date of a day since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// One event's writer: the formatter writes an event, then it is written whole or not at all.
pub struct LineWriter<'a> {
    log: &'a CappedLog,
    line: Vec<u8>,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter<'_> {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            let _ = self.log.write_line(&self.line);
        }
    }
}

impl<'a> MakeWriter<'a> for CappedLog {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> LineWriter<'a> {
        LineWriter {
            log: self,
            line: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn total(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.metadata().unwrap().len())
            .sum()
    }

    #[test]
    fn a_flood_of_lines_stops_at_the_cap_with_one_note_also_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let line = format!("{}\n", "x".repeat(99));
        for _ in 0..2 {
            let log = CappedLog::new(dir.path(), 10_000).unwrap();
            for _ in 0..1000 {
                let mut writer = log.make_writer();
                writer.write_all(line.as_bytes()).unwrap();
            }
        }
        let written = total(dir.path());
        assert!(
            (10_000..10_000 + 400).contains(&written),
            "100 KB of lines, twice, leave the cap and two notes at most: {written}"
        );
        let text = std::fs::read_to_string(
            std::fs::read_dir(dir.path())
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
                .path(),
        )
        .unwrap();
        assert!(
            text.contains("reached its cap"),
            "the file says why it stops"
        );
        assert!(
            text.lines()
                .all(|l| l == line.trim_end() || l.contains("cap")),
            "lines are written whole or not at all"
        );
    }

    #[test]
    fn days_are_named_as_the_appender_names_them() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        let dir = tempfile::tempdir().unwrap();
        let log = CappedLog::new(dir.path(), 1 << 20).unwrap();
        log.make_writer().write_all(b"one line\n").unwrap();
        assert_eq!(
            file_len(dir.path(), today()),
            9,
            "today's file is found by its name"
        );
    }
}
