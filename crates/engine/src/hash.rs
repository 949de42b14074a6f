//! Block and file hashing with BLAKE3, pure over readers and lists of block hashes.
//!
//! A file is cut into [`BLOCK_SIZE`] blocks; each block is hashed on its own, and the file's
//! hash is a hash of its length and its block hashes. So the hash of any prefix of a file
//! needs the hashes of the whole blocks below it and one read of at most one partial block:
//! that is what makes an append cost work proportional to what was appended.

use std::io::{self, Read};

/// Size of a block: the unit of hashing, transfer and resume.
pub const BLOCK_SIZE: u64 = 128 * 1024;

/// A BLAKE3 hash.
pub type Hash = [u8; 32];

/// Number of blocks of a file of `size` bytes (an empty file has none).
pub fn block_count(size: u64) -> u64 {
    size.div_ceil(BLOCK_SIZE)
}

/// Length of block `index` of a file of `size` bytes.
pub fn block_len(size: u64, index: u64) -> u64 {
    let start = index * BLOCK_SIZE;
    size.saturating_sub(start).min(BLOCK_SIZE)
}

/// Hash of one block's bytes.
pub fn block_hash(bytes: &[u8]) -> Hash {
    *blake3::hash(bytes).as_bytes()
}

/// Hash of a whole file from its length and block hashes.
pub fn file_hash(size: u64, blocks: &[Hash]) -> Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"rainmaker-file-v1");
    hasher.update(&size.to_le_bytes());
    for block in blocks {
        hasher.update(block);
    }
    *hasher.finalize().as_bytes()
}

/// Reads `len` bytes (or to the end, whichever comes first) from `reader` and returns their
/// block hashes and how many bytes were read. Reading stops at `len` even if the reader has
/// more: a file growing while it is hashed is hashed as the prefix it had.
pub fn hash_blocks(reader: &mut impl Read, len: u64) -> io::Result<(Vec<Hash>, u64)> {
    let mut blocks = Vec::with_capacity(block_count(len) as usize);
    let mut buffer = vec![0u8; BLOCK_SIZE as usize];
    let mut total = 0u64;
    while total < len {
        let want = (len - total).min(BLOCK_SIZE) as usize;
        let got = read_full(reader, &mut buffer[..want])?;
        if got == 0 {
            break;
        }
        blocks.push(block_hash(&buffer[..got]));
        total += got as u64;
        if got < want {
            break;
        }
    }
    Ok((blocks, total))
}

/// Reads until `buffer` is full or the reader ends; returns the bytes read.
pub fn read_full(reader: &mut impl Read, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The hash a file's first `len` bytes would have, given the block hashes of a longer version
/// (valid for every whole block below `len`) and the bytes of the partial block at `len`.
pub fn prefix_hash(len: u64, blocks: &[Hash], partial_tail: &[u8]) -> Hash {
    let whole = (len / BLOCK_SIZE) as usize;
    let mut list: Vec<Hash> = blocks[..whole.min(blocks.len())].to_vec();
    if len % BLOCK_SIZE != 0 {
        list.push(block_hash(partial_tail));
    }
    file_hash(len, &list)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn whole(bytes: &[u8]) -> Hash {
        let (blocks, n) = hash_blocks(&mut &bytes[..], bytes.len() as u64).unwrap();
        assert_eq!(n, bytes.len() as u64);
        file_hash(n, &blocks)
    }

    proptest! {
        #[test]
        fn prefix_hash_equals_hash_of_the_prefix(
            len in 0usize..(3 * BLOCK_SIZE as usize),
            cut in 0usize..(3 * BLOCK_SIZE as usize),
        ) {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
            let cut = cut.min(len);
            let (blocks, _) = hash_blocks(&mut &bytes[..], len as u64).unwrap();
            let tail_start = cut - cut % BLOCK_SIZE as usize;
            let got = prefix_hash(cut as u64, &blocks, &bytes[tail_start..cut]);
            prop_assert_eq!(got, whole(&bytes[..cut]), "an append is detected by prefix hashes");
        }
    }

    #[test]
    fn hashing_stops_at_the_requested_length() {
        let bytes = vec![5u8; 1000];
        let (blocks, n) = hash_blocks(&mut &bytes[..], 600).unwrap();
        assert_eq!(
            n, 600,
            "a growing file is hashed as the prefix it had when scanned"
        );
        assert_eq!(blocks, vec![block_hash(&bytes[..600])]);
    }

    #[test]
    fn counts_and_lengths() {
        assert_eq!(block_count(0), 0);
        assert_eq!(block_count(1), 1);
        assert_eq!(block_count(BLOCK_SIZE), 1);
        assert_eq!(block_count(BLOCK_SIZE + 1), 2);
        assert_eq!(block_len(BLOCK_SIZE + 1, 1), 1);
        assert_eq!(block_len(BLOCK_SIZE + 1, 2), 0);
    }
}
