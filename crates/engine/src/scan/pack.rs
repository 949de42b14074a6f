//! Persistent maps with full leaves.
//!
//! imbl's B-tree splits a full leaf (16 entries) in half and never merges the halves back
//! while entries are only added, so a map built in ascending order, as every whole scan and
//! every manifest is, keeps each leaf half empty; a leaf's room is allocated whatever it
//! holds. Inserting each window of 256 sorted entries as its even-numbered ones first and then
//! the odd ones lets the later half fill the leaves the first half split: a 300,000-entry map of
//! 136-byte entries takes 182 bytes an entry instead of 317.
//!
//! Trees built whole are filled that way as they are built ([`Filling`], a window at a time,
//! so no second copy is ever held): a scan's, a target's listing as the source receives it or
//! kept it, what a target applies of a session. A set, smaller (folders), is rebuilt once
//! built ([`set`]). A tree derived from another by a few changes, which shares its nodes with
//! it, is left as it is.

use imbl::{OrdMap, OrdSet};

/// Entries inserted evens-then-odds at a time (see the module's doc).
const WINDOW: usize = 256;

/// `set`, with full leaves.
pub fn set<K: Ord + Clone>(set: OrdSet<K>) -> OrdSet<K> {
    let mut out = OrdSet::new();
    rebuild(set, |k| {
        out.insert(k);
    });
    out
}

/// Feeds `items` (sorted) to `insert`, each window's even-numbered items first.
fn rebuild<T>(items: impl IntoIterator<Item = T>, mut insert: impl FnMut(T)) {
    let mut window = Vec::with_capacity(WINDOW);
    let mut odds = Vec::with_capacity(WINDOW / 2);
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        window.extend(items.by_ref().take(WINDOW));
        insert_window(&mut window, &mut odds, &mut insert);
    }
}

/// Feeds the sorted `window` to `insert`, its even-numbered items first; leaves it empty.
fn insert_window<T>(window: &mut Vec<T>, odds: &mut Vec<T>, mut insert: impl FnMut(T)) {
    for (i, item) in window.drain(..).enumerate() {
        match i % 2 {
            0 => insert(item),
            _ => odds.push(item),
        }
    }
    odds.drain(..).for_each(insert);
}

/// Entries for a map, added in about ascending order (a walk's), inserted a window at a time,
/// sorted, evens first: the map's leaves end full, as [`map`] would leave them, without a
/// second copy of the map. An entry added again replaces the one added before, as an insert
/// would. Nothing added is in the map before [`Filling::flush`] (or a full window).
#[derive(Debug)]
pub struct Filling<K, V> {
    window: Vec<(K, V)>,
    odds: Vec<(K, V)>,
}

impl<K, V> Default for Filling<K, V> {
    fn default() -> Self {
        Filling {
            window: Vec::new(),
            odds: Vec::new(),
        }
    }
}

impl<K: Ord + Clone, V: Clone> Filling<K, V> {
    /// Adds an entry for `map`.
    pub fn add(&mut self, map: &mut OrdMap<K, V>, key: K, value: V) {
        if self.window.capacity() == 0 {
            self.window.reserve_exact(WINDOW);
        }
        self.window.push((key, value));
        if self.window.len() == WINDOW {
            self.flush(map);
        }
    }

    /// Inserts every entry added so far into `map`.
    pub fn flush(&mut self, map: &mut OrdMap<K, V>) {
        // Reversed, then sorted stably: of the entries of one key, the last added comes first
        // and is the one kept.
        self.window.reverse();
        self.window.sort_by(|a, b| a.0.cmp(&b.0));
        self.window.dedup_by(|a, b| a.0 == b.0);
        insert_window(&mut self.window, &mut self.odds, |(k, v)| {
            map.insert(k, v);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packed_set_holds_what_it_held() {
        for n in [0usize, 1, 2, 255, 256, 257, 5_000] {
            let s: OrdSet<String> = (0..n).map(|i| format!("k{i:05}")).collect();
            assert_eq!(set(s.clone()), s);
            assert!(set(s.clone()).iter().eq(s.iter()));
        }
    }

    #[test]
    fn a_filled_map_holds_what_inserts_give_the_last_added_entry_of_a_key_winning() {
        // Nearly ascending, as a walk gives them, with keys added twice in and across windows.
        let keys: Vec<String> = (0..5_000usize)
            .map(|i| format!("k{:05}", i ^ (i % 7 == 0) as usize))
            .chain((0..600).map(|i| format!("k{:05}", i * 7)))
            .collect();
        let mut inserted = OrdMap::new();
        let mut filled = OrdMap::new();
        let mut filling = Filling::default();
        for (n, key) in keys.iter().enumerate() {
            inserted.insert(key.clone(), n);
            filling.add(&mut filled, key.clone(), n);
        }
        assert_ne!(
            filled, inserted,
            "a window not yet flushed is not in the map"
        );
        filling.flush(&mut filled);
        assert_eq!(filled, inserted);
        filling.flush(&mut filled);
        assert_eq!(filled, inserted);
    }
}
