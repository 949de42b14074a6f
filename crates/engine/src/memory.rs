//! Giving freed memory back to the system once a session is over.
//!
//! A session with a large folder allocates per-file state (manifests, plans, index records)
//! on several threads, and frees it at its end. The C allocators keep freed pages for reuse:
//! glibc keeps one arena per thread that allocated, and trims only the top of each by itself,
//! so an agent that received a 300,000-file history held its peak (hundreds of MiB) while idle.
//! [`release_freed`] asks the allocator to return every free page now. It costs a walk of the
//! allocator's free lists (milliseconds) and is called when a session ends, never inside one.
//! What it cannot return is the half-used pages scattered over many arenas: [`few_arenas`],
//! called before any thread starts, keeps glibc to two (an agent idle after a first mirror of
//! 50,000 files: 34 MiB with glibc's default of eight per core, 23 MiB with two).

/// glibc's arenas for the whole process: more would spread a session's leftovers thinner.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENAS: libc::c_int = 2;

/// Keeps the allocator to a few arenas (glibc; other allocators have no such setting). Call it
/// first thing in `main`, before any thread is started. `MALLOC_ARENA_MAX` in the environment
/// still wins.
#[allow(unsafe_code)]
pub fn few_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a parameter of glibc's allocator; M_ARENA_MAX takes effect
        // for threads that allocate later.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, ARENAS);
        }
    }
}

/// Returns the allocator's free pages to the system.
#[allow(unsafe_code)]
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks glibc's own free lists; 0 keeps no padding.
        unsafe {
            libc::malloc_trim(0);
        }
    }
    #[cfg(target_os = "macos")]
    {
        unsafe extern "C" {
            fn malloc_zone_pressure_relief(zone: *mut std::ffi::c_void, goal: usize) -> usize;
        }
        // SAFETY: a null zone means every zone; a goal of 0 means as much as possible.
        unsafe {
            malloc_zone_pressure_relief(std::ptr::null_mut(), 0);
        }
    }
    #[cfg(windows)]
    {
        use windows_sys::Win32::System::Memory::{GetProcessHeap, HeapCompact};
        // SAFETY: the process heap is always valid; compacting it coalesces free blocks and
        // decommits the large free ones. Rust's allocator uses this heap.
        unsafe {
            HeapCompact(GetProcessHeap(), 0);
        }
    }
}
