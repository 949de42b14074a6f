//! What tests of the receiving side send: the messages of a whole file, as a source would.

use crate::hash;
use crate::protocol::{FileBegin, Message, Payload};

/// The messages that send `content` as file `path` (at most one block).
pub(crate) fn send_file(id: u64, path: &str, content: &[u8]) -> Vec<Message> {
    let blocks = vec![hash::block_hash(content)];
    vec![
        Message::FileBegin(FileBegin {
            id,
            path: path.into(),
            size: content.len() as u64,
            mtime_ns: 1_700_000_000_000_000_000,
            executable: false,
            hash: hash::file_hash(content.len() as u64, &blocks),
            blocks,
            reuse: Vec::new(),
            resume_blocks: 0,
        }),
        Message::Data {
            id,
            offset: 0,
            payload: Payload::Raw(content.to_vec()),
        },
        Message::FileEnd { id },
    ]
}
