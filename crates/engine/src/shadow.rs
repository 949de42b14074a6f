//! Shadow copies of a volume, for files another program holds open without letting anyone
//! read them (Windows' Volume Shadow Copy Service).
//!
//! A platform that opens a file with no read sharing (`FILE_SHARE_READ` not granted) makes
//! every other open of it fail with a sharing violation for as long as it holds it: neither a
//! plain read nor a private copy can get at it. Windows can still show it as it stood at one
//! instant, in a shadow copy of its whole volume. [`Shadows::copy`] makes one (or reuses one
//! younger than [`REUSE`], so that the locked files of one scan share it), copies the file out
//! of it into a private file, and the scan then treats that copy as it treats a database's
//! consistent copy (`snapshot::Snapshots::copy_from_shadow`): hashed, sent under the file's
//! name, kept while the scan's records refer to it.
//!
//! The shadow copy is of the kind that involves no VSS writers and is released with the last
//! reference (`VSS_CTX_FILE_SHARE_BACKUP`): it is crash-consistent, as the file would be after
//! a power cut, never torn by a write in flight. Making one needs administrator rights (the
//! agent's Windows service has them; the tray app started by a user usually has not), and
//! takes a second or more; the error says so when it cannot be made.
//!
//! Off Windows there is nothing to do: no Unix file system refuses a reader that way, and
//! [`is_locked`] is never true there.

use crate::snapshot::Taken;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a shadow copy is reused for further locked files before a newer one is made.
pub const REUSE: Duration = Duration::from_secs(2);

/// Whether an error opening or reading a file says another program holds it without sharing
/// it (Windows' sharing and lock violations). Never true off Windows.
pub fn is_locked(e: &std::io::Error) -> bool {
    const ERROR_SHARING_VIOLATION: i32 = 32;
    const ERROR_LOCK_VIOLATION: i32 = 33;
    cfg!(windows)
        && matches!(
            e.raw_os_error(),
            Some(ERROR_SHARING_VIOLATION | ERROR_LOCK_VIOLATION)
        )
}

/// The shadow copies a source folder's scans use: one per volume at a time, the newest.
#[derive(Default)]
pub struct Shadows {
    current: Mutex<Option<Held>>,
}

impl std::fmt::Debug for Shadows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shadows")
    }
}

struct Held {
    volume: PathBuf,
    made: Instant,
    /// The file system's clock when the shadow copy was asked for: a file written since (or
    /// within the racy window before) may hold newer bytes than the shadow copy shows.
    made_ns: i128,
    set: imp::Set,
}

impl Shadows {
    /// Copies the file at `from` as it stands in a shadow copy of its volume into `to`. A
    /// shadow copy made for an earlier file is reused only when it is younger than [`REUSE`]
    /// and this file was last written before it was made (by more than `racy_window_ns`):
    /// else the copy could hold older bytes than the file's time says.
    pub fn copy(&self, from: &Path, to: &Path, racy_window_ns: i128) -> Result<Taken, String> {
        let started = Instant::now();
        let (volume, inside) = imp::split(from)?;
        let written_ns = std::fs::symlink_metadata(from)
            .map(|meta| crate::fs::mtime_ns(&meta))
            .map_err(|e| format!("cannot read it: {e}"))?;
        let mut current = self
            .current
            .lock()
            .expect("the shadow copy list is never poisoned");
        let fresh = current.as_ref().is_some_and(|held| {
            held.volume == volume
                && held.made.elapsed() < REUSE
                && written_ns < held.made_ns - racy_window_ns
        });
        if !fresh {
            // The old one goes first: a volume keeps at most 64 shadow copies.
            *current = None;
            let made_ns = crate::fs::mtime_now();
            let set = imp::Set::make(&volume).map_err(|e| {
                format!("no shadow copy of {} could be made: {e}", volume.display())
            })?;
            *current = Some(Held {
                volume: volume.clone(),
                made: Instant::now(),
                made_ns,
                set,
            });
        }
        let held = current.as_ref().expect("made above");
        let shadowed = held.set.path_of(&inside);
        let _ = std::fs::remove_file(to);
        let bytes = std::fs::copy(&shadowed, to)
            .map_err(|e| format!("cannot copy it out of the shadow copy: {e}"))?;
        Ok(Taken {
            longest_step: started.elapsed(),
            steps: 1,
            restarts: 0,
            bytes,
        })
    }
}

impl Shadows {
    /// Lets go of the shadow copy (the scan that needed it is over): while one exists, the
    /// volume keeps the old version of every block written, which costs the trading PC.
    pub fn release(&self) {
        self.current
            .lock()
            .expect("the shadow copy list is never poisoned")
            .take();
    }
}

#[cfg(not(windows))]
mod imp {
    use std::path::{Path, PathBuf};

    pub struct Set;

    impl Set {
        pub fn make(_volume: &Path) -> Result<Set, String> {
            Err("shadow copies exist on Windows only".into())
        }

        pub fn path_of(&self, inside: &Path) -> PathBuf {
            inside.to_path_buf()
        }
    }

    pub fn split(_path: &Path) -> Result<(PathBuf, PathBuf), String> {
        Err("shadow copies exist on Windows only".into())
    }
}

#[cfg(windows)]
#[allow(unsafe_code)]
mod imp {
    //! The Volume Shadow Copy requester calls. `IVssBackupComponents` is a COM interface that
    //! the Windows metadata (and so the `windows` crates) leave out; its table of methods is
    //! declared here by slot, in the order of the SDK's `vsbackup.h`.

    use std::ffi::c_void;
    use std::os::windows::ffi::{OsStrExt, OsStringExt};
    use std::path::{Path, PathBuf};
    use windows_sys::Win32::Storage::FileSystem::GetVolumePathNameW;
    use windows_sys::Win32::System::Com::{
        COINIT_MULTITHREADED, CoInitializeEx, CoInitializeSecurity, EOAC_DYNAMIC_CLOAKING,
        RPC_C_AUTHN_LEVEL_PKT_PRIVACY, RPC_C_IMP_LEVEL_IDENTIFY,
    };
    use windows_sys::core::{GUID, HRESULT};

    windows_link::link!("vssapi.dll" "system" fn CreateVssBackupComponentsInternal(out: *mut *mut Object) -> HRESULT);
    windows_link::link!("vssapi.dll" "system" fn VssFreeSnapshotPropertiesInternal(prop: *mut SnapshotProp));

    /// A COM object: a pointer to its table of methods.
    #[repr(C)]
    pub struct Object {
        methods: *const *const c_void,
    }

    /// `VSS_SNAPSHOT_PROP`.
    #[repr(C)]
    pub struct SnapshotProp {
        snapshot_id: GUID,
        snapshot_set_id: GUID,
        snapshots_count: i32,
        snapshot_device_object: *mut u16,
        original_volume_name: *mut u16,
        originating_machine: *mut u16,
        service_machine: *mut u16,
        exposed_name: *mut u16,
        exposed_path: *mut u16,
        provider_id: GUID,
        snapshot_attributes: i32,
        creation_timestamp: i64,
        status: i32,
    }

    // IUnknown
    const RELEASE: usize = 2;
    // IVssBackupComponents (vsbackup.h)
    const INITIALIZE_FOR_BACKUP: usize = 5;
    const SET_BACKUP_STATE: usize = 6;
    const PREPARE_FOR_BACKUP: usize = 14;
    const ABORT_BACKUP: usize = 15;
    const SET_CONTEXT: usize = 35;
    const START_SNAPSHOT_SET: usize = 36;
    const ADD_TO_SNAPSHOT_SET: usize = 37;
    const DO_SNAPSHOT_SET: usize = 38;
    const GET_SNAPSHOT_PROPERTIES: usize = 42;
    // IVssAsync (vss.h)
    const ASYNC_WAIT: usize = 4;
    const ASYNC_QUERY_STATUS: usize = 5;

    /// `VSS_CTX_FILE_SHARE_BACKUP`: no writers, released with the last reference.
    const VSS_CTX_FILE_SHARE_BACKUP: i32 = 0x10;
    const VSS_BT_COPY: i32 = 5;
    const INFINITE: u32 = u32::MAX;
    const RPC_E_TOO_LATE: HRESULT = 0x8001_0119_u32 as i32;
    const E_ACCESSDENIED: HRESULT = 0x8007_0005_u32 as i32;
    const E_NOTIMPL: HRESULT = 0x8000_4001_u32 as i32;
    const VSS_E_BAD_STATE: HRESULT = 0x8004_2301_u32 as i32;
    const VSS_S_ASYNC_CANCELLED: HRESULT = 0x0004_230B;
    const VSS_E_VOLUME_NOT_SUPPORTED: HRESULT = 0x8004_230C_u32 as i32;
    const VSS_E_MAXIMUM_NUMBER_OF_SNAPSHOTS_REACHED: HRESULT = 0x8004_2317_u32 as i32;
    const VSS_E_SNAPSHOT_SET_IN_PROGRESS: HRESULT = 0x8004_2316_u32 as i32;

    /// The method in slot `index` of `object`'s table, as the function type `F`.
    ///
    /// SAFETY: `object` is a live COM object whose table has a method of type `F` in that
    /// slot (the slot numbers above follow the SDK's headers).
    unsafe fn method<F: Copy>(object: *mut Object, index: usize) -> F {
        // SAFETY: as the caller promised; a function pointer and a data pointer have one size
        // on Windows.
        unsafe { std::mem::transmute_copy(&*(*object).methods.add(index)) }
    }

    fn check(hr: HRESULT, what: &str) -> Result<(), String> {
        if hr >= 0 {
            return Ok(());
        }
        let why = match hr {
            E_ACCESSDENIED => {
                "it needs administrator rights: run the agent as its Windows service, or as \
                 administrator"
            }
            E_NOTIMPL => "this Windows does not implement it (Wine has no shadow copies)",
            VSS_E_VOLUME_NOT_SUPPORTED => "the volume does not support shadow copies",
            VSS_E_MAXIMUM_NUMBER_OF_SNAPSHOTS_REACHED => {
                "the volume holds as many shadow copies as it can"
            }
            VSS_E_SNAPSHOT_SET_IN_PROGRESS => {
                "another shadow copy is being made; the next scan tries again"
            }
            VSS_E_BAD_STATE => "the shadow copy service refused the order of the calls",
            _ => "",
        };
        Err(format!(
            "{what} failed (0x{:08X}){}{why}",
            hr as u32,
            if why.is_empty() { "" } else { ": " }
        ))
    }

    /// Releases a COM object.
    fn release(object: *mut Object) {
        if !object.is_null() {
            // SAFETY: `object` is a live COM object we hold one reference to, given up here.
            unsafe {
                method::<unsafe extern "system" fn(*mut Object) -> u32>(object, RELEASE)(object);
            }
        }
    }

    /// Waits for an `IVssAsync` operation to end, then releases it.
    fn finish(operation: *mut Object, what: &str) -> Result<(), String> {
        if operation.is_null() {
            return Err(format!("{what} gave no operation to wait for"));
        }
        let mut status: HRESULT = 0;
        // SAFETY: `operation` is a live IVssAsync; Wait and QueryStatus have these types in
        // its slots 4 and 5, and QueryStatus writes one HRESULT through the pointer given.
        let result = unsafe {
            let wait = method::<unsafe extern "system" fn(*mut Object, u32) -> HRESULT>(
                operation, ASYNC_WAIT,
            )(operation, INFINITE);
            check(wait, what).and_then(|()| {
                let query = method::<
                    unsafe extern "system" fn(*mut Object, *mut HRESULT, *mut i32) -> HRESULT,
                >(operation, ASYNC_QUERY_STATUS)(
                    operation, &mut status, std::ptr::null_mut()
                );
                check(query, what)
            })
        };
        release(operation);
        result.and_then(|()| check(status, what)).and_then(|()| {
            // A success code, but the operation did not happen.
            if status == VSS_S_ASYNC_CANCELLED {
                Err(format!("{what} was cancelled"))
            } else {
                Ok(())
            }
        })
    }

    /// Calls the method in `slot` of the components `c`, which starts an `IVssAsync`
    /// operation, and waits for it to end.
    ///
    /// SAFETY: `c` is a live IVssBackupComponents whose `slot` holds a method taking the
    /// object and a pointer through which it writes the operation (`PrepareForBackup`,
    /// `DoSnapshotSet`).
    unsafe fn run_async(c: *mut Object, slot: usize, what: &str) -> Result<(), String> {
        let mut operation: *mut Object = std::ptr::null_mut();
        // SAFETY: as the caller promised; `operation` is a live local written once.
        let hr = unsafe {
            method::<unsafe extern "system" fn(*mut Object, *mut *mut Object) -> HRESULT>(c, slot)(
                c,
                &mut operation,
            )
        };
        check(hr, what)?;
        finish(operation, what)
    }

    /// Joins COM on this thread (multi-threaded), and sets the process's COM security once
    /// as VSS requesters must; both are harmless when done already.
    fn join_com() {
        // SAFETY: plain calls with null reserved pointers; CoInitializeEx may be called again
        // on a thread that joined (S_FALSE) or joined another way (RPC_E_CHANGED_MODE: COM
        // is usable all the same), and is never undone: the thread keeps COM for its life.
        unsafe {
            let _ = CoInitializeEx(std::ptr::null(), COINIT_MULTITHREADED as u32);
        }
        static SECURITY: std::sync::Once = std::sync::Once::new();
        SECURITY.call_once(|| {
            // SAFETY: no security descriptor, service list or authentication list is passed;
            // a process that set its COM security already gets RPC_E_TOO_LATE, which is fine.
            let hr = unsafe {
                CoInitializeSecurity(
                    std::ptr::null_mut(),
                    -1,
                    std::ptr::null(),
                    std::ptr::null(),
                    RPC_C_AUTHN_LEVEL_PKT_PRIVACY,
                    RPC_C_IMP_LEVEL_IDENTIFY,
                    std::ptr::null(),
                    EOAC_DYNAMIC_CLOAKING as u32,
                    std::ptr::null(),
                )
            };
            if hr < 0 && hr != RPC_E_TOO_LATE {
                tracing::debug!("CoInitializeSecurity: 0x{:08X}", hr as u32);
            }
        });
    }

    /// One shadow copy of one volume, released (and so deleted) when dropped.
    pub struct Set {
        components: *mut Object,
        /// `\\?\GLOBALROOT\Device\HarddiskVolumeShadowCopyN`.
        device: PathBuf,
        /// Between `StartSnapshotSet` and the end of `DoSnapshotSet`: a failure there must
        /// abort the backup before the components are released.
        in_progress: bool,
    }

    // SAFETY: the components object is made on a thread that joined the multi-threaded
    // apartment (join_com; a scan thread never joins COM any other way), where a COM object
    // may be used and released from any thread of the process that joined it too (Drop
    // joins first).
    unsafe impl Send for Set {}

    impl Drop for Set {
        fn drop(&mut self) {
            // This thread may not have joined COM (the set is dropped wherever the scan ends).
            join_com();
            if self.in_progress {
                // SAFETY: `components` is the live IVssBackupComponents; slot 15 is
                // AbortBackup, which takes only the object.
                unsafe {
                    let _ = method::<unsafe extern "system" fn(*mut Object) -> HRESULT>(
                        self.components,
                        ABORT_BACKUP,
                    )(self.components);
                }
            }
            release(self.components);
        }
    }

    impl Set {
        /// Makes a shadow copy of `volume` (`C:\`).
        pub fn make(volume: &Path) -> Result<Set, String> {
            join_com();
            let mut components: *mut Object = std::ptr::null_mut();
            // SAFETY: the call writes one interface pointer (ours to release) through `out`.
            check(
                unsafe { CreateVssBackupComponentsInternal(&mut components) },
                "CreateVssBackupComponents",
            )?;
            if components.is_null() {
                return Err("CreateVssBackupComponents gave nothing".into());
            }
            // From here `set` releases the components, also on every error below.
            let mut set = Set {
                components,
                device: PathBuf::new(),
                in_progress: false,
            };
            let c = components;
            let mut volume_wide: Vec<u16> = volume.as_os_str().encode_wide().chain([0]).collect();
            let mut set_id = GUID::from_u128(0);
            let mut snapshot_id = GUID::from_u128(0);
            // SAFETY (each call below): `c` is the live IVssBackupComponents made above; each
            // slot holds the method of the type given (vsbackup.h, in order); every pointer
            // passed is to a live local that the call writes once or reads only, and the
            // interface pointers it writes are released by `finish`.
            unsafe {
                type Backup = *mut Object;
                check(
                    method::<unsafe extern "system" fn(Backup, *mut u16) -> HRESULT>(
                        c,
                        INITIALIZE_FOR_BACKUP,
                    )(c, std::ptr::null_mut()),
                    "InitializeForBackup",
                )?;
                check(
                    method::<unsafe extern "system" fn(Backup, i32) -> HRESULT>(c, SET_CONTEXT)(
                        c,
                        VSS_CTX_FILE_SHARE_BACKUP,
                    ),
                    "SetContext",
                )?;
                check(
                    method::<unsafe extern "system" fn(Backup, u8, u8, i32, u8) -> HRESULT>(
                        c,
                        SET_BACKUP_STATE,
                    )(c, 0, 0, VSS_BT_COPY, 0),
                    "SetBackupState",
                )?;
                check(
                    method::<unsafe extern "system" fn(Backup, *mut GUID) -> HRESULT>(
                        c,
                        START_SNAPSHOT_SET,
                    )(c, &mut set_id),
                    "StartSnapshotSet",
                )?;
                set.in_progress = true;
                check(
                    method::<unsafe extern "system" fn(Backup, *mut u16, GUID, *mut GUID) -> HRESULT>(
                        c,
                        ADD_TO_SNAPSHOT_SET,
                    )(
                        c,
                        volume_wide.as_mut_ptr(),
                        GUID::from_u128(0),
                        &mut snapshot_id,
                    ),
                    "AddToSnapshotSet",
                )?;
                run_async(c, PREPARE_FOR_BACKUP, "PrepareForBackup")?;
                run_async(c, DO_SNAPSHOT_SET, "DoSnapshotSet")?;
                set.in_progress = false;
                let mut prop: SnapshotProp = std::mem::zeroed();
                check(
                    method::<unsafe extern "system" fn(Backup, GUID, *mut SnapshotProp) -> HRESULT>(
                        c,
                        GET_SNAPSHOT_PROPERTIES,
                    )(c, snapshot_id, &mut prop),
                    "GetSnapshotProperties",
                )?;
                set.device = wide_to_path(prop.snapshot_device_object);
                VssFreeSnapshotPropertiesInternal(&mut prop);
            }
            if set.device.as_os_str().is_empty() {
                return Err("the shadow copy has no device name".into());
            }
            Ok(set)
        }

        /// Where a file at `inside` (relative to its volume's root) is in the shadow copy.
        pub fn path_of(&self, inside: &Path) -> PathBuf {
            self.device.join(inside)
        }
    }

    /// A NUL-terminated UTF-16 string as a path (empty for null).
    ///
    /// SAFETY: `wide` is null or points to a NUL-terminated UTF-16 string.
    unsafe fn wide_to_path(wide: *const u16) -> PathBuf {
        if wide.is_null() {
            return PathBuf::new();
        }
        let mut len = 0;
        // SAFETY: as the caller promised, the string ends with a NUL within its allocation.
        unsafe {
            while *wide.add(len) != 0 {
                len += 1;
            }
            std::ffi::OsString::from_wide(std::slice::from_raw_parts(wide, len)).into()
        }
    }

    /// The volume that holds `path` (`C:\`) and the path inside it (`Users\...`).
    pub fn split(path: &Path) -> Result<(PathBuf, PathBuf), String> {
        // The volume functions want a plain absolute path: drop the verbatim prefix of a
        // drive path (`\\?\C:\...`), on the UTF-16 units so any name survives.
        let units: Vec<u16> = path.as_os_str().encode_wide().collect();
        let prefix: Vec<u16> = r"\\?\".encode_utf16().collect();
        let drive = units.len() > 6
            && units.starts_with(&prefix)
            && units[5] == u16::from(b':')
            && units[6] == u16::from(b'\\');
        let plain: PathBuf = if drive {
            std::ffi::OsString::from_wide(&units[4..]).into()
        } else {
            path.to_path_buf()
        };
        let wide: Vec<u16> = plain.as_os_str().encode_wide().chain([0]).collect();
        let mut buffer = vec![0u16; 1024];
        // SAFETY: `wide` is NUL-terminated; `buffer` holds the 1024 units the call may write.
        let ok =
            unsafe { GetVolumePathNameW(wide.as_ptr(), buffer.as_mut_ptr(), buffer.len() as u32) };
        if ok == 0 {
            return Err(format!(
                "cannot tell the volume of {}: {}",
                plain.display(),
                std::io::Error::last_os_error()
            ));
        }
        let len = buffer.iter().position(|u| *u == 0).unwrap_or(buffer.len());
        let volume = PathBuf::from(std::ffi::OsString::from_wide(&buffer[..len]));
        let inside = plain
            .strip_prefix(&volume)
            .map_err(|_| {
                format!(
                    "{} is not under its volume {}",
                    plain.display(),
                    volume.display()
                )
            })?
            .to_path_buf();
        if volume.to_str().is_some_and(|v| v.starts_with(r"\\")) {
            return Err(format!(
                "{} is on a network share, which has no shadow copies here",
                plain.display()
            ));
        }
        Ok((volume, inside))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_windows_sharing_and_lock_violations_are_locks() {
        let sharing = std::io::Error::from_raw_os_error(32);
        let lock = std::io::Error::from_raw_os_error(33);
        let other = std::io::Error::from_raw_os_error(2);
        assert_eq!(is_locked(&sharing), cfg!(windows));
        assert_eq!(is_locked(&lock), cfg!(windows));
        assert!(!is_locked(&other));
        assert!(!is_locked(&std::io::Error::other("plain")));
    }

    #[cfg(not(windows))]
    #[test]
    fn off_windows_a_shadow_copy_is_refused_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"x").unwrap();
        let err = Shadows::default()
            .copy(&dir.path().join("a"), &dir.path().join("b"), 0)
            .unwrap_err();
        assert!(err.contains("Windows only"), "{err}");
        assert!(!dir.path().join("b").exists(), "nothing is written");
    }
}
