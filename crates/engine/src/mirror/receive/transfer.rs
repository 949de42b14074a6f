//! Receiving files: a new version built block by block in a temporary file (resumable), an
//! append received into a side file, each checked against the source's hashes before it is
//! staged.

use super::*;

impl Receiver {
    /// A new file or append may use `id`: no other in flight has it, and the bound on files
    /// open at once holds.
    fn check_new_id(&self, id: u64) -> Result<(), ReceiveError> {
        if self.flight.len() >= MAX_IN_FLIGHT {
            return Err(ReceiveError::Refused(format!(
                "more than {MAX_IN_FLIGHT} files open at once"
            )));
        }
        if self.flight.contains_key(&id) {
            return Err(ReceiveError::Refused(format!(
                "file id {id} is already in use"
            )));
        }
        Ok(())
    }

    pub(super) fn begin(&mut self, begin: FileBegin) -> Result<Vec<Message>, ReceiveError> {
        let id = begin.id;
        self.check_new_id(id)?;
        path::resolve(&self.root, &begin.path, true).map_err(refused)?;
        if let Some(why) = self.clash(&begin.path) {
            let path = begin.path.clone();
            return Ok(self.fail(id, &path, why));
        }
        self.names.insert(&begin.path);
        let temp_name = temp_name(&begin.path, "part");
        let temp_path = self.tmp.join(&temp_name);
        let count = hash::block_count(begin.size);
        let mut have = vec![false; count as usize];
        let opened = if begin.resume_blocks > 0 {
            match self.index.partials()?.get(&begin.path) {
                Some(record)
                    if record.begin.hash == begin.hash && record.temp_name == temp_name =>
                {
                    OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(&temp_path)
                        .and_then(|f| {
                            f.set_len(begin.resume_blocks * BLOCK_SIZE)?;
                            Ok(f)
                        })
                }
                _ => Err(std::io::Error::other(
                    "the interrupted transfer it resumes is gone",
                )),
            }
        } else {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&temp_path)
        };
        let temp = match opened {
            Ok(temp) => temp,
            Err(e) => {
                return Ok(self.fail(
                    id,
                    &begin.path,
                    format!("cannot create its temporary file: {e}"),
                ));
            }
        };
        for h in have.iter_mut().take(begin.resume_blocks as usize) {
            *h = true;
        }
        let resumable = count > RESUMABLE_BLOCKS;
        self.flight.insert(
            id,
            InFlight::New {
                begin,
                temp,
                temp_path,
                have,
                reused: false,
                resumable,
            },
        );
        self.blocks_complete(id)
    }

    pub(super) fn block_list(
        &mut self,
        id: u64,
        blocks: Vec<Hash>,
    ) -> Result<Vec<Message>, ReceiveError> {
        match self.flight.get_mut(&id) {
            Some(InFlight::New { begin, .. }) => {
                if begin.blocks.len() + blocks.len() > hash::block_count(begin.size) as usize {
                    return Err(ReceiveError::Refused(format!(
                        "more block hashes than {} has blocks",
                        begin.path
                    )));
                }
                begin.blocks.extend(blocks);
                self.blocks_complete(id)
            }
            Some(InFlight::Failed) => Ok(vec![]),
            _ => Err(ReceiveError::Refused(format!(
                "block list for unknown file id {id}"
            ))),
        }
    }

    /// Once the block list is whole: record a resumable transfer and copy reused blocks.
    pub(super) fn blocks_complete(&mut self, id: u64) -> Result<Vec<Message>, ReceiveError> {
        let Some(InFlight::New {
            begin,
            temp,
            temp_path,
            have,
            reused,
            resumable,
        }) = self.flight.get_mut(&id)
        else {
            return Ok(vec![]);
        };
        if *reused || (begin.blocks.len() as u64) < hash::block_count(begin.size) {
            return Ok(vec![]);
        }
        *reused = true;
        if *resumable {
            let mut kept = begin.clone();
            kept.reuse.clear();
            let record = PartialRecord {
                begin: kept,
                temp_name: temp_path
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            };
            self.index.apply(
                &[Change::PutPartial(begin.path.clone(), record)],
                Durability::Immediate,
            )?;
        }
        let mut buffer = vec![0u8; BLOCK_SIZE as usize];
        let mut problem = None;
        for reuse in &begin.reuse {
            let index = reuse.index as usize;
            if have[index] {
                continue;
            }
            let from = path::resolve(&self.root, &reuse.from_path, false).map_err(refused)?;
            let len = hash::block_len(begin.size, reuse.index) as usize;
            let got = fs::open_shared(&from)
                .and_then(|f| fs::read_at(&f, reuse.from_index * BLOCK_SIZE, &mut buffer[..len]));
            match got {
                Ok(n) if n == len && hash::block_hash(&buffer[..len]) == begin.blocks[index] => {
                    fs::write_at(temp, reuse.index * BLOCK_SIZE, &buffer[..len]).map_err(io(
                        format!("cannot write the temporary file of {}", begin.path),
                    ))?;
                    have[index] = true;
                }
                _ => {
                    problem = Some(format!(
                        "block {} to be copied from {} on the target no longer matches",
                        reuse.index, reuse.from_path
                    ));
                    break;
                }
            }
        }
        match problem {
            Some(reason) => {
                let path = begin.path.clone();
                Ok(self.fail(id, &path, reason))
            }
            None => Ok(vec![]),
        }
    }

    pub(super) fn begin_append(&mut self, append: Append) -> Result<Vec<Message>, ReceiveError> {
        let id = append.id;
        self.check_new_id(id)?;
        let full = path::resolve(&self.root, &append.path, false).map_err(refused)?;
        let Some(before) = self.tree.files.get(&append.path).cloned() else {
            return Ok(self.fail(
                id,
                &append.path,
                "the target has no such file to append to".into(),
            ));
        };
        let current = std::fs::symlink_metadata(&full).map(|m| fs::stamp_of_meta(&m));
        let unchanged = matches!(&current, Ok(s) if fs::same_stamp(s, &before.stamp));
        if before.stamp.size != append.from_len || before.hash != append.from_hash || !unchanged {
            return Ok(self.fail(
                id,
                &append.path,
                "the target's copy changed since the manifest".into(),
            ));
        }
        let side_path = self.tmp.join(temp_name(&append.path, "append"));
        let side = match OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&side_path)
        {
            Ok(side) => side,
            Err(e) => {
                return Ok(self.fail(id, &append.path, format!("cannot stage the append: {e}")));
            }
        };
        let next_offset = append.from_len;
        let staged = StagedAppend {
            append,
            side,
            side_path,
            full,
            before,
        };
        self.flight.insert(
            id,
            InFlight::Append {
                staged,
                next_offset,
            },
        );
        Ok(vec![])
    }

    pub(super) fn data(
        &mut self,
        id: u64,
        offset: u64,
        payload: Payload,
    ) -> Result<Vec<Message>, ReceiveError> {
        let outcome = match self.flight.get_mut(&id) {
            None => {
                return Err(ReceiveError::Refused(format!(
                    "data for unknown file id {id}"
                )));
            }
            Some(InFlight::Failed) => return Ok(vec![]),
            Some(InFlight::New {
                begin, temp, have, ..
            }) => {
                let count = hash::block_count(begin.size);
                if offset % BLOCK_SIZE != 0 || offset / BLOCK_SIZE >= count {
                    return Err(ReceiveError::Refused(format!(
                        "data at offset {offset} does not start a block of {}",
                        begin.path
                    )));
                }
                if (begin.blocks.len() as u64) < count {
                    return Err(ReceiveError::Refused(format!(
                        "data for {} before its block list",
                        begin.path
                    )));
                }
                let index = offset / BLOCK_SIZE;
                let len = hash::block_len(begin.size, index);
                match unpack(payload, len) {
                    Ok(bytes)
                        if bytes.len() as u64 == len
                            && hash::block_hash(&bytes) == begin.blocks[index as usize] =>
                    {
                        match fs::write_at(temp, offset, &bytes) {
                            Ok(()) => {
                                have[index as usize] = true;
                                self.bytes_written += len;
                                Ok(())
                            }
                            Err(e) => Err((
                                begin.path.clone(),
                                format!("cannot write: {}", crate::fs::describe(&e)),
                            )),
                        }
                    }
                    Ok(_) => Err((
                        begin.path.clone(),
                        format!("block {index} does not match its hash"),
                    )),
                    Err(reason) => Err((begin.path.clone(), reason)),
                }
            }
            Some(InFlight::Append {
                staged: StagedAppend { append, side, .. },
                next_offset,
            }) => match unpack(payload, BLOCK_SIZE) {
                Err(reason) => Err((append.path.clone(), reason)),
                Ok(bytes) => {
                    if offset != *next_offset || offset + bytes.len() as u64 > append.size {
                        return Err(ReceiveError::Refused(format!(
                            "appended data for {} at offset {offset}, expected {next_offset}",
                            append.path
                        )));
                    }
                    match fs::write_at(side, offset - append.from_len, &bytes) {
                        Ok(()) => {
                            *next_offset += bytes.len() as u64;
                            self.bytes_written += bytes.len() as u64;
                            Ok(())
                        }
                        Err(e) => Err((
                            append.path.clone(),
                            format!("cannot write: {}", crate::fs::describe(&e)),
                        )),
                    }
                }
            },
        };
        match outcome {
            Ok(()) => Ok(vec![]),
            Err((path, reason)) => Ok(self.fail(id, &path, reason)),
        }
    }

    pub(super) fn end(&mut self, id: u64) -> Result<Vec<Message>, ReceiveError> {
        let Some(flight) = self.flight.remove(&id) else {
            return Err(ReceiveError::Refused(format!(
                "end of unknown file id {id}"
            )));
        };
        let verified = match flight {
            InFlight::Failed => return Ok(vec![]),
            InFlight::New {
                begin,
                temp,
                temp_path,
                have,
                resumable,
                ..
            } => self.verify_new(id, begin, temp, temp_path, &have, resumable),
            InFlight::Append {
                staged,
                next_offset,
            } => match verify_append(
                &staged.append,
                &staged.side,
                &staged.full,
                &staged.before,
                next_offset,
            ) {
                Ok(()) => Ok(Ready {
                    id,
                    seq: 0,
                    kind: ReadyKind::Append(staged),
                }),
                Err(reason) => {
                    let _ = std::fs::remove_file(&staged.side_path);
                    Err(reason)
                }
            },
        };
        let mut ready = match verified {
            Ok(ready) => ready,
            Err(reason) => {
                tracing::warn!(%reason, "file failed");
                return Ok(vec![Message::FileFailed { id, reason }]);
            }
        };
        ready.seq = self.next_seq();
        self.staged_steps += 1;
        self.staged_bytes += ready.bytes();
        self.ready_bytes += ready.bytes();
        self.ready.push(ready);
        let mut replies = vec![];
        if self.ready.len() >= READY_FILES || self.ready_bytes >= READY_BYTES {
            replies = self.start_seal();
        }
        replies.extend(self.apply_if_big()?);
        self.flush_if_big()?;
        Ok(replies)
    }

    /// Checks a new version's blocks and whole hash and gives the temporary file its final
    /// size, mode and time; it takes its final name in the group commit ([`super::commit`]).
    pub(super) fn verify_new(
        &mut self,
        id: u64,
        begin: FileBegin,
        temp: File,
        temp_path: PathBuf,
        have: &[bool],
        resumable: bool,
    ) -> Result<Ready, String> {
        let path = begin.path.clone();
        let prepared = (|| {
            if let Some(missing) = have.iter().position(|h| !h) {
                return Err(format!("block {missing} never arrived"));
            }
            if hash::file_hash(begin.size, &begin.blocks) != begin.hash {
                return Err("it does not match the source's file hash".into());
            }
            let prepare = || -> std::io::Result<()> {
                temp.set_len(begin.size)?;
                fs::set_executable(&temp_path, begin.executable)?;
                fs::set_mtime(&temp_path, begin.mtime_ns)
            };
            prepare().map_err(|e| format!("cannot finish its temporary file: {e}"))
        })();
        match prepared {
            Ok(()) => Ok(Ready {
                id,
                seq: 0,
                kind: ReadyKind::New {
                    begin,
                    temp,
                    temp_path,
                    resumable,
                },
            }),
            Err(reason) => {
                self.drop_temp(&path, &temp_path, resumable);
                Err(format!("{path}: {reason}"))
            }
        }
    }
}

/// Checks a staged append: all of it arrived, and the target's partial last block followed by
/// the new bytes matches the source's block hashes and file hash. Reads only the tail.
pub(super) fn verify_append(
    append: &Append,
    side: &File,
    full: &Path,
    before: &FileRecord,
    next_offset: u64,
) -> Result<(), String> {
    let fail = |reason: String| format!("{}: {reason}", append.path);
    if next_offset != append.size {
        return Err(fail(format!(
            "only {next_offset} of {} bytes arrived",
            append.size
        )));
    }
    let first = append.from_len / BLOCK_SIZE;
    let start = first * BLOCK_SIZE;
    let mut head = vec![0u8; (append.from_len - start) as usize];
    let target = fs::open_shared(full).map_err(|e| fail(format!("cannot read it: {e}")))?;
    let n = fs::read_at(&target, start, &mut head).map_err(|e| fail(e.to_string()))?;
    if n != head.len() {
        return Err(fail("the target's copy is shorter than it was".into()));
    }
    let mut blocks = before.blocks[..first as usize].to_vec();
    let mut buffer = vec![0u8; BLOCK_SIZE as usize];
    for (i, expected) in append.tail_blocks.iter().enumerate() {
        let index = first + i as u64;
        let len = hash::block_len(append.size, index) as usize;
        let block_start = index * BLOCK_SIZE;
        // Bytes of this block from the target's old tail, then from the side file.
        let from_old = if i == 0 { head.len() } else { 0 };
        buffer[..from_old].copy_from_slice(&head[..from_old]);
        let side_offset = block_start + from_old as u64 - append.from_len;
        let n = fs::read_at(side, side_offset, &mut buffer[from_old..len])
            .map_err(|e| fail(e.to_string()))?;
        if from_old + n != len || hash::block_hash(&buffer[..len]) != *expected {
            return Err(fail(format!(
                "appended block {index} does not match its hash"
            )));
        }
        blocks.push(*expected);
    }
    if hash::file_hash(append.size, &blocks) != append.hash {
        return Err(fail("it does not match the source's file hash".into()));
    }
    Ok(())
}

/// The name of a path's temporary file of the given kind in the `tmp` folder.
pub(super) fn temp_name(path: &str, kind: &str) -> String {
    format!(
        "{}.{kind}",
        &hex::encode(hash::block_hash(path.as_bytes()))[..24]
    )
}

/// Number of leading blocks of a temporary file that match the version it is building.
pub(super) fn verified_prefix(temp_path: &Path, begin: &FileBegin) -> Option<u64> {
    let file = File::open(temp_path).ok()?;
    let mut buffer = vec![0u8; BLOCK_SIZE as usize];
    let mut verified = 0;
    for (index, expected) in begin.blocks.iter().enumerate() {
        let len = hash::block_len(begin.size, index as u64) as usize;
        let n = fs::read_at(&file, index as u64 * BLOCK_SIZE, &mut buffer[..len]).ok()?;
        if n != len || hash::block_hash(&buffer[..len]) != *expected {
            break;
        }
        verified += 1;
    }
    let _ = OpenOptions::new()
        .write(true)
        .open(temp_path)
        .and_then(|f| f.set_len((verified * BLOCK_SIZE).min(begin.size)));
    Some(verified)
}

/// The bytes of a payload, decompressed into at most `max` bytes.
pub(super) fn unpack(payload: Payload, max: u64) -> Result<Vec<u8>, String> {
    match payload {
        Payload::Raw(bytes) if bytes.len() as u64 <= max => Ok(bytes),
        Payload::Raw(bytes) => Err(format!("a block of {} bytes is over {max}", bytes.len())),
        Payload::Zstd(bytes) => zstd::bulk::decompress(&bytes, max as usize)
            .map_err(|e| format!("a compressed block does not decompress within {max} bytes: {e}")),
    }
}
