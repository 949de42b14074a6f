//! The folder an agent receives into, shared by the sessions that would write it: one at a
//! time holds it. A session that has to wait for it asks the holder to show that its peer is
//! still there (the holder pings it and wants any frame back within [`HOLDER_ANSWER`]), so a
//! connection that died without a word (a source whose power or link was cut, no reset ever
//! sent) gives the folder up within seconds instead of holding it until its idle limit; a
//! live holder answers and keeps it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, MutexGuard, OwnedMutexGuard, watch};

use crate::mirror::receive::Receiver;

/// How soon a session holding the folder must hear from its peer once another one waits.
/// Well inside the wait of the one asking ([`super::SESSION_WAIT`]): a dead holder is gone,
/// and its files closed, before the newcomer gives up.
pub(super) const HOLDER_ANSWER: Duration = Duration::from_secs(3);

/// How often a session waiting for the folder asks the holder again.
const ASK_AGAIN: Duration = Duration::from_secs(1);

/// The folder's receiver behind its lock, with the signal that someone waits for it.
#[derive(Debug, Clone)]
pub(super) struct Folder {
    receiver: Arc<Mutex<Receiver>>,
    /// Bumped by each session that finds the folder held.
    waiting: Arc<watch::Sender<u64>>,
}

impl Folder {
    pub fn new(receiver: Receiver) -> Folder {
        Folder {
            receiver: Arc::new(Mutex::new(receiver)),
            waiting: Arc::new(watch::Sender::new(0)),
        }
    }

    /// Takes the folder, waiting at most `within` for the session holding it (which is asked
    /// to prove its peer is there) to end. `None` when it did not. The holder is asked again
    /// every [`ASK_AGAIN`]: one that took the folder from another while this one waited has
    /// not heard the first request (it asks the same bound again, never a longer one).
    pub async fn take(&self, within: Duration) -> Option<OwnedMutexGuard<Receiver>> {
        if let Ok(free) = self.receiver.clone().try_lock_owned() {
            return Some(free);
        }
        let taken = self.receiver.clone().lock_owned();
        tokio::pin!(taken);
        let given_up = tokio::time::sleep(within);
        tokio::pin!(given_up);
        let mut ask = tokio::time::interval(ASK_AGAIN);
        loop {
            tokio::select! {
                guard = &mut taken => return Some(guard),
                () = &mut given_up => return None,
                _ = ask.tick() => self.waiting.send_modify(|n| *n = n.wrapping_add(1)),
            }
        }
    }

    /// What a holder watches: it changes whenever another session waits for the folder.
    /// Subscribed after taking the folder, it has seen every earlier wait.
    pub fn waiting(&self) -> watch::Receiver<u64> {
        self.waiting.subscribe()
    }

    /// Waits until no session holds the folder (an agent that stops lets the one in flight
    /// close its files).
    pub async fn wait_free(&self) -> MutexGuard<'_, Receiver> {
        self.receiver.lock().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder() -> (tempfile::TempDir, Folder) {
        let dir = tempfile::tempdir().unwrap();
        let receiver = Receiver::open(dir.path(), None).unwrap();
        (dir, Folder::new(receiver))
    }

    #[tokio::test]
    async fn a_free_folder_is_taken_without_asking_anyone() {
        let (_dir, folder) = folder();
        let waiting = folder.waiting();
        assert!(folder.take(Duration::ZERO).await.is_some());
        assert!(!waiting.has_changed().unwrap(), "nobody was asked");
    }

    #[tokio::test]
    async fn a_session_that_waits_asks_the_holder_and_gets_the_folder_when_it_ends() {
        let (_dir, folder) = folder();
        let held = folder.take(Duration::ZERO).await.unwrap();
        let mut waiting = folder.waiting();
        let other = folder.clone();
        let newcomer = tokio::spawn(async move { other.take(Duration::from_secs(10)).await });
        waiting.changed().await.unwrap();
        drop(held);
        assert!(newcomer.await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_holder_that_stays_keeps_the_folder() {
        let (_dir, folder) = folder();
        let _held = folder.take(Duration::ZERO).await.unwrap();
        assert!(folder.take(Duration::from_millis(50)).await.is_none());
    }
}
