//! Where RainMaker keeps its data: the data folder, each source's index, the known peers.

use super::*;

/// RainMaker's data folder: `RAINMAKER_DATA_DIR` if set, else the OS's local data folder.
pub fn data_dir() -> PathBuf {
    match std::env::var_os("RAINMAKER_DATA_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => dirs::data_local_dir()
            .unwrap_or_else(std::env::temp_dir)
            .join("rainmaker"),
    }
}

/// The default index folder of a source folder: one per source, under [`data_dir`].
pub fn default_state_dir(source: &Path) -> PathBuf {
    state_dir_in(&data_dir(), source)
}

/// The index folder of a source folder under the data folder `data`.
pub fn state_dir_in(data: &Path, source: &Path) -> PathBuf {
    let canonical = source
        .canonicalize()
        .unwrap_or_else(|_| source.to_path_buf());
    let key = crate::hash::block_hash(canonical.to_string_lossy().as_bytes());
    data.join("sources").join(&hex::encode(key)[..16])
}

/// The default known-peers file.
pub fn default_known_peers() -> PathBuf {
    data_dir().join("known_peers")
}
