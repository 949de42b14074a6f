//! Presets for the common trading platforms: where each keeps its data, and the caches, logs
//! and locks that are rebuilt on a backup and need not cross the uplink.
//!
//! A preset only fills in a folder and an exclude list; the user can change both.

use serde::Serialize;
use std::path::PathBuf;

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
}

/// Every preset, in the order the dashboard lists them.
pub const PRESETS: &[Preset] = &[
    Preset {
        id: "ninjatrader8",
        name: "NinjaTrader 8",
        hint: "Documents\\NinjaTrader 8: historical data (db), workspaces, templates and custom code",
        exclude: &["cache", "log", "trace", "tmp", "*.lock"],
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
    },
    Preset {
        id: "metatrader5",
        name: "MetaTrader 5",
        hint: "the terminal's data folder (File > Open Data Folder): bases, MQL5, profiles, config",
        exclude: &["logs", "MQL5/Logs", "Tester", "*.lock"],
    },
    Preset {
        id: "sierrachart",
        name: "Sierra Chart",
        hint: "the installation folder (C:\\SierraChart): Data, chartbooks and settings",
        exclude: &["Logs", "*.tmp", "*.lock"],
    },
];

/// The preset with this id.
pub fn find(id: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.id == id)
}

impl Preset {
    /// Where the platform usually keeps its data on this machine, if it is there.
    pub fn folder(&self) -> Option<PathBuf> {
        let candidates: Vec<PathBuf> = match self.id {
            "ninjatrader8" => dirs::document_dir()
                .map(|d| d.join("NinjaTrader 8"))
                .into_iter()
                .collect(),
            "metatrader4" | "metatrader5" => {
                // One folder per installation below Terminal; the user picks which.
                dirs::data_dir()
                    .map(|d| d.join("MetaQuotes").join("Terminal"))
                    .into_iter()
                    .collect()
            }
            "sierrachart" => [
                PathBuf::from("C:\\SierraChart"),
                PathBuf::from("C:\\SierraChart2"),
            ]
            .into_iter()
            .chain(dirs::home_dir().map(|h| h.join("SierraChart")))
            .collect(),
            _ => Vec::new(),
        };
        candidates.into_iter().find(|c| c.is_dir())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
}
