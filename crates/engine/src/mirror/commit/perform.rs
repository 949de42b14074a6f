//! One recorded step of a batch performed on the target's disk: a removal into the trash, a
//! new folder, a verified file renamed into place, an append written in place, a time set.
//! With `redo` (a batch completed after a crash) a step that already happened is done.

use super::{Committer, Performed};
use crate::fs;
use crate::index::{AppendBytes, Step};
use crate::path;
use crate::protocol::BLOCK_SIZE;
use std::fs::File;
use std::path::{Path, PathBuf};

impl Committer {
    /// Performs one step. With `redo` (completing a batch after a crash), a step that already
    /// happened is done: a rename whose temporary file is gone, an append to a file that is no
    /// longer the one recorded.
    pub(super) fn perform(&self, step: &Step, redo: bool) -> Result<Performed, String> {
        let resolve = |rel: &str, replace_last: bool| {
            path::resolve(&self.root, rel, replace_last).map_err(|e| e.to_string())
        };
        match step {
            Step::Remove { path, file_id } => {
                let full = resolve(path, true)?;
                let Ok(meta) = std::fs::symlink_metadata(&full) else {
                    return Ok(Performed::Nothing);
                };
                let now = fs::stamp_of_meta(&meta).file_id;
                if now != *file_id && now != 0 && *file_id != 0 {
                    // Another file took its place (a later step of the batch put it there).
                    return Ok(Performed::Nothing);
                }
                let removed = if meta.is_dir() {
                    self.trash.remove(&full, path, true)
                } else if meta.file_type().is_symlink() {
                    // A symlink is removed itself, never followed, and not kept.
                    std::fs::remove_file(&full)
                } else {
                    self.trash.remove(&full, path, false)
                };
                removed.map_err(|e| format!("cannot delete {path}: {}", fs::describe(&e)))?;
                Ok(Performed::Nothing)
            }
            Step::Mkdir { path } => {
                let full = resolve(path, false)?;
                std::fs::create_dir_all(&full)
                    .map_err(|e| format!("cannot create folder {path}: {}", fs::describe(&e)))?;
                Ok(Performed::Nothing)
            }
            Step::Place { path, temp_name } => {
                let temp = self.tmp.join(temp_name);
                if std::fs::symlink_metadata(&temp).is_err() {
                    return if redo {
                        Ok(Performed::Nothing)
                    } else {
                        Err(format!("{path}: its verified temporary file is gone"))
                    };
                }
                let full = self
                    .place(path, &temp)
                    .map_err(|e| format!("{path}: cannot put it in place: {e}"))?;
                Ok(Performed::Placed(full))
            }
            Step::Append {
                path,
                before,
                from_len,
                size,
                mtime_ns,
                executable,
                bytes,
            } => {
                let full = resolve(path, false)?;
                let file = fs::open_in_root(&full, true)
                    .map_err(|e| format!("{path}: cannot open it: {e}"))?;
                let now = file
                    .metadata()
                    .map(|m| fs::stamp(&file, &m))
                    .map_err(|e| format!("{path}: {e}"))?;
                let as_verified = fs::same_stamp(&now, before);
                // After a crash: the same file, grown by part or all of this very append.
                let part_done =
                    fs::same_file_id(&now, before) && now.size > *from_len && now.size <= *size;
                if !(as_verified || (redo && part_done)) {
                    return if redo {
                        Ok(Performed::Nothing)
                    } else {
                        Err(format!(
                            "{path}: the target's copy changed during the mirror"
                        ))
                    };
                }
                let written = match bytes {
                    AppendBytes::Inline(data) => fs::write_at(&file, *from_len, data)
                        .map_err(|e| format!("cannot write: {}", fs::describe(&e))),
                    AppendBytes::Side(name) => match fs::open_shared(&self.tmp.join(name)) {
                        Ok(side) => copy_tail(&side, &file, *from_len, *size),
                        // Its side file goes only once the append is synced in place.
                        Err(_) if redo && now.size == *size => Ok(()),
                        Err(e) => Err(format!("cannot read its side file: {e}")),
                    },
                };
                let finished = written.and_then(|()| {
                    file.set_len(*size)
                        .and_then(|()| fs::set_executable_of(&file, *executable))
                        .and_then(|()| fs::set_mtime_of(&file, *mtime_ns))
                        .map_err(|e| e.to_string())
                });
                if let Err(reason) = finished {
                    roll_back(&file, *from_len, before.mtime_ns);
                    return Err(format!("{path}: {reason}"));
                }
                Ok(Performed::Appended(full, file))
            }
            Step::SetMeta {
                path,
                mtime_ns,
                executable,
            } => {
                let full = resolve(path, false)?;
                let file = fs::open_in_root(&full, false)
                    .map_err(|e| format!("cannot set the mode and time of {path}: {e}"))?;
                fs::set_executable_of(&file, *executable)
                    .map_err(|e| format!("cannot set the mode of {path}: {e}"))?;
                fs::set_mtime_of(&file, *mtime_ns)
                    .map_err(|e| format!("cannot set the time of {path}: {e}"))?;
                Ok(Performed::Meta(file))
            }
        }
    }

    /// Renames a verified temporary file to its final path.
    pub(super) fn place(&self, rel: &str, temp_path: &Path) -> std::io::Result<PathBuf> {
        let full = path::resolve(&self.root, rel, true).map_err(std::io::Error::other)?;
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent)?;
        }
        match std::fs::symlink_metadata(&full) {
            Ok(m) if m.is_dir() => return Err(std::io::Error::other("a folder is in the way")),
            Ok(m) if m.is_file() => self.trash.keep_before_replace(&full, rel)?,
            _ => {}
        }
        fs::rename(temp_path, &full)?;
        Ok(full)
    }
}

/// Copies bytes `from_len..size` of the file (held at offset 0 of `side`) into `file`.
fn copy_tail(side: &File, file: &File, from_len: u64, size: u64) -> Result<(), String> {
    let mut buffer = vec![0u8; BLOCK_SIZE as usize];
    let mut offset = from_len;
    while offset < size {
        let len = ((size - offset).min(BLOCK_SIZE)) as usize;
        let n =
            fs::read_at(side, offset - from_len, &mut buffer[..len]).map_err(|e| e.to_string())?;
        if n != len {
            return Err("the staged append is short".into());
        }
        fs::write_at(file, offset, &buffer[..len])
            .map_err(|e| format!("cannot write: {}", fs::describe(&e)))?;
        offset += len as u64;
    }
    Ok(())
}

/// Truncates an open file back to its last verified length and time.
pub fn roll_back(file: &File, from_len: u64, mtime_ns: i128) {
    let _ = file.set_len(from_len);
    let _ = file.sync_data();
    let _ = fs::set_mtime_of(file, mtime_ns);
}
