//! The manifest a target had at the end of its last session, kept by the source so the next
//! session with an unchanged target skips the listing (its digest proves it still holds).

use super::*;

/// Where the source keeps the manifest a target had at the end of their last session.
pub(super) fn cached_manifest_path(state_dir: &Path, url: &str) -> PathBuf {
    let key = hex::encode(crate::hash::block_hash(url.as_bytes()));
    state_dir
        .join("targets")
        .join(format!("{}.manifest", &key[..16]))
}

pub(super) fn load_cached_manifest(path: &Path) -> Option<(Hash, Tree)> {
    let bytes = std::fs::read(path).ok()?;
    let (digest, entries): (Hash, Vec<crate::protocol::Entry>) =
        postcard::from_bytes(&bytes).ok()?;
    let mut tree = Tree::default();
    plan::add_entries(&mut tree, entries);
    (plan::digest(&tree) == digest).then_some((digest, tree))
}

pub(super) fn save_cached_manifest(path: &Path, digest: Hash, tree: &Tree) -> std::io::Result<()> {
    let bytes =
        postcard::to_stdvec(&(digest, plan::to_entries(tree))).map_err(std::io::Error::other)?;
    crate::fs::write_atomic(path, &bytes, crate::fs::Keep::Volatile)
}
