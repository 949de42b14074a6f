//! A list of paths held compactly: each path as the length it shares with the one before and
//! the rest of it.
//!
//! A scan's changed files come in path order and share most of their folders with the one
//! before (`db/tick/INST0001/202601/01.Last.ncd`, then `…/02.Last.ncd`): a first scan of
//! 300,000 files lists every one, which as a list of strings took 23 MB while the tree was
//! being built, and takes about 4 MB this way.

/// Paths, in the order pushed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PathList {
    /// Per path: its shared length and the rest's length (LEB128), then the rest.
    bytes: Vec<u8>,
    /// The last path pushed.
    last: String,
}

impl PathList {
    pub fn push(&mut self, path: &str) {
        let shared = shared_prefix(&self.last, path);
        put_varint(&mut self.bytes, shared);
        put_varint(&mut self.bytes, path.len() - shared);
        self.bytes.extend_from_slice(&path.as_bytes()[shared..]);
        self.last.truncate(shared);
        self.last.push_str(&path[shared..]);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The paths, in the order pushed.
    pub fn iter(&self) -> impl Iterator<Item = String> + '_ {
        let mut at = 0;
        let mut path = String::new();
        std::iter::from_fn(move || {
            if at == self.bytes.len() {
                return None;
            }
            let shared = take_varint(&self.bytes, &mut at);
            let rest = take_varint(&self.bytes, &mut at);
            path.truncate(shared);
            path.push_str(
                std::str::from_utf8(&self.bytes[at..at + rest])
                    .expect("only whole characters are stored"),
            );
            at += rest;
            Some(path.clone())
        })
    }
}

impl<S: AsRef<str>> FromIterator<S> for PathList {
    fn from_iter<I: IntoIterator<Item = S>>(paths: I) -> Self {
        let mut list = PathList::default();
        for path in paths {
            list.push(path.as_ref());
        }
        list
    }
}

/// The length of the longest prefix `a` and `b` share that ends on a character boundary.
fn shared_prefix(a: &str, b: &str) -> usize {
    let mut n = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    while !b.is_char_boundary(n) {
        n -= 1;
    }
    n
}

fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn take_varint(bytes: &[u8], at: &mut usize) -> usize {
    let (mut n, mut shift) = (0usize, 0);
    loop {
        let byte = bytes[*at];
        *at += 1;
        n |= usize::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return n;
        }
        shift += 7;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_list_gives_back_what_was_pushed_in_order() {
        let paths = [
            "db/tick/INST0001/202601/01.Last.ncd",
            "db/tick/INST0001/202601/02.Last.ncd",
            "db/tick/INST0002/202601/01.Last.ncd",
            "a",
            "",
            "z/ä/ö.txt",
            "z/ä/öl.txt",
            // Shares the first byte of 'ä' (0xC3) with the path before, not the character.
            "z/ã",
            "db/tick/INST0001/202601/01.Last.ncd",
        ];
        let list: PathList = paths.iter().collect();
        assert_eq!(list.len(), paths.len());
        assert_eq!(list.iter().collect::<Vec<_>>(), paths);
        let long = "x".repeat(1000);
        let mut list = PathList::default();
        assert!(list.is_empty());
        list.push(&long);
        list.push(&format!("{long}/y"));
        assert_eq!(
            list.iter().collect::<Vec<_>>(),
            [long.clone(), format!("{long}/y")]
        );
    }

    #[test]
    fn a_scan_s_paths_take_a_few_bytes_each() {
        let paths: Vec<String> = (0..3_000)
            .map(|i| {
                format!(
                    "db/tick/INST{:04}/2026{:02}/{:02}.Last.ncd",
                    i / 336,
                    i / 28 % 12 + 1,
                    i % 28 + 1
                )
            })
            .collect();
        let list: PathList = paths.iter().collect();
        let bytes: usize = paths.iter().map(String::len).sum();
        assert!(
            list.bytes.len() * 2 < bytes,
            "{} bytes for {bytes}",
            list.bytes.len()
        );
        assert!(list.iter().eq(paths.iter().cloned()));
    }
}
