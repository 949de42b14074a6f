//! The one door to the disk for everything platform-specific: opening source files without
//! disturbing the program writing them, file identity and times, executable bits, positioned
//! reads and writes, durable renames, and one atomic write of a small file ([`write_atomic`]).
//!
//! Trading platforms keep their data files open while they write them. On Windows a file is
//! opened with read, write and delete sharing so RainMaker never blocks or fails the writer;
//! on Unix an ordinary read-only open already shares.

use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What the quick check compares: if all of it is unchanged, the file is not read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stamp {
    pub size: u64,
    pub mtime_ns: i128,
    pub file_id: u128,
    pub executable: bool,
}

/// Opens a file for reading without blocking anyone who writes, renames or deletes it.
pub fn open_shared(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(windows)]
    {
        use std::os::windows::fs::OpenOptionsExt;
        const FILE_SHARE_READ: u32 = 0x1;
        const FILE_SHARE_WRITE: u32 = 0x2;
        const FILE_SHARE_DELETE: u32 = 0x4;
        options.share_mode(FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE);
    }
    options.open(path)
}

/// The quick-check stamp of an open file.
pub fn stamp(file: &File, meta: &Metadata) -> Stamp {
    Stamp {
        size: meta.len(),
        mtime_ns: mtime_ns(meta),
        file_id: file_id(file, meta),
        executable: is_executable(meta),
    }
}

/// The stamp of a path, read from its metadata only (no open).
pub fn stamp_of_meta(meta: &Metadata) -> Stamp {
    Stamp {
        size: meta.len(),
        mtime_ns: mtime_ns(meta),
        file_id: meta_file_id(meta),
        executable: is_executable(meta),
    }
}

/// Modification time in nanoseconds since the Unix epoch (negative before it).
pub fn mtime_ns(meta: &Metadata) -> i128 {
    match meta.modified() {
        Ok(t) => system_time_ns(t),
        Err(_) => 0,
    }
}

/// The current time in the units of [`mtime_ns`].
pub fn mtime_now() -> i128 {
    system_time_ns(SystemTime::now())
}

fn system_time_ns(t: SystemTime) -> i128 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

/// Sets a file's modification time.
pub fn set_mtime(path: &Path, mtime_ns: i128) -> io::Result<()> {
    filetime::set_symlink_file_times(
        path,
        filetime::FileTime::from_system_time(SystemTime::now()),
        file_time(mtime_ns)?,
    )
}

/// Sets the modification time of an open file (see [`open_in_root`]).
pub fn set_mtime_of(file: &File, mtime_ns: i128) -> io::Result<()> {
    filetime::set_file_handle_times(
        file,
        Some(filetime::FileTime::from_system_time(SystemTime::now())),
        Some(file_time(mtime_ns)?),
    )
}

fn file_time(mtime_ns: i128) -> io::Result<filetime::FileTime> {
    let nanos = Duration::from_nanos(mtime_ns.unsigned_abs().min(u64::MAX as u128) as u64);
    let time = if mtime_ns >= 0 {
        UNIX_EPOCH.checked_add(nanos)
    } else {
        UNIX_EPOCH.checked_sub(nanos)
    }
    .ok_or_else(|| io::Error::other(format!("time {mtime_ns} ns is out of range here")))?;
    Ok(filetime::FileTime::from_system_time(time))
}

/// Opens an existing file under a mirrored root to change it in place: its data (`write`)
/// or only its time and mode. A symlink in its last component is not followed (earlier
/// components are [`crate::path::resolve`]'s job), and anything but a regular file with
/// exactly one link is refused: a symlink or hard link swapped in under the root must never
/// let a write, a rollback or a mode change reach a file outside it.
pub fn open_in_root(path: &Path, write: bool) -> io::Result<File> {
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // O_NONBLOCK: opening a FIFO planted under the root must not hang the agent.
        options
            .read(!write)
            .write(write)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    }
    #[cfg(windows)]
    {
        use std::os::windows::fs::OpenOptionsExt;
        const FILE_FLAG_OPEN_REPARSE_POINT: u32 = 0x0020_0000;
        const FILE_READ_ATTRIBUTES: u32 = 0x80;
        const FILE_WRITE_ATTRIBUTES: u32 = 0x100;
        const FILE_SHARE_READ: u32 = 0x1;
        const FILE_SHARE_WRITE: u32 = 0x2;
        options
            .custom_flags(FILE_FLAG_OPEN_REPARSE_POINT)
            .share_mode(FILE_SHARE_READ | FILE_SHARE_WRITE);
        if write {
            options.read(true).write(true);
        } else {
            options.access_mode(FILE_READ_ATTRIBUTES | FILE_WRITE_ATTRIBUTES);
        }
    }
    #[cfg(not(any(unix, windows)))]
    options.read(!write).write(write);
    let file = options.open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other(format!(
            "{} is not a regular file (a symlink or something else is in its place); \
             RainMaker changes only regular files in place",
            path.display()
        )));
    }
    let links = link_count(&file, &meta);
    if links != 1 {
        return Err(io::Error::other(format!(
            "{} has {links} hard links; RainMaker changes a file in place only when no other \
             name shares it (remove the other links, and the next sync sends it whole)",
            path.display()
        )));
    }
    Ok(file)
}

#[cfg(unix)]
fn link_count(_file: &File, meta: &Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::nlink(meta)
}

#[cfg(windows)]
fn link_count(file: &File, _meta: &Metadata) -> u64 {
    // Unknown is treated as shared: the caller refuses to write.
    winapi_util::file::information(file).map_or(0, |info| info.number_of_links())
}

#[cfg(not(any(unix, windows)))]
fn link_count(_file: &File, _meta: &Metadata) -> u64 {
    1
}

#[cfg(unix)]
fn is_executable(meta: &Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.is_file() && meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_executable(_meta: &Metadata) -> bool {
    false
}

/// Sets or clears the executable bits (user, group, other as readable) on Unix; Windows has
/// no such bit and keeps the file as it is.
#[cfg(unix)]
pub fn set_executable(path: &Path, executable: bool) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)?;
    let mode = meta.permissions().mode();
    let new = if executable {
        mode | ((mode & 0o444) >> 2)
    } else {
        mode & !0o111
    };
    if new != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(new))?;
    }
    Ok(())
}

#[cfg(not(unix))]
pub fn set_executable(_path: &Path, _executable: bool) -> io::Result<()> {
    Ok(())
}

/// [`set_executable`] on an open file (see [`open_in_root`]).
#[cfg(unix)]
pub fn set_executable_of(file: &File, executable: bool) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = file.metadata()?.permissions().mode();
    let new = if executable {
        mode | ((mode & 0o444) >> 2)
    } else {
        mode & !0o111
    };
    if new != mode {
        file.set_permissions(std::fs::Permissions::from_mode(new))?;
    }
    Ok(())
}

#[cfg(not(unix))]
pub fn set_executable_of(_file: &File, _executable: bool) -> io::Result<()> {
    Ok(())
}

#[cfg(unix)]
fn meta_file_id(meta: &Metadata) -> u128 {
    use std::os::unix::fs::MetadataExt;
    ((meta.dev() as u128) << 64) | meta.ino() as u128
}

#[cfg(unix)]
fn file_id(_file: &File, meta: &Metadata) -> u128 {
    meta_file_id(meta)
}

#[cfg(windows)]
fn meta_file_id(_meta: &Metadata) -> u128 {
    // std does not expose the file index from a path's metadata on stable; 0 makes the quick
    // check rely on size and mtime, and `stamp` (with an open handle) fills the real id.
    0
}

#[cfg(windows)]
fn file_id(file: &File, _meta: &Metadata) -> u128 {
    match winapi_util::file::information(file) {
        Ok(info) => ((info.volume_serial_number() as u128) << 64) | info.file_index() as u128,
        Err(_) => 0,
    }
}

#[cfg(not(any(unix, windows)))]
fn meta_file_id(_meta: &Metadata) -> u128 {
    0
}

#[cfg(not(any(unix, windows)))]
fn file_id(_file: &File, _meta: &Metadata) -> u128 {
    0
}

/// Limits a folder RainMaker keeps secrets in (the TLS key, the trash) to its owner and
/// SYSTEM, for what is in it now and what is created in it later. On Unix the folder and
/// key are created with modes 0700 and 0600 instead, and this does nothing.
///
/// On Windows it runs `icacls DIR /inheritance:r /grant:r *S-1-5-18:(OI)(CI)F
/// *S-1-3-4:(OI)(CI)F`: the ACEs inherited from the folder above (which usually let every
/// user read) are removed, and full control is granted to LocalSystem (S-1-5-18) and to
/// OWNER RIGHTS (S-1-3-4, the owner of each file and folder) only, inherited by files and
/// folders inside.
#[cfg(windows)]
pub fn restrict_to_owner(dir: &Path) -> io::Result<()> {
    let out = std::process::Command::new("icacls")
        .arg(dir)
        .args([
            "/inheritance:r",
            "/grant:r",
            "*S-1-5-18:(OI)(CI)F",
            "*S-1-3-4:(OI)(CI)F",
            "/Q",
        ])
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "icacls {} failed ({}): {}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim()
        )))
    }
}

#[cfg(not(windows))]
pub fn restrict_to_owner(_dir: &Path) -> io::Result<()> {
    Ok(())
}

/// Whether this platform's files have an executable bit. Where they do not (Windows), the
/// bit a source sent is kept in the index instead, so a Unix source still matches.
pub const HAS_EXEC_BIT: bool = cfg!(unix);

/// A stamp read from the disk, with the executable bit the index must remember where the
/// file system keeps none.
pub fn stamp_with_exec(mut stamp: Stamp, executable: bool) -> Stamp {
    if !HAS_EXEC_BIT {
        stamp.executable = executable;
    }
    stamp
}

/// Whether two stamps mean the same file content for the quick check. A file id of 0 means
/// "unknown" and is not compared; the executable bit only where the file system has one.
pub fn same_stamp(a: &Stamp, b: &Stamp) -> bool {
    a.size == b.size
        && a.mtime_ns == b.mtime_ns
        && (!HAS_EXEC_BIT || a.executable == b.executable)
        && same_file_id(a, b)
}

/// Whether two stamps name the same file (an id of 0 means "unknown" and matches).
pub fn same_file_id(a: &Stamp, b: &Stamp) -> bool {
    a.file_id == b.file_id || a.file_id == 0 || b.file_id == 0
}

/// Reads exactly `buf.len()` bytes at `offset`, or fewer at the end of the file.
pub fn read_at(file: &File, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        #[cfg(unix)]
        let n =
            std::os::unix::fs::FileExt::read_at(file, &mut buf[filled..], offset + filled as u64);
        #[cfg(windows)]
        let n = std::os::windows::fs::FileExt::seek_read(
            file,
            &mut buf[filled..],
            offset + filled as u64,
        );
        match n {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Writes all of `buf` at `offset`.
pub fn write_at(file: &File, offset: u64, buf: &[u8]) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
    }
    #[cfg(windows)]
    {
        let mut written = 0;
        while written < buf.len() {
            let n = std::os::windows::fs::FileExt::seek_write(
                file,
                &buf[written..],
                offset + written as u64,
            )?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            written += n;
        }
        Ok(())
    }
}

/// Makes a rename or a new entry in `dir` durable (a no-op where the platform has no way to).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// How long a rename on Windows keeps trying while another program holds the file it replaces.
pub const RENAME_PATIENCE: Duration = Duration::from_secs(2);

/// Renames `from` to `to`, replacing `to`. On Windows a program that has `to` (or `from`) open
/// makes the rename fail for as long as it holds it (an antivirus scanning a new file, an
/// indexer, a backup reader, and under Wine any open handle at all): the rename is tried again,
/// 5 ms apart doubling up to 200 ms, for [`RENAME_PATIENCE`], before the error is returned.
/// Elsewhere it is `std::fs::rename`.
pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    let mut pause = Duration::from_millis(5);
    let started = std::time::Instant::now();
    loop {
        match std::fs::rename(from, to) {
            Err(e) if cfg!(windows) && is_held(&e) && started.elapsed() < RENAME_PATIENCE => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            done => return done,
        }
    }
}

/// Whether an error is Windows saying another program holds the file (access denied, a
/// sharing or a lock violation).
fn is_held(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::PermissionDenied || matches!(e.raw_os_error(), Some(5 | 32 | 33))
}

/// How [`write_atomic`] keeps a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Synced to disk before and after the rename: a power cut leaves the old file or the new
    /// one (settings, certificates).
    Durable,
    /// As [`Keep::Durable`], and only the owner may read it (0600 on Unix; on Windows a file
    /// in the user's own folders already is): keys and tokens.
    Private,
    /// Not synced: a crash leaves the old file or the new one, a power cut may leave the old
    /// (a status file rewritten every fraction of a second, a cache).
    Volatile,
}

/// Writes `bytes` to `path` so that a reader or a crash sees the old file or the new one,
/// never half of either: a temporary file beside it (`.NAME.PID-N.tmp`) is written, renamed into
/// place and, unless `keep` is [`Keep::Volatile`], synced with its folder. Makes the folder if
/// it is missing.
pub fn write_atomic(path: &Path, bytes: &[u8], keep: Keep) -> io::Result<()> {
    write_atomic_with(path, keep, |file| file.write_all(bytes))
}

/// [`write_atomic`] of what `write` writes, through a buffer: a large file is streamed, never
/// held whole in memory.
pub fn write_atomic_with(
    path: &Path,
    keep: Keep,
    write: impl FnOnce(&mut dyn io::Write) -> io::Result<()>,
) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    // A name of this write's own: two writers of one file never write into the same temporary
    // file (the last rename wins, whole).
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".{}-{n}.tmp", std::process::id()));
    let temp = dir.join(temp_name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if keep == Keep::Private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = (|| {
        let mut file = io::BufWriter::with_capacity(1 << 16, options.open(&temp)?);
        write(&mut file)?;
        let file = file.into_inner().map_err(io::IntoInnerError::into_error)?;
        if keep != Keep::Volatile {
            file.sync_all()?;
        }
        drop(file);
        rename(&temp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(e);
    }
    match keep {
        Keep::Volatile => Ok(()),
        Keep::Durable | Keep::Private => sync_dir(dir),
    }
}

/// Takes a lock on an open file, exclusive or shared, waiting for it: `flock` on Unix, a
/// lock of the whole file with `LockFileEx` on Windows (there it also keeps other programs
/// from reading or writing the locked bytes, which for a lock file is no matter).
/// (`File::lock` would do, but it needs Rust 1.89 and the workspace builds with 1.85: these
/// are plain system calls on a descriptor or handle we own.)
#[allow(unsafe_code)]
pub fn lock(file: &File, exclusive: bool) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::io::AsRawFd;
        let op = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        // SAFETY: flock on a descriptor this File owns; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), op) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    #[cfg(windows)]
    {
        use std::os::windows::io::AsRawHandle;
        use windows_sys::Win32::Storage::FileSystem::{LOCKFILE_EXCLUSIVE_LOCK, LockFileEx};
        use windows_sys::Win32::System::IO::OVERLAPPED;
        let flags = if exclusive {
            LOCKFILE_EXCLUSIVE_LOCK
        } else {
            0
        };
        // SAFETY: the handle is this File's, open for the call; the OVERLAPPED (offset 0) is
        // a zeroed local the call reads, on a handle opened for synchronous use, so the call
        // returns only once the lock is held.
        let ok = unsafe {
            let mut at: OVERLAPPED = std::mem::zeroed();
            LockFileEx(file.as_raw_handle(), flags, 0, u32::MAX, u32::MAX, &mut at)
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
    }
    #[cfg(not(any(unix, windows)))]
    let _ = (file, exclusive);
    Ok(())
}

/// Releases the lock [`lock`] took.
#[allow(unsafe_code)]
pub fn unlock(file: &File) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::io::AsRawFd;
        // SAFETY: as in `lock`.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    #[cfg(windows)]
    {
        use std::os::windows::io::AsRawHandle;
        use windows_sys::Win32::Storage::FileSystem::UnlockFileEx;
        use windows_sys::Win32::System::IO::OVERLAPPED;
        // SAFETY: as in `lock`, for the range `lock` took.
        let ok = unsafe {
            let mut at: OVERLAPPED = std::mem::zeroed();
            UnlockFileEx(file.as_raw_handle(), 0, u32::MAX, u32::MAX, &mut at)
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
    }
    #[cfg(not(any(unix, windows)))]
    let _ = file;
    Ok(())
}

/// Threads that sync one batch: concurrent fsyncs share journal commits.
const SYNC_THREADS: usize = 4;

/// Runs `each` over `items` on a few threads; the first error wins.
fn in_parallel<T: Sync>(items: &[T], each: impl Fn(&T) -> io::Result<()> + Sync) -> io::Result<()> {
    if items.len() <= 1 {
        return items.iter().try_for_each(&each);
    }
    let chunk = items.len().div_ceil(SYNC_THREADS);
    std::thread::scope(|scope| {
        let workers: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(|| part.iter().try_for_each(&each)))
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join()
                .unwrap_or_else(|_| Err(io::Error::other("a sync thread failed")))
        })
    })
}

/// Makes the data of a batch of files durable. Each file is synced on its own (a file
/// system-wide sync would also wait for every other program's dirty pages), on a few threads
/// so that the file system can commit their journal entries together.
pub fn sync_batch(files: &[&File]) -> io::Result<()> {
    in_parallel(files, |f| f.sync_all())
}

/// Makes renames into `dirs` durable.
pub fn sync_dirs(dirs: &[&Path]) -> io::Result<()> {
    in_parallel(dirs, |d| sync_dir(d))
}

/// An I/O error in words, with what to do when the disk is full.
pub fn describe(error: &std::io::Error) -> String {
    if error.kind() == std::io::ErrorKind::StorageFull {
        format!(
            "this server's disk is full ({error}); free space there and the next sync completes"
        )
    } else {
        error.to_string()
    }
}

/// How much a folder holds, RainMaker's state folder aside.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub files: u64,
    pub bytes: u64,
    /// The newest modification time of a file in it (ns since the epoch; 0 when empty).
    pub newest_mtime_ns: i128,
}

/// Walks `root` and adds up its files (what an agent's status and the tray's "which side is
/// newer" show).
pub fn totals(root: &Path) -> Totals {
    let mut totals = Totals::default();
    let walk = walkdir::WalkDir::new(root)
        .into_iter()
        .filter_entry(|e| !(e.depth() == 1 && e.file_name() == crate::path::STATE_DIR));
    for entry in walk.flatten() {
        if let Ok(meta) = entry.metadata()
            && meta.is_file()
        {
            totals.files += 1;
            totals.bytes += meta.len();
            totals.newest_mtime_ns = totals.newest_mtime_ns.max(stamp_of_meta(&meta).mtime_ns);
        }
    }
    totals
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_atomic_write_replaces_the_whole_file_and_leaves_no_temporary_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/settings.toml");
        write_atomic(&path, b"first", Keep::Volatile).unwrap();
        write_atomic(&path, b"second, longer", Keep::Private).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second, longer");
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("settings.toml")]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "a private file is the owner's only");
        }
        // A folder where the file should be: the write fails and the folder is untouched.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir(&blocked).unwrap();
        std::fs::write(blocked.join("inside"), b"kept").unwrap();
        assert!(write_atomic(&blocked, b"x", Keep::Durable).is_err());
        assert_eq!(std::fs::read(blocked.join("inside")).unwrap(), b"kept");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            2,
            "no temporary file is left beside the folder: {:?}",
            std::fs::read_dir(dir.path()).unwrap().collect::<Vec<_>>()
        );
    }
    use std::io::Write;

    #[test]
    fn stamps_see_growth_and_times() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").unwrap();
        let file = open_shared(&path).unwrap();
        let before = stamp(&file, &file.metadata().unwrap());
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"d")
            .unwrap();
        let after = stamp_of_meta(&std::fs::metadata(&path).unwrap());
        assert!(
            !same_stamp(&before, &after),
            "a grown file must fail the quick check"
        );
        set_mtime(&path, 1_600_000_000_123_456_789).unwrap();
        // Windows keeps file times in 100 ns units (the plan compares times at that grain,
        // plan::coarse_mtime); Linux file systems keep nanoseconds.
        let kept = if cfg!(windows) {
            1_600_000_000_123_456_700
        } else {
            1_600_000_000_123_456_789
        };
        assert_eq!(
            mtime_ns(&std::fs::metadata(&path).unwrap()),
            kept,
            "a time set is the time read back, to the file system's grain"
        );
    }

    #[cfg(unix)]
    #[test]
    fn executable_bit_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.sh");
        std::fs::write(&path, b"#!/bin/sh").unwrap();
        set_executable(&path, true).unwrap();
        assert!(stamp_of_meta(&std::fs::metadata(&path).unwrap()).executable);
        set_executable(&path, false).unwrap();
        assert!(!stamp_of_meta(&std::fs::metadata(&path).unwrap()).executable);
    }

    #[test]
    fn positioned_reads_and_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::create(&path).unwrap();
        write_at(&file, 3, b"xyz").unwrap();
        let mut buf = [0u8; 10];
        let n = read_at(&open_shared(&path).unwrap(), 2, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"\0xyz");
    }
}
