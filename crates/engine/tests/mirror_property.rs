//! Property: any random tree, after each of any random edits, mirrors to an identical tree,
//! through a real agent on a loopback port (TLS, token, pinned certificate).

#[path = "../../../tests/common/tree.rs"]
mod tree;

use proptest::prelude::*;
use rainmaker_engine::engine::{self, PushOptions, ServeOptions, Server, TargetSpec};
use rainmaker_engine::event;
use rainmaker_engine::transport::Trust;
use std::path::Path;
use tokio_util::sync::CancellationToken;

const BLOCK: usize = 128 * 1024;

/// A file's content, described compactly: a length and a seed.
#[derive(Debug, Clone)]
struct Content {
    len: usize,
    seed: u8,
}

impl Content {
    fn bytes(&self) -> Vec<u8> {
        (0..self.len)
            .map(|i| {
                (i as u8).wrapping_mul(self.seed | 1) ^ ((i / 4099) as u8).wrapping_add(self.seed)
            })
            .collect()
    }
}

#[derive(Debug, Clone)]
enum Edit {
    Append(usize, usize),
    /// A few bytes rewritten in place at a random offset, the file's length kept.
    Patch(usize, usize, u8),
    /// A patch inside the file, then an append to it: a repaired bar in a growing tick file.
    PatchThenAppend(usize, usize, u8, usize),
    Rewrite(usize, u8),
    Truncate(usize, usize),
    Rename(usize, String),
    Delete(usize),
    NewFolder(String),
    NewFile(String, Content),
}

fn content() -> impl Strategy<Value = Content> {
    (
        prop_oneof![
            0usize..100,
            100usize..5000,
            (BLOCK - 2)..(BLOCK + 2),
            (2 * BLOCK)..(3 * BLOCK),
            (5 * BLOCK)..(6 * BLOCK)
        ],
        any::<u8>(),
    )
        .prop_map(|(len, seed)| Content { len, seed })
}

fn rel_path() -> impl Strategy<Value = String> {
    "[a-c]{1,2}(/[a-c]{1,2}){0,2}\\.(dat|xml)"
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 1usize..(BLOCK + 10)).prop_map(|(i, n)| Edit::Append(i, n)),
        (any::<usize>(), any::<usize>(), any::<u8>()).prop_map(|(i, at, s)| Edit::Patch(i, at, s)),
        (any::<usize>(), any::<usize>(), any::<u8>(), 1usize..5000)
            .prop_map(|(i, at, s, n)| Edit::PatchThenAppend(i, at, s, n)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, s)| Edit::Rewrite(i, s)),
        (any::<usize>(), any::<usize>()).prop_map(|(i, n)| Edit::Truncate(i, n)),
        (any::<usize>(), rel_path()).prop_map(|(i, p)| Edit::Rename(i, p)),
        any::<usize>().prop_map(Edit::Delete),
        "[d-e]{1,2}(/[d-e]{1,2}){0,1}".prop_map(Edit::NewFolder),
        (rel_path(), content()).prop_map(|(p, c)| Edit::NewFile(p, c)),
    ]
}

fn write_file(root: &Path, rel: &str, bytes: &[u8]) {
    let path = root.join(rel);
    if path.is_dir() {
        return;
    }
    if let Some(parent) = path.parent() {
        if parent.is_file() || std::fs::create_dir_all(parent).is_err() {
            return;
        }
    }
    std::fs::write(path, bytes).unwrap();
}

fn files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for (path, node) in tree::tree(root) {
        if matches!(node, tree::Node::File { .. }) {
            out.push(path);
        }
    }
    out
}

fn apply(root: &Path, edit: &Edit) {
    let list = files(root);
    let pick = |i: &usize| (!list.is_empty()).then(|| list[i % list.len()].clone());
    match edit {
        Edit::Append(i, n) => {
            if let Some(rel) = pick(i) {
                let mut bytes = std::fs::read(root.join(&rel)).unwrap();
                bytes.extend((0..*n).map(|k| (k * 7) as u8));
                std::fs::write(root.join(rel), bytes).unwrap();
            }
        }
        Edit::Patch(i, at, seed) => {
            if let Some(rel) = pick(i) {
                let mut bytes = std::fs::read(root.join(&rel)).unwrap();
                if !bytes.is_empty() {
                    let at = at % bytes.len();
                    let end = (at + 4096).min(bytes.len());
                    bytes[at..end].iter_mut().for_each(|b| *b ^= seed | 1);
                }
                std::fs::write(root.join(rel), bytes).unwrap();
            }
        }
        Edit::PatchThenAppend(i, at, seed, n) => {
            apply(root, &Edit::Patch(*i, *at, *seed));
            apply(root, &Edit::Append(*i, *n));
        }
        Edit::Rewrite(i, seed) => {
            if let Some(rel) = pick(i) {
                let mut bytes = std::fs::read(root.join(&rel)).unwrap();
                if !bytes.is_empty() {
                    let at = bytes.len() / 2;
                    bytes[at] ^= seed | 1;
                }
                std::fs::write(root.join(rel), bytes).unwrap();
            }
        }
        Edit::Truncate(i, n) => {
            if let Some(rel) = pick(i) {
                let bytes = std::fs::read(root.join(&rel)).unwrap();
                let keep = if bytes.is_empty() { 0 } else { n % bytes.len() };
                std::fs::write(root.join(rel), &bytes[..keep]).unwrap();
            }
        }
        Edit::Rename(i, to) => {
            if let Some(rel) = pick(i) {
                let to_path = root.join(to);
                if !to_path.exists()
                    && to_path.parent().is_some_and(|p| !p.is_file())
                    && std::fs::create_dir_all(to_path.parent().unwrap()).is_ok()
                {
                    std::fs::rename(root.join(rel), to_path).unwrap();
                }
            }
        }
        Edit::Delete(i) => {
            if let Some(rel) = pick(i) {
                std::fs::remove_file(root.join(rel)).unwrap();
            }
        }
        Edit::NewFolder(rel) => {
            let _ = std::fs::create_dir_all(root.join(rel));
        }
        Edit::NewFile(rel, content) => write_file(root, rel, &content.bytes()),
    }
}

/// A target agent on a loopback port, and the options to push to it.
async fn start(source: &Path, target: &Path, state: &Path) -> (PushOptions, CancellationToken) {
    let server = Server::bind(ServeOptions {
        admin_token: None,
        subscribe_token: None,
        subscribe: None,
        root: target.to_path_buf(),
        listen: "127.0.0.1:0".into(),
        token: "property-token".into(),
        insecure: false,
        name: "prop".into(),
        trash_retention: Some(rainmaker_engine::trash::DEFAULT_RETENTION),
        push_to: None,
    })
    .await
    .unwrap();
    let target = TargetSpec {
        url: format!("wss://{}", server.local_addr()),
        trust: Trust::Pinned(server.fingerprint().unwrap().to_string()),
        token: "property-token".into(),
        dialed_in: None,
    };
    let mut options = PushOptions::new(source.to_path_buf(), vec![target], state.to_path_buf());
    options.source_name = "prop".into();
    // Random edits may delete most of a small tree; the property is about the mirror.
    options.max_delete_share = None;
    let cancel = CancellationToken::new();
    tokio::spawn(server.run(cancel.clone()));
    (options, cancel)
}

async fn mirror(options: &PushOptions) {
    let (events, _rx) = event::channel();
    let report = engine::push_once(options, &events, &CancellationToken::new())
        .await
        .unwrap();
    assert!(report.ok, "the push must verify: {report:?}");
}

/// The differences between two folders, one a line (empty when identical).
fn differences(a: &Path, b: &Path) -> String {
    tree::tree_diff(&tree::tree(a), &tree::tree(b)).join("\n")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn any_tree_with_any_edits_mirrors_identically(
        initial in prop::collection::vec((rel_path(), content()), 0..8),
        edits in prop::collection::vec((edit(), any::<bool>()), 0..10),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (source, target, state) = (dir.path().join("src"), dir.path().join("dst"), dir.path().join("state"));
        std::fs::create_dir_all(&source).unwrap();
        std::fs::create_dir_all(&target).unwrap();
        for (rel, content) in &initial {
            write_file(&source, rel, &content.bytes());
        }
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let (options, cancel) = runtime.block_on(start(&source, &target, &state));
        runtime.block_on(mirror(&options));
        let diff = differences(&source, &target);
        prop_assert!(diff.is_empty(), "first mirror must be identical: {}", diff);
        // Edits come in runs with no sync between them: a file may be patched in its middle
        // and grown before the next sync, which must still leave the target identical.
        let last = edits.len().saturating_sub(1);
        for (i, (edit, sync)) in edits.iter().enumerate() {
            apply(&source, edit);
            if !*sync && i != last {
                continue;
            }
            runtime.block_on(mirror(&options));
            let diff = differences(&source, &target);
            prop_assert!(diff.is_empty(), "mirror after edit {} ({:?}) must be identical: {}", i, edit, diff);
        }
        cancel.cancel();
    }
}
