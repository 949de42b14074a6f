//! The dashboard's TypeScript types are the tray app's Rust types: `ui/src/types.ts` must be
//! what `bindings::typescript` writes. With `RAINMAKER_WRITE_TYPES=1` the test rewrites it.

use rainmaker_tray::bindings::{TYPES_FILE, typescript};
use std::path::Path;

#[test]
fn the_dashboard_s_types_are_generated_from_the_rust_types() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(TYPES_FILE);
    let generated = typescript();
    if std::env::var_os("RAINMAKER_WRITE_TYPES").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "{} is not what the Rust types say; run `RAINMAKER_WRITE_TYPES=1 cargo test -p \
         rainmaker-tray --test types` and check the dashboard against the change",
        path.display()
    );
}
