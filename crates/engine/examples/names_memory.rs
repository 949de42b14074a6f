//! What a target's names cost in memory where its file system ignores case (Windows, macOS):
//! the bytes `mirror::fold::Names` takes from the allocator for a tick history's paths, beside
//! a map of the folded and the given string of each (what it held before).
//!
//!   cargo run --release -p rainmaker-engine --example names_memory [FILES]

use rainmaker_engine::mirror::fold::{Folding, Names};
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Counts the bytes held, as asked for (the allocator's own overhead is not counted).
struct Counting;

static HELD: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; only a counter is kept.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's layout, as GlobalAlloc::alloc requires it.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The bytes `make` leaves held.
fn held_by<T>(make: impl FnOnce() -> T) -> (T, usize) {
    let before = HELD.load(Ordering::Relaxed);
    let made = make();
    (made, HELD.load(Ordering::Relaxed) - before)
}

fn main() {
    let files: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse().expect("FILES is a number"))
        .unwrap_or(300_000);
    // bench/scale.py's tree: db/tick/INSTRUMENT/MONTH/DAY.Last.ncd.
    let paths: Vec<String> = (0..files)
        .map(|i| {
            let (instrument, day) = (i / 372, i % 372);
            format!(
                "db/tick/ES {:02}-26 {instrument}/2026{:02}/2026{:02}{:02}.Last.ncd",
                3 + instrument % 9,
                1 + day / 31,
                1 + day / 31,
                1 + day % 31
            )
        })
        .collect();
    let average = paths.iter().map(String::len).sum::<usize>() / files.max(1);
    let folding = Folding {
        case: true,
        unicode: false,
    };
    let (names, now) = held_by(|| {
        let mut names = Names::new(folding);
        names.reset(&paths);
        names
    });
    let (strings, before) = held_by(|| {
        paths
            .iter()
            .map(|p| (folding.key(p), p.clone()))
            .collect::<HashMap<String, String>>()
    });
    assert_eq!(strings.len(), files, "the paths are distinct");
    println!("{files} paths of {average} bytes on average, on a file system that ignores case:");
    println!(
        "  Names (two hashes a name):     {:6.1} MB",
        now as f64 / 1e6
    );
    println!(
        "  folded and given strings:      {:6.1} MB",
        before as f64 / 1e6
    );
    drop(names);
}
