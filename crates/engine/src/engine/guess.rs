//! A session that does not wait for the target's manifest: planned against the manifest the
//! source kept from its last sync with the target, and sent right behind the request for the
//! manifest when the session dials (a one-off push, or a continuous one dialing again), a
//! round trip and the target's listing sooner: on a home uplink, a sixth of a one-off push.
//!
//! The target stages what it receives and commits it at `Finish`; the source holds `Finish`
//! until the target answered that it still holds the manifest offered
//! ([`crate::mirror::send::Pace::guess`]). Any other answer ends the session with `Refused`
//! (the target drops what it staged), and the session is made again from the target's
//! listing; so is a guessed session that failed in any other way, waiting for the answer this
//! time ([`super::push::session`]). A session larger than one of the target's batches, which
//! it would apply before the `Finish`, or than 16 MiB, waits for the answer before it sends.
//! Nothing goes before the target's welcome to a target whose certificate was not pinned
//! before the connection ([`transport::connect_eager`]).

use super::push::Ready;
use super::*;

/// What a session knows of the target's manifest when it plans.
pub(super) enum Told {
    /// The target's answer, with its partial files.
    Answered(send::Theirs, Vec<crate::protocol::Partial>),
    /// Not answered yet: the session plans against the manifest kept from the last sync, whose
    /// digest it offered (`None`: the source's own tree, unchanged since), and sends without
    /// waiting; the answer comes first among the replies ([`send::Pace::guess`]).
    Guessed(Hash, Option<Arc<Tree>>),
}

/// The most files a session plans against the kept manifest before the target answers: it
/// reads nothing from the connection meanwhile, and a larger tree takes long enough to read
/// back and plan that the answer is there first anyway.
const GUESS_MOST_FILES: usize = 100_000;

/// The target's tree as the manifest kept from the last sync (digest `offered`) has it, when
/// the source is scanned already and not too large: `Some(None)` when it is the source's own
/// tree, `None` when there is nothing to guess from.
pub(super) async fn kept_theirs(
    tree_rx: &tokio::sync::watch::Receiver<Option<Ready>>,
    kept: &Kept,
    offered: Hash,
) -> Option<Option<Arc<Tree>>> {
    let ready = tree_rx.borrow().clone();
    let (tree, digest, _) = ready?;
    if tree.files.len() > GUESS_MOST_FILES {
        return None;
    }
    if digest == offered {
        return Some(None);
    }
    kept.tree(offered, &tree).await.ok().flatten().map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Entry, EntryKind, FileMeta};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_tungstenite::tungstenite::{self, handshake::derive_accept_key, protocol::Role};

    const TOKEN: &str = "a token long enough for the test";

    /// A target on loopback that speaks WebSocket by hand, so that it can hold back every
    /// answer (the upgrade's, the welcome, the manifest's) and see what the source sends
    /// before any.
    struct Raw {
        socket: TcpStream,
        read: Vec<u8>,
        /// Where the upgrade request's head ends in `read`, then where the frames not
        /// decoded yet start.
        head: usize,
        /// The messages decoded so far.
        got: Vec<Message>,
        /// The upgrade request's `Sec-WebSocket-Key`.
        key: String,
        upgraded: bool,
    }

    /// The length of the client frame `bytes` start with, if they hold all of it.
    fn frame_len(bytes: &[u8]) -> Option<usize> {
        let (&masked_len, rest) = bytes.get(1).zip(bytes.get(2..))?;
        let (len, header) = match masked_len & 0x7f {
            126 => (
                u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize,
                4,
            ),
            127 => (
                u64::from_be_bytes(rest.get(..8)?.try_into().ok()?) as usize,
                10,
            ),
            short => (short as usize, 2),
        };
        let whole = header + if masked_len & 0x80 != 0 { 4 } else { 0 } + len;
        (bytes.len() >= whole).then_some(whole)
    }

    impl Raw {
        async fn accept(listener: &TcpListener) -> Raw {
            let (socket, _) = listener.accept().await.unwrap();
            let mut raw = Raw {
                socket,
                read: Vec::new(),
                head: 0,
                got: Vec::new(),
                key: String::new(),
                upgraded: false,
            };
            while raw.head == 0 {
                assert!(raw.more().await, "the upgrade request comes");
                if let Some(end) = raw.read.windows(4).position(|w| w == b"\r\n\r\n") {
                    raw.head = end + 4;
                }
            }
            let head = String::from_utf8_lossy(&raw.read[..raw.head]).to_string();
            raw.key = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("sec-websocket-key")
                        .then(|| value.trim().to_owned())
                })
                .expect("a WebSocket key");
            raw
        }

        /// Reads what the socket has; false at its end.
        async fn more(&mut self) -> bool {
            let mut buf = [0u8; 65536];
            match self.socket.read(&mut buf).await {
                Ok(0) | Err(_) => false,
                Ok(n) => {
                    self.read.extend_from_slice(&buf[..n]);
                    true
                }
            }
        }

        /// Every message the source sent so far.
        fn messages(&mut self) -> Vec<Message> {
            while let Some(len) = frame_len(&self.read[self.head..]) {
                let frame = &self.read[self.head..self.head + len];
                self.got.extend(transport::read_frames(frame).0);
                self.head += len;
            }
            self.got.clone()
        }

        /// Reads until the messages so far satisfy `done` (true), or the source ends the
        /// connection or `within` passes (false).
        async fn until(&mut self, done: impl Fn(&[Message]) -> bool, within: Duration) -> bool {
            let reading = async {
                loop {
                    if done(&self.messages()) {
                        return true;
                    }
                    if !self.more().await {
                        let messages = self.messages();
                        return done(&messages);
                    }
                }
            };
            tokio::time::timeout(within, reading).await.unwrap_or(false)
        }

        /// Sends `messages`, behind the answer to the upgrade the first time.
        async fn answer(&mut self, messages: &[Message]) {
            let mut out = Vec::new();
            if !self.upgraded {
                self.upgraded = true;
                out.extend(
                    format!(
                        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\
                         Upgrade: websocket\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                        derive_accept_key(self.key.as_bytes())
                    )
                    .into_bytes(),
                );
            }
            let mut ws = tungstenite::WebSocket::from_raw_socket(
                std::io::Cursor::new(Vec::new()),
                Role::Server,
                None,
            );
            for m in messages {
                ws.write(tungstenite::Message::Binary(
                    crate::protocol::encode(m).into(),
                ))
                .unwrap();
            }
            ws.flush().unwrap();
            out.extend(ws.get_ref().get_ref());
            self.socket.write_all(&out).await.unwrap();
        }
    }

    fn welcome() -> Message {
        Message::Welcome {
            target_name: "raw".into(),
        }
    }

    /// A message that writes on the target.
    fn writes(m: &Message) -> bool {
        matches!(
            m,
            Message::Mkdir { .. }
                | Message::FileBegin(_)
                | Message::Append(_)
                | Message::Data { .. }
                | Message::Delete { .. }
                | Message::SetMeta { .. }
        )
    }

    fn sent_data(messages: &[Message]) -> bool {
        messages.iter().any(writes)
    }

    fn finished(messages: &[Message]) -> bool {
        messages.contains(&Message::Finish)
    }

    /// The names of `messages`, for a failure's message.
    fn names(messages: &[Message]) -> Vec<&'static str> {
        messages.iter().map(Message::name).collect()
    }

    /// A source folder whose target held it as it was before one file changed and one was
    /// added: the source scanned (its tree and digest), and the manifest kept of the target.
    struct Setup {
        _dir: tempfile::TempDir,
        source: PathBuf,
        state: PathBuf,
        tree: Arc<Tree>,
        digest: Hash,
        kept_digest: Hash,
    }

    async fn setup(url: &str, new_files: usize) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let (source, state) = (dir.path().join("source"), dir.path().join("state"));
        std::fs::create_dir_all(&source).unwrap();
        std::fs::create_dir_all(&state).unwrap();
        std::fs::write(source.join("a.txt"), b"as the target holds it").unwrap();
        std::fs::write(source.join("b.txt"), b"unchanged").unwrap();
        let scan = |source: &Path| {
            let index = Index::open(&state.join("index.redb")).unwrap();
            let databases = snapshots(&state).unwrap();
            let none = crate::exclude::Exclude::none();
            let scanned =
                scan_source(source, &none, &index, scan::Growth::Prove, &[], &databases).unwrap();
            let digest = plan::digest(&scanned.tree);
            (Arc::new(scanned.tree), digest)
        };
        let (kept_tree, kept_digest) = scan(&source);
        Kept::file(cached_manifest_path(&state, url))
            .verified(kept_digest, &kept_tree)
            .await;
        std::fs::write(source.join("a.txt"), b"changed since the last sync").unwrap();
        std::fs::write(source.join("c.txt"), b"new").unwrap();
        for i in 0..new_files {
            let folder = source.join(format!("new/{}", i / 256));
            std::fs::create_dir_all(&folder).unwrap();
            std::fs::write(folder.join(format!("{i}.txt")), b"x").unwrap();
        }
        let (tree, digest) = scan(&source);
        Setup {
            _dir: dir,
            source,
            state,
            tree,
            digest,
            kept_digest,
        }
    }

    /// One session with the target at `url`, the source scanned before it dials (so the session
    /// may guess).
    async fn one_session(setup: &Setup, url: &str) -> Result<send::Outcome, SendError> {
        let target = TargetSpec::dial(url, Trust::Insecure, TOKEN);
        let mut options = PushOptions::new(
            setup.source.clone(),
            vec![target.clone()],
            setup.state.clone(),
        );
        options.max_delete_share = None;
        let (_tree_tx, tree_rx) =
            tokio::sync::watch::channel(Some((setup.tree.clone(), setup.digest, None)));
        let blocks = Arc::new(BlockSource::new(setup.source.clone()));
        let (events, _) = broadcast::channel(256);
        let mut kept = Kept::file(cached_manifest_path(&setup.state, url));
        let mut open = None;
        let stop = CancellationToken::new();
        let sent = session(
            &target, &options, &stop, &mut open, tree_rx, &blocks, &events, &mut kept,
        );
        let outcome = tokio::time::timeout(Duration::from_secs(20), sent)
            .await
            .expect("the session ends");
        outcome.map(|(outcome, _, _)| outcome)
    }

    /// With the source scanned before TLS is up and the target's manifest kept, the session
    /// is on the wire before the target said a word; its `Finish` waits for the answer that
    /// the target still holds what was kept.
    #[tokio::test]
    async fn a_guessed_session_is_sent_before_any_answer_and_finished_only_after_the_same() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        let setup = setup(&url, 0).await;
        let (offered, digest) = (setup.kept_digest, setup.digest);
        let target = tokio::spawn(async move {
            let mut raw = Raw::accept(&listener).await;
            let guessed = raw.until(sent_data, Duration::from_secs(10)).await;
            assert!(
                guessed,
                "the session comes before any answer: {:?}",
                names(&raw.messages())
            );
            // Given time, everything but the `Finish` comes.
            raw.until(finished, Duration::from_millis(300)).await;
            let before = raw.messages();
            raw.answer(&[welcome(), Message::ManifestSame { partials: vec![] }])
                .await;
            assert!(raw.until(finished, Duration::from_secs(10)).await);
            raw.answer(&[Message::Finished { digest }]).await;
            (before, raw.messages())
        });
        let outcome = one_session(&setup, &url).await.unwrap();
        assert_eq!(outcome.digest, digest);
        let (before, all) = target.await.unwrap();
        assert!(
            matches!(&before[..2], [Message::Hello { .. }, Message::GetManifest { cached }] if *cached == Some(offered)),
            "the hello and the request offering the kept manifest come first: {:?}",
            names(&before)
        );
        assert!(
            !finished(&before),
            "no `Finish` before the answer: {:?}",
            names(&before)
        );
        let new = |m: &Message| matches!(m, Message::FileBegin(f) if f.path == "c.txt");
        assert!(before.iter().any(new), "{:?}", names(&before));
        assert_eq!(all.last(), Some(&Message::Finish), "{:?}", names(&all));
    }

    /// A target that lists another manifest than the one kept, or holds partial files the
    /// guess was not planned with, is sent `Refused` instead of `Finish`, so it commits nothing
    /// of the guess; the session is made again from its listing, over a new connection.
    #[tokio::test]
    async fn a_wrong_guess_is_refused_unfinished_and_the_session_made_again_from_the_listing() {
        let stray = Entry {
            path: "stray.txt".into(),
            kind: EntryKind::File(FileMeta {
                size: 1,
                mtime_ns: 1_700_000_000_000_000_000,
                executable: false,
                hash: crate::hash::file_hash(1, &[[1; 32]]),
                blocks: vec![[1; 32]],
            }),
        };
        let listing = vec![
            welcome(),
            Message::ManifestPart {
                entries: vec![stray],
            },
            Message::ManifestEnd { partials: vec![] },
        ];
        let resumable = vec![
            welcome(),
            Message::ManifestSame {
                partials: vec![crate::protocol::Partial {
                    path: "c.txt".into(),
                    hash: [7; 32],
                    verified_blocks: 1,
                }],
            },
        ];
        for (first_answer, why) in [
            (listing.clone(), "changed since the last sync"),
            (resumable, "partial files to resume"),
        ] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("ws://{}", listener.local_addr().unwrap());
            let setup = setup(&url, 0).await;
            let digest = setup.digest;
            let listing = listing.clone();
            let target = tokio::spawn(async move {
                let mut first = Raw::accept(&listener).await;
                assert!(first.until(sent_data, Duration::from_secs(10)).await);
                first.answer(&first_answer).await;
                // The source ends the guess with its reason, then closes.
                let ended = |m: &[Message]| m.iter().any(|m| matches!(m, Message::Refused { .. }));
                first.until(ended, Duration::from_secs(10)).await;
                let mut second = Raw::accept(&listener).await;
                let asked =
                    |m: &[Message]| m.iter().any(|m| matches!(m, Message::GetManifest { .. }));
                assert!(second.until(asked, Duration::from_secs(10)).await);
                second.answer(&listing).await;
                assert!(second.until(finished, Duration::from_secs(10)).await);
                second.answer(&[Message::Finished { digest }]).await;
                (first.messages(), second.messages())
            });
            let outcome = one_session(&setup, &url).await.unwrap();
            assert_eq!(outcome.digest, digest);
            let (first, second) = target.await.unwrap();
            assert!(
                !finished(&first),
                "nothing of the guess is committed: {:?}",
                names(&first)
            );
            assert!(
                matches!(first.last(), Some(Message::Refused { reason, .. }) if reason.contains(why)),
                "the guess ends with the reason ({why}): {:?}",
                first.last()
            );
            assert!(
                matches!(
                    &second[..2],
                    [Message::Hello { .. }, Message::GetManifest { cached: None }]
                ),
                "the second connection asks for the listing and offers nothing: {:?}",
                names(&second)
            );
            let deletes_stray = second
                .iter()
                .any(|m| matches!(m, Message::Delete { path } if path == "stray.txt"));
            assert!(
                deletes_stray,
                "planned on the listing: {:?}",
                names(&second)
            );
            assert_eq!(second.last(), Some(&Message::Finish));
        }
    }

    /// Whatever order a target answers a guessed session in, and whatever it answers, nothing
    /// is finished unless its first words are the welcome and "the same".
    #[tokio::test]
    async fn a_guessed_session_is_never_finished_on_answers_out_of_order_or_refused() {
        let answers: Vec<(Vec<Message>, &str)> = vec![
            (
                vec![Message::Refused {
                    reason: "wrong token".into(),
                    refusal: Refusal::WrongToken,
                }],
                "wrong token",
            ),
            (
                vec![
                    welcome(),
                    Message::FileDone { id: 0 },
                    Message::ManifestSame { partials: vec![] },
                ],
                "expected the manifest",
            ),
            (
                vec![welcome(), Message::Finished { digest: [0; 32] }],
                "expected the manifest",
            ),
            (
                vec![Message::ManifestSame { partials: vec![] }, welcome()],
                "expected Welcome",
            ),
            (
                vec![
                    welcome(),
                    Message::ManifestPart { entries: vec![] },
                    Message::ManifestSame { partials: vec![] },
                ],
                "then said it was the same",
            ),
        ];
        for (answer, named) in answers {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("ws://{}", listener.local_addr().unwrap());
            let setup = setup(&url, 0).await;
            let target = tokio::spawn(async move {
                let mut guessed = Raw::accept(&listener).await;
                assert!(guessed.until(sent_data, Duration::from_secs(10)).await);
                guessed.answer(&answer).await;
                // Whatever the source sends until it ends the connection.
                guessed.until(|_| false, Duration::from_secs(5)).await;
                // The session made again, waiting for the answer, meets the same.
                let mut again = Raw::accept(&listener).await;
                let asked =
                    |m: &[Message]| m.iter().any(|m| matches!(m, Message::GetManifest { .. }));
                assert!(again.until(asked, Duration::from_secs(10)).await);
                again.answer(&answer).await;
                again.until(|_| false, Duration::from_secs(5)).await;
                (guessed.messages(), again.messages())
            });
            let error = one_session(&setup, &url).await.unwrap_err();
            assert!(error.to_string().contains(named), "{named:?} in: {error}");
            let (guessed, again) = target.await.unwrap();
            for messages in [guessed, again] {
                assert!(
                    !finished(&messages),
                    "nothing finished after {named:?}: {:?}",
                    names(&messages)
                );
            }
        }
    }

    /// A guessed session larger than one of the target's batches (which it applies at their
    /// bound, before the `Finish`) sends nothing before the answer.
    #[tokio::test]
    async fn a_guessed_session_larger_than_a_batch_waits_for_the_answer_before_it_sends() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        let setup = setup(&url, crate::mirror::receive::STAGE_STEPS).await;
        let digest = setup.digest;
        let target = tokio::spawn(async move {
            let mut raw = Raw::accept(&listener).await;
            let early = raw.until(sent_data, Duration::from_millis(500)).await;
            let before = raw.messages();
            raw.answer(&[welcome(), Message::ManifestSame { partials: vec![] }])
                .await;
            assert!(raw.until(finished, Duration::from_secs(20)).await);
            raw.answer(&[Message::Finished { digest }]).await;
            (early, before, raw.messages())
        });
        let outcome = one_session(&setup, &url).await.unwrap();
        assert_eq!(outcome.digest, digest);
        let (early, before, all) = target.await.unwrap();
        assert!(
            !early,
            "nothing but the hello and the request before the answer: {:?}",
            names(&before)
        );
        assert!(sent_data(&all) && finished(&all));
    }

    /// Every file under `root` but the state folder, with its content.
    fn contents(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut files: Vec<_> = walkdir::WalkDir::new(root)
            .into_iter()
            .filter_entry(|e| e.file_name() != crate::path::STATE_DIR)
            .map(Result::unwrap)
            .filter(|e| e.file_type().is_file())
            .map(|e| {
                let path = e.path().strip_prefix(root).unwrap().to_path_buf();
                (path, std::fs::read(e.path()).unwrap())
            })
            .collect();
        files.sort();
        files
    }

    /// A real agent over TLS: a session guessed from the manifest a first push kept leaves it
    /// identical, and so does one whose guess was wrong (the backup changed behind the
    /// source's back), made again from the agent's listing.
    #[tokio::test]
    async fn a_real_agent_is_left_identical_by_a_guess_right_or_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let (source, backup, state) = (
            dir.path().join("source"),
            dir.path().join("backup"),
            dir.path().join("state"),
        );
        std::fs::create_dir_all(source.join("db")).unwrap();
        std::fs::create_dir_all(&backup).unwrap();
        std::fs::write(source.join("db/a.ncd"), vec![1u8; 300_000]).unwrap();
        std::fs::write(source.join("workspace.xml"), b"<w/>").unwrap();
        let server = Server::bind(ServeOptions::new(
            backup.clone(),
            "127.0.0.1:0",
            TOKEN,
            "real",
        ))
        .await
        .unwrap();
        let url = format!("wss://{}", server.local_addr());
        let target = TargetSpec::dial(
            &url,
            Trust::Pinned(server.fingerprint().unwrap().to_string()),
            TOKEN,
        );
        let stop = CancellationToken::new();
        tokio::spawn(server.run(stop.clone()));
        let options = PushOptions::new(source.clone(), vec![target.clone()], state.clone());
        let (events, _) = broadcast::channel(256);
        let first = push_once(&options, &events, &CancellationToken::new())
            .await
            .unwrap();
        assert!(first.ok, "{first:?}");

        // One session with the source scanned before the agent is dialed, as over a slow link.
        let session_now = || async {
            let (tree, digest) = {
                let index = Index::open(&state.join("index.redb")).unwrap();
                let databases = snapshots(&state).unwrap();
                let none = crate::exclude::Exclude::none();
                let scanned =
                    scan_source(&source, &none, &index, scan::Growth::Prove, &[], &databases)
                        .unwrap();
                let digest = plan::digest(&scanned.tree);
                (Arc::new(scanned.tree), digest)
            };
            let (_tree_tx, tree_rx) = tokio::sync::watch::channel(Some((tree, digest, None)));
            let blocks = Arc::new(BlockSource::new(source.clone()));
            let mut kept = Kept::file(cached_manifest_path(&state, &url));
            let mut open = None;
            let never = CancellationToken::new();
            let (outcome, _, _) = session(
                &target, &options, &never, &mut open, tree_rx, &blocks, &events, &mut kept,
            )
            .await
            .unwrap();
            if let Some(conn) = open {
                conn.close_now().await;
            }
            assert_eq!(outcome.digest, digest, "{outcome:?}");
            outcome
        };

        let mut grown = vec![1u8; 300_000];
        grown.extend(vec![2u8; 3_000_000]);
        std::fs::write(source.join("db/a.ncd"), &grown).unwrap();
        std::fs::write(source.join("db/b.ncd"), vec![3u8; 200_000]).unwrap();
        let outcome = session_now().await;
        assert!(outcome.guessed, "sent before the answer");
        assert_eq!(contents(&backup), contents(&source));

        // Changed behind the source's back: the guess is wrong, and nothing of it stays.
        std::fs::write(backup.join("stray.txt"), b"not the source's").unwrap();
        std::fs::write(backup.join("workspace.xml"), b"<edited on the backup/>").unwrap();
        std::fs::write(source.join("db/b.ncd"), vec![4u8; 200_000]).unwrap();
        let outcome = session_now().await;
        assert!(!outcome.guessed, "made again from the listing");
        assert_eq!(contents(&backup), contents(&source));
        stop.cancel();
    }
}
