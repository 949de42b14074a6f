//! Presets for the common trading platforms: where each keeps its data, the caches, logs and
//! locks that are rebuilt on a backup and need not cross the uplink, and what the platform
//! keeps open and rewrites while it runs.
//!
//! A preset only fills in a folder and an exclude list; the user can change both. What is
//! live needs no setting: a SQLite database is known by its header and always read through a
//! consistent copy, and a file that changes under a read is read through a stable copy
//! (`snapshot`). The `live` list says what to expect, and where each entry comes from:
//! a platform's documentation, or an observation of its behaviour taken as an assumption.

use serde::Serialize;
use std::path::{Path, PathBuf};

/// A trading platform RainMaker knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Preset {
    /// Stable id, kept in the configuration file (`preset = "ninjatrader8"`).
    pub id: &'static str,
    pub name: &'static str,
    /// What to pick, in words (some platforms keep one folder per installation).
    pub hint: &'static str,
    /// Patterns left out (see [`crate::exclude`]).
    pub exclude: &'static [&'static str],
    /// What the platform keeps open and rewrites while it runs.
    pub live: &'static [Live],
}

/// A file a platform keeps open and writes while it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Live {
    /// A pattern of [`crate::exclude`]'s syntax.
    pub pattern: &'static str,
    pub kind: LiveKind,
    /// Where this comes from.
    pub basis: Basis,
    pub note: &'static str,
}

/// How a live file changes, and so how it is read consistently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LiveKind {
    /// A SQLite database: read through SQLite's online backup.
    Database,
    /// Records added at the end: the append path, proven before "in sync".
    Appended,
    /// Rewritten in place: read in a quiet moment, through a stable copy if it keeps changing.
    Rewritten,
}

/// Whether a file's place and format are in the platform's documentation, or observed and
/// assumed. How often a file is rewritten is behaviour, never documented: it is what the
/// engine is built to survive either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    Documented,
    Assumed,
}

/// Every preset, in the order the dashboard lists them.
pub const PRESETS: &[Preset] = &[
    Preset {
        id: "ninjatrader8",
        name: "NinjaTrader 8",
        hint: "Documents\\NinjaTrader 8: historical data (db), workspaces, templates and custom code",
        exclude: &["cache", "log", "trace", "tmp", "*.lock"],
        live: &[
            Live {
                pattern: "db/NinjaTrader.sqlite",
                kind: LiveKind::Database,
                basis: Basis::Documented,
                note: "accounts, executions, instruments, ATM strategy templates (NinjaTrader's \
                       help names db\\NinjaTrader.sqlite as the database to reset)",
            },
            Live {
                pattern: "db/tick/**/*.ncd",
                kind: LiveKind::Appended,
                basis: Basis::Assumed,
                note: "tick data, one file per instrument and day, grown while recording",
            },
            Live {
                pattern: "db/minute/**/*.ncd",
                kind: LiveKind::Appended,
                basis: Basis::Assumed,
                note: "minute bars, grown while recording",
            },
            Live {
                pattern: "workspaces/*.xml",
                kind: LiveKind::Rewritten,
                basis: Basis::Assumed,
                note: "workspaces, rewritten whole when saved",
            },
        ],
    },
    Preset {
        id: "metatrader4",
        name: "MetaTrader 4",
        hint: "the terminal's data folder (File > Open Data Folder): history, MQL4, profiles, config",
        exclude: &[
            "logs",
            "MQL4/Logs",
            "tester/caches",
            "tester/logs",
            "*.lock",
        ],
        live: &[
            Live {
                pattern: "history/**/*.hst",
                kind: LiveKind::Rewritten,
                basis: Basis::Documented,
                note: "bar history: a header and fixed-size bar records (the .hst format is \
                       documented by MetaQuotes); the last bar is rewritten on every tick and \
                       new bars appended",
            },
            Live {
                pattern: "history/**/*.fxt",
                kind: LiveKind::Rewritten,
                basis: Basis::Assumed,
                note: "strategy tester tick files",
            },
            Live {
                pattern: "config/*.ini",
                kind: LiveKind::Rewritten,
                basis: Basis::Assumed,
                note: "terminal and account settings, rewritten when they change",
            },
        ],
    },
    Preset {
        id: "metatrader5",
        name: "MetaTrader 5",
        hint: "the terminal's data folder (File > Open Data Folder): bases, MQL5, profiles, config",
        exclude: &["logs", "MQL5/Logs", "Tester", "*.lock"],
        live: &[
            Live {
                pattern: "bases/**/history/**/*.hcc",
                kind: LiveKind::Rewritten,
                basis: Basis::Assumed,
                note: "bar history by year; the current year's file is rewritten as bars close",
            },
            Live {
                pattern: "bases/**/ticks/**/*.tkc",
                kind: LiveKind::Rewritten,
                basis: Basis::Assumed,
                note: "ticks by month; the current month's file grows and its index is rewritten",
            },
        ],
    },
    Preset {
        id: "sierrachart",
        name: "Sierra Chart",
        hint: "the installation folder (C:\\SierraChart): Data, chartbooks and settings",
        exclude: &["Logs", "*.tmp", "*.lock"],
        live: &[
            Live {
                pattern: "Data/*.scid",
                kind: LiveKind::Appended,
                basis: Basis::Documented,
                note: "intraday data: a 56-byte header and 40-byte records appended (Sierra \
                       Chart documents the Intraday Data File Format)",
            },
            Live {
                pattern: "Data/*.dly",
                kind: LiveKind::Rewritten,
                basis: Basis::Assumed,
                note: "daily bars as text lines; the last line is rewritten during the day",
            },
            Live {
                pattern: "*.Cht",
                kind: LiveKind::Rewritten,
                basis: Basis::Assumed,
                note: "chartbooks, rewritten whole when saved",
            },
        ],
    },
];

/// The preset with this id.
pub fn find(id: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.id == id)
}

/// A platform's data folder found on this machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Found {
    pub path: PathBuf,
    /// Which installation it is, in words (a MetaTrader terminal's install folder).
    pub label: String,
}

impl Preset {
    /// Where the platform usually keeps its data on this machine, if it is there (the first
    /// of [`Preset::found`]).
    pub fn folder(&self) -> Option<PathBuf> {
        self.found().into_iter().next().map(|f| f.path)
    }

    /// Every data folder of this platform found where it is documented to live: NinjaTrader 8
    /// under Documents, each MetaTrader terminal's data folder (one per installation, under
    /// the user's application data, told apart by its MQL4 or MQL5 folder), Sierra Chart's
    /// installation folder.
    pub fn found(&self) -> Vec<Found> {
        match self.id {
            "ninjatrader8" => dirs::document_dir()
                .map(|d| d.join("NinjaTrader 8"))
                .into_iter()
                .filter(|d| d.is_dir())
                .map(|path| Found {
                    label: path.display().to_string(),
                    path,
                })
                .collect(),
            "metatrader4" | "metatrader5" => {
                let mql = if self.id == "metatrader4" {
                    "MQL4"
                } else {
                    "MQL5"
                };
                dirs::data_dir()
                    .map(|d| terminals(&d.join("MetaQuotes").join("Terminal"), mql))
                    .unwrap_or_default()
            }
            "sierrachart" => [
                PathBuf::from("C:\\SierraChart"),
                PathBuf::from("C:\\SierraChart2"),
            ]
            .into_iter()
            .chain(dirs::home_dir().map(|h| h.join("SierraChart")))
            .filter(|d| d.is_dir())
            .map(|path| Found {
                label: path.display().to_string(),
                path,
            })
            .collect(),
            _ => Vec::new(),
        }
    }
}

/// The MetaTrader terminals' data folders under `terminal_dir` (`MetaQuotes\Terminal`) that
/// hold an `mql` folder (`MQL4` or `MQL5`: which MetaTrader it is), each named by the
/// installation its `origin.txt` names (UTF-16, as the terminal writes it), newest first.
pub fn terminals(terminal_dir: &Path, mql: &str) -> Vec<Found> {
    let Ok(entries) = std::fs::read_dir(terminal_dir) else {
        return Vec::new();
    };
    let mut found: Vec<(std::time::SystemTime, Found)> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join(mql).is_dir())
        .map(|path| {
            let origin = std::fs::read(path.join("origin.txt"))
                .ok()
                .map(|bytes| decode_origin(&bytes))
                .filter(|o| !o.is_empty());
            let label = match origin {
                Some(origin) => format!("installed at {origin}"),
                None => path.display().to_string(),
            };
            let changed = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            (changed, Found { path, label })
        })
        .collect();
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    found.into_iter().map(|(_, f)| f).collect()
}

/// `origin.txt`'s text: UTF-16 little-endian with a byte-order mark, as MetaTrader writes it,
/// or plain UTF-8.
fn decode_origin(bytes: &[u8]) -> String {
    let text = match bytes {
        [0xFF, 0xFE, rest @ ..] => {
            let units: Vec<u16> = rest
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16_lossy(&units)
        }
        _ => String::from_utf8_lossy(bytes).into_owned(),
    };
    text.trim_matches(|c: char| c.is_whitespace() || c == '\u{feff}')
        .chars()
        .filter(|c| !c.is_control())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_metatrader_terminal_is_found_by_its_mql_folder_and_named_by_its_installation() {
        let dir = tempfile::tempdir().unwrap();
        let terminal = dir.path();
        let mt5 = terminal.join("D0E8209F77C8CF37AD8BF550E51FF075");
        std::fs::create_dir_all(mt5.join("MQL5")).unwrap();
        let origin: Vec<u8> = [0xFF, 0xFE]
            .into_iter()
            .chain(
                "C:\\Program Files\\MetaTrader 5\r\n"
                    .encode_utf16()
                    .flat_map(u16::to_le_bytes),
            )
            .collect();
        std::fs::write(mt5.join("origin.txt"), origin).unwrap();
        let mt4 = terminal.join("2E8DC23981084565FA3E19C061F586B2");
        std::fs::create_dir_all(mt4.join("MQL4")).unwrap();
        std::fs::create_dir_all(terminal.join("Common")).unwrap();
        let found = terminals(terminal, "MQL5");
        assert_eq!(
            found,
            vec![Found {
                path: mt5.clone(),
                label: "installed at C:\\Program Files\\MetaTrader 5".into()
            }]
        );
        let found = terminals(terminal, "MQL4");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].path, mt4);
        assert_eq!(
            found[0].label,
            mt4.display().to_string(),
            "no origin.txt: its folder"
        );
        assert!(terminals(&terminal.join("missing"), "MQL5").is_empty());
    }
    use crate::exclude::Exclude;

    #[test]
    fn every_preset_compiles_and_keeps_the_data() {
        let data = [
            "db/tick/ES 12-26/20261127.Last.ncd",
            "workspaces/Untitled 1.xml",
            "history/ICMarkets-Live/EURUSD1.hst",
            "bases/ICMarkets-Live/ticks/EURUSD/202611.tkc",
            "Data/ESZ26.scid",
        ];
        for preset in PRESETS {
            let exclude =
                Exclude::new(preset.exclude).unwrap_or_else(|e| panic!("{}: {e}", preset.name));
            for path in data {
                assert!(!exclude.matches(path), "{} must keep {path}", preset.name);
            }
            assert_eq!(find(preset.id), Some(preset));
        }
        let nt8 = Exclude::new(find("ninjatrader8").unwrap().exclude).unwrap();
        assert!(nt8.matches("db/cache") && nt8.matches("log") && nt8.matches("trace"));
    }

    #[test]
    fn every_live_pattern_compiles_matches_an_example_and_is_not_excluded() {
        let examples = [
            "db/NinjaTrader.sqlite",
            "db/tick/ES 12-26/20261127.Last.ncd",
            "db/minute/ES 12-26/20261127.Last.ncd",
            "workspaces/Untitled 1.xml",
            "history/ICMarkets-Live/EURUSD1.hst",
            "history/ICMarkets-Live/EURUSD1_0.fxt",
            "config/terminal.ini",
            "bases/ICMarkets-Live/history/EURUSD/2026.hcc",
            "bases/ICMarkets-Live/ticks/EURUSD/202611.tkc",
            "Data/ESZ26.scid",
            "Data/ESZ26.dly",
            "Futures.Cht",
        ];
        for preset in PRESETS {
            let excluded = Exclude::new(preset.exclude).unwrap();
            for live in preset.live {
                let pattern = Exclude::new(&[live.pattern])
                    .unwrap_or_else(|e| panic!("{}: {}: {e}", preset.name, live.pattern));
                let example = examples
                    .iter()
                    .find(|e| pattern.matches(e))
                    .unwrap_or_else(|| {
                        panic!("{}: {} matches no example", preset.name, live.pattern)
                    });
                assert!(
                    !excluded.matches(example),
                    "{}: live data {example} must not be left out",
                    preset.name
                );
            }
        }
    }
}
