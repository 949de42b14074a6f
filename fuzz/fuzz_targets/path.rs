//! The path check: no path from the wire that passes it leads outside the target folder,
//! and none panics it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::{Component, Path};

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(parts) = rainmaker_engine::path::check(path) else {
        return;
    };
    let root = Path::new("/srv/rainmaker/root");
    let mut full = root.to_path_buf();
    for part in &parts {
        assert!(!part.is_empty() && *part != "." && *part != "..", "{path:?}");
        assert!(!part.contains(['/', '\\', '\0', ':']), "{path:?} has a separator in {part:?}");
        full.push(part);
    }
    assert!(full.starts_with(root), "{path:?} leaves the root");
    assert!(
        full.components().skip(root.components().count()).all(|c| matches!(c, Component::Normal(_))),
        "{path:?} resolves to something other than plain names below the root"
    );
});
