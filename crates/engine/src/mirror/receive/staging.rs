//! Staging a session: the order of its changes, the groups of files synced in the
//! background, and the batch applied whole at the session's end (or at its bound).

use super::*;

impl Receiver {
    pub(super) fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Notes a change that is not a file, in the session's order.
    pub(super) fn stage(&mut self, change: Staged) {
        let seq = self.next_seq();
        self.staged.push((seq, change));
        self.staged_steps += 1;
    }

    /// Waits for the group being synced, if any, and stages its files.
    pub(super) fn join_seal(&mut self) -> Vec<Message> {
        let Some(handle) = self.sealing.take() else {
            return vec![];
        };
        match handle.join() {
            Ok(sealed) => {
                self.staged.extend(sealed.staged);
                sealed.replies
            }
            Err(_) => {
                // Its files are unaccounted for; the digest at the finish says so to the source.
                tracing::error!("a group sync failed unexpectedly");
                vec![]
            }
        }
    }

    /// Starts syncing the ready files on a background thread, after the previous group.
    pub(super) fn start_seal(&mut self) -> Vec<Message> {
        self.seal_ready(false)
    }

    /// Starts syncing the ready files, appends' side files too, while the source sends nothing
    /// (it waits for the proof of what its scan took on trust, or its link is slow): the
    /// session's end then syncs less, and its record need not hold the appended bytes. Does
    /// nothing while a group is still being synced.
    pub fn seal_while_idle(&mut self) -> Vec<Message> {
        if self.ready.is_empty() || self.sealing.as_ref().is_some_and(|s| !s.is_finished()) {
            return vec![];
        }
        self.seal_ready(true)
    }

    fn seal_ready(&mut self, appends: bool) -> Vec<Message> {
        let replies = self.join_seal();
        let ready = std::mem::take(&mut self.ready);
        self.ready_bytes = 0;
        if !ready.is_empty() {
            let committer = self.committer.clone();
            self.sealing = Some(std::thread::spawn(move || committer.seal(ready, appends)));
        }
        replies
    }

    /// Applies the session's batch now when it reached the bound (a session larger than the
    /// bound is applied in several batches, each whole).
    pub(super) fn apply_if_big(&mut self) -> Result<Vec<Message>, ReceiveError> {
        if self.staged_steps >= STAGE_STEPS || self.staged_bytes >= STAGE_BYTES {
            tracing::info!(
                changes = self.staged_steps,
                bytes = self.staged_bytes,
                "the session is larger than one batch; applying what arrived so far"
            );
            return Ok(self.apply_staged());
        }
        Ok(vec![])
    }

    /// Syncs what is still waiting and applies every staged change as one recorded batch.
    pub(super) fn apply_staged(&mut self) -> Vec<Message> {
        let started = std::time::Instant::now();
        let mut replies = self.start_seal();
        replies.extend(self.join_seal());
        let sealed = started.elapsed();
        let mut staged = std::mem::take(&mut self.staged);
        self.staged_steps = 0;
        self.staged_bytes = 0;
        if staged.is_empty() {
            return replies;
        }
        staged.sort_by_key(|(seq, _)| *seq);
        let steps = staged.len();
        let applied = self
            .committer
            .apply(staged.into_iter().map(|(_, s)| s).collect());
        tracing::debug!(steps, ?sealed, took = ?started.elapsed(), "batch applied");
        // In the session's order, which is about the tree's: filled, the leaves end full.
        let mut filling = scan::Filling::default();
        for (path, record) in applied.files {
            filling.add(&mut self.tree.files, path, record);
        }
        filling.flush(&mut self.tree.files);
        for (path, stamp) in applied.stamps {
            if let Some(record) = self.tree.files.get_mut(&path) {
                record.stamp = fs::stamp_with_exec(stamp, record.stamp.executable);
                self.pending.push(Change::PutFile(path, record.clone()));
            }
        }
        replies.extend(applied.replies);
        // The tree holds the names of the batch now: only the others are named from memory.
        let tree = &self.tree;
        self.names
            .settle(|name| tree.files.contains_key(name) || tree.dirs.contains(name));
        replies
    }

    /// Drops every staged change: nothing of it is applied. Resumable temporary files stay.
    pub(super) fn discard_staged(&mut self) {
        self.join_seal();
        for ready in std::mem::take(&mut self.ready) {
            match ready.kind {
                ReadyKind::New {
                    temp_path,
                    resumable: false,
                    ..
                } => {
                    let _ = std::fs::remove_file(temp_path);
                }
                ReadyKind::New { .. } => {}
                ReadyKind::Append(staged) => {
                    let _ = std::fs::remove_file(staged.side_path);
                }
            }
        }
        for (_, staged) in std::mem::take(&mut self.staged) {
            staged.discard();
        }
        self.ready_bytes = 0;
        self.staged_steps = 0;
        self.staged_bytes = 0;
    }

    pub(super) fn flush_if_big(&mut self) -> Result<(), ReceiveError> {
        if self.pending.len() >= BATCH {
            self.flush(Durability::None)?;
        }
        Ok(())
    }
}
