//! The few questions the engine puts to Windows itself, where no crate answers them in a way
//! that works both on Windows and under Wine (where RainMaker's Windows tests run):
//!
//! - `system_times`: the CPU's idle, kernel and user time (`GetSystemTimes`), which the
//!   guard turns into CPU use. sysinfo reads CPU use through the PDH performance counters,
//!   and Wine does not implement `PdhEnumObjectsA`: a program calling it there aborts.
//! - [`under_wine`]: whether this Windows program runs under Wine, so a test can leave out,
//!   with its reason, what only Wine gets wrong. It is `false` on real Windows and elsewhere.
//!
//! - `short_path` (tests only): the 8.3 short name Windows (or Wine) gives a path, to
//!   check the path check refuses the state folder under that alias.
//!
//! Its foreign calls carry, each, the contract they rely on next to them (the engine's other
//! `unsafe` is in `fs` (file locks) and `shadow` (shadow copies)).

/// Whether this program runs under Wine: Wine's `ntdll.dll` exports `wine_get_version`, which
/// Windows' does not. Always `false` off Windows.
pub fn under_wine() -> bool {
    #[cfg(windows)]
    {
        static WINE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *WINE.get_or_init(imp::ntdll_is_wine)
    }
    #[cfg(not(windows))]
    {
        false
    }
}

/// CPU time of the whole machine since it started, in 100 ns units, summed over processors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SystemTimes {
    pub idle: u64,
    /// Includes the idle time, as Windows counts it.
    pub kernel: u64,
    pub user: u64,
}

impl SystemTimes {
    /// The share of the time from `earlier` to `self` the processors were busy, 0 to 100;
    /// `None` when no time passed between the two.
    pub fn busy_percent_since(&self, earlier: &SystemTimes) -> Option<f32> {
        let total = (self.kernel.saturating_sub(earlier.kernel))
            .saturating_add(self.user.saturating_sub(earlier.user));
        if total == 0 {
            return None;
        }
        let idle = self.idle.saturating_sub(earlier.idle).min(total);
        Some(((total - idle) as f64 * 100.0 / total as f64) as f32)
    }
}

/// The machine's CPU times now (`GetSystemTimes`).
#[cfg(windows)]
pub fn system_times() -> std::io::Result<SystemTimes> {
    imp::system_times()
}

/// The short (8.3) form of an existing path (`GetShortPathNameW`); the path itself when the
/// volume makes no short names.
#[cfg(all(windows, test))]
pub fn short_path(path: &std::path::Path) -> std::io::Result<std::path::PathBuf> {
    imp::short_path(path)
}

#[cfg(windows)]
#[allow(unsafe_code)]
mod imp {
    use super::SystemTimes;
    use windows_sys::Win32::Foundation::FILETIME;
    use windows_sys::Win32::System::LibraryLoader::{GetModuleHandleW, GetProcAddress};
    use windows_sys::Win32::System::Threading::GetSystemTimes;

    pub fn system_times() -> std::io::Result<SystemTimes> {
        let zero = FILETIME {
            dwLowDateTime: 0,
            dwHighDateTime: 0,
        };
        let (mut idle, mut kernel, mut user) = (zero, zero, zero);
        // SAFETY: the three pointers are to live, writable FILETIMEs owned by this frame;
        // GetSystemTimes writes each and keeps none.
        let ok = unsafe { GetSystemTimes(&mut idle, &mut kernel, &mut user) };
        if ok == 0 {
            return Err(std::io::Error::last_os_error());
        }
        let ticks = |t: FILETIME| (u64::from(t.dwHighDateTime) << 32) | u64::from(t.dwLowDateTime);
        Ok(SystemTimes {
            idle: ticks(idle),
            kernel: ticks(kernel),
            user: ticks(user),
        })
    }

    #[cfg(test)]
    pub fn short_path(path: &std::path::Path) -> std::io::Result<std::path::PathBuf> {
        use std::os::windows::ffi::{OsStrExt, OsStringExt};
        use windows_sys::Win32::Storage::FileSystem::GetShortPathNameW;
        let long: Vec<u16> = path.as_os_str().encode_wide().chain([0]).collect();
        let mut buffer = vec![0u16; 1024];
        // SAFETY: `long` is NUL-terminated and `buffer` holds the 1024 units the call is told
        // it may write; the call returns how many it wrote (without the NUL), or the size it
        // needs when that is more, or 0 on failure.
        let written =
            unsafe { GetShortPathNameW(long.as_ptr(), buffer.as_mut_ptr(), buffer.len() as u32) };
        if written == 0 || written as usize >= buffer.len() {
            return Err(std::io::Error::last_os_error());
        }
        buffer.truncate(written as usize);
        Ok(std::ffi::OsString::from_wide(&buffer).into())
    }

    pub fn ntdll_is_wine() -> bool {
        let name: Vec<u16> = "ntdll.dll\0".encode_utf16().collect();
        // SAFETY: `name` is a NUL-terminated UTF-16 string that outlives the call; ntdll.dll
        // is loaded into every Windows process, and a module handle from GetModuleHandleW
        // needs no release. GetProcAddress takes a NUL-terminated ANSI name; the address it
        // returns is only compared with null, never called.
        unsafe {
            let ntdll = GetModuleHandleW(name.as_ptr());
            !ntdll.is_null() && GetProcAddress(ntdll, c"wine_get_version".as_ptr().cast()).is_some()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_share_is_what_was_not_idle() {
        let before = SystemTimes {
            idle: 1_000,
            kernel: 3_000,
            user: 1_000,
        };
        let after = SystemTimes {
            idle: 1_750,
            kernel: 4_000,
            user: 1_000,
        };
        assert_eq!(
            after.busy_percent_since(&before),
            Some(25.0),
            "1000 ticks passed, 750 of them idle: a quarter busy"
        );
        assert_eq!(
            before.busy_percent_since(&before),
            None,
            "no time passed, so there is no share to tell"
        );
    }

    #[cfg(windows)]
    #[test]
    fn the_machine_s_cpu_times_move_forward() {
        let before = system_times().expect("GetSystemTimes answers on Windows and under Wine");
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(300) {
            std::hint::black_box(0u64);
        }
        let after = system_times().unwrap();
        assert!(
            after.kernel + after.user > before.kernel + before.user,
            "300 ms of spinning adds processor time"
        );
        let busy = after.busy_percent_since(&before).unwrap();
        assert!((0.0..=100.0).contains(&busy), "{busy}");
    }

    #[test]
    fn wine_is_not_seen_where_it_is_not() {
        if !cfg!(windows) {
            assert!(!under_wine(), "only a Windows program can run under Wine");
        } else if std::env::var_os("WINEPREFIX").is_some() {
            // scripts/wine/run sets WINEPREFIX, and Wine passes the environment through.
            assert!(under_wine(), "the test runner runs this under Wine");
        }
    }
}
