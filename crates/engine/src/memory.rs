//! Giving freed memory back to the system once a session is over.
//!
//! A session with a large folder allocates per-file state (manifests, plans, index records)
//! on several threads, and frees it at its end. The C allocators keep freed pages for reuse:
//! glibc keeps one arena per thread that allocated, and trims only the top of each by itself,
//! so an agent that received a 300,000-file history held its peak (hundreds of MiB) while idle.
//! [`release_freed`] asks the allocator to return every free page now. It costs a walk of the
//! allocator's free lists (milliseconds) and is called when a session ends, never inside one.

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
