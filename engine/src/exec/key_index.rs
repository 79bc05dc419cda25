//! Stored rows by key, for a stream join: every key's bytes in one buffer and every key's rows a
//! linked list through one vector, so indexing a row allocates nothing of its own (a map of boxed keys
//! to vectors of rows made two allocations per distinct key: Nexmark q7's join indexes every bid by
//! its price, nearly all distinct).

use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};

const NONE: u32 = u32::MAX;

/// A stored row: its chunk and row within it.
pub type RowRef = (u64, u32);

#[derive(Default)]
pub struct KeyIndex {
    /// Key numbers, found by hash and compared by bytes.
    table: HashTable<u32>,
    hasher: DefaultHashBuilder,
    /// Key `k`'s bytes are `bytes[ends[k - 1]..ends[k]]`.
    bytes: Vec<u8>,
    ends: Vec<usize>,
    hashes: Vec<u64>,
    /// Per key, its newest entry.
    heads: Vec<u32>,
    /// Each entry: a run of consecutive rows of one chunk under one key, and the key's next older
    /// entry. Rows of a key often come together (Nexmark q5 stores each window's counts under the
    /// window's bounds: a whole chunk is one run), so an entry holds a run, not a row.
    entries: Vec<Run>,
    /// The key of the last row inserted: the next row with the same bytes needs no hash lookup.
    last: Option<u32>,
}

#[derive(Clone, Copy)]
struct Run {
    chunk: u64,
    first: u32,
    len: u32,
    older: u32,
}

impl KeyIndex {
    fn key(&self, k: u32) -> &[u8] {
        let k = k as usize;
        let start = if k == 0 { 0 } else { self.ends[k - 1] };
        &self.bytes[start..self.ends[k]]
    }

    fn find(&self, hash: u64, key: &[u8]) -> Option<u32> {
        self.table.find(hash, |&k| self.key(k) == key).copied()
    }

    pub fn insert(&mut self, key: &[u8], (chunk, row): RowRef) {
        self.insert_run(key, chunk, row..row + 1);
    }

    /// Stores consecutive rows of a chunk under one key.
    pub fn insert_run(&mut self, key: &[u8], chunk: u64, rows: std::ops::Range<u32>) {
        if rows.is_empty() {
            return;
        }
        let k = match self.last.filter(|k| self.key(*k) == key) {
            Some(k) => k,
            None => {
                let hash = self.hasher.hash_one(key);
                let k = match self.find(hash, key) {
                    Some(k) => k,
                    None => {
                        let k = self.heads.len() as u32;
                        self.bytes.extend_from_slice(key);
                        self.ends.push(self.bytes.len());
                        self.hashes.push(hash);
                        self.heads.push(NONE);
                        let hashes = &self.hashes;
                        self.table.insert_unique(hash, k, |&x| hashes[x as usize]);
                        k
                    }
                };
                self.last = Some(k);
                k
            }
        };
        let head = self.heads[k as usize];
        let len = rows.end - rows.start;
        if let Some(run) = self.entries.get_mut(head as usize) {
            if run.chunk == chunk && run.first + run.len == rows.start {
                run.len += len;
                return;
            }
        }
        self.entries.push(Run { chunk, first: rows.start, len, older: head });
        self.heads[k as usize] = (self.entries.len() - 1) as u32;
    }

    /// The runs of rows stored under `key`, newest first: (chunk, consecutive rows of it).
    pub fn runs(&self, key: &[u8]) -> impl Iterator<Item = (u64, std::ops::Range<u32>)> + '_ {
        self.runs_from(self.find(self.hasher.hash_one(key), key).map_or(NONE, |k| self.heads[k as usize]))
    }

    fn runs_from(&self, mut next: u32) -> impl Iterator<Item = (u64, std::ops::Range<u32>)> + '_ {
        std::iter::from_fn(move || {
            let run = *self.entries.get(next as usize)?;
            next = run.older;
            Some((run.chunk, run.first..run.first + run.len))
        })
    }

    /// Every key, with the runs of rows stored under it (newest first). Runs of dropped chunks are
    /// among them until swept out.
    pub fn keys(&self) -> impl Iterator<Item = (&[u8], impl Iterator<Item = (u64, std::ops::Range<u32>)> + '_)> + '_ {
        (0..self.heads.len() as u32).map(|k| (self.key(k), self.runs_from(self.heads[k as usize])))
    }

    /// Keeps the rows for which `keep` holds (and the keys that still have one), in the same order.
    pub fn retain(&mut self, keep: impl Fn(RowRef) -> bool) {
        self.retain_map(|(chunk, row)| keep((chunk, row)).then_some(row));
    }

    /// Keeps the rows `place` gives a row number (in their chunk, which lost rows before them, say),
    /// under that number, in the same order; the others go.
    pub fn retain_map(&mut self, place: impl Fn(RowRef) -> Option<u32>) {
        let mut kept = KeyIndex { hasher: self.hasher, ..KeyIndex::default() };
        for k in 0..self.heads.len() as u32 {
            let mut runs: Vec<Run> = Vec::new();
            let mut next = self.heads[k as usize];
            while let Some(run) = self.entries.get(next as usize) {
                runs.push(*run);
                next = run.older;
            }
            // Oldest first, as they were inserted.
            for run in runs.iter().rev() {
                for r in (run.first..run.first + run.len).filter_map(|r| place((run.chunk, r))) {
                    kept.insert(self.key(k), (run.chunk, r));
                }
            }
        }
        *self = kept;
    }

    /// Bytes held, for the memory pool.
    pub fn size(&self) -> usize {
        self.table.capacity() * 5
            + self.bytes.capacity()
            + (self.ends.capacity() + self.hashes.capacity()) * 8
            + self.heads.capacity() * 4
            + self.entries.capacity() * std::mem::size_of::<Run>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows stored under `key`: newest run first, each run's rows in order.
    fn get(ix: &KeyIndex, key: &[u8]) -> Vec<RowRef> {
        ix.runs(key).flat_map(|(chunk, rows)| rows.map(move |r| (chunk, r))).collect()
    }

    #[test]
    fn rows_are_found_by_key_and_kept_in_order() {
        let mut ix = KeyIndex::default();
        for (i, key) in [b"a", b"b", b"a", b"c", b"a"].iter().enumerate() {
            ix.insert(&key[..], (i as u64 / 2, i as u32));
        }
        assert_eq!(get(&ix, b"a"), vec![(2, 4), (1, 2), (0, 0)]);
        assert_eq!(get(&ix, b"b"), vec![(0, 1)]);
        assert_eq!(get(&ix, b"z").len(), 0);
        ix.retain(|(chunk, _)| chunk != 1);
        assert_eq!(get(&ix, b"a"), vec![(2, 4), (0, 0)]);
        assert_eq!(get(&ix, b"c").len(), 0, "a key whose rows all went is gone");
        assert_eq!(ix.heads.len(), 2);
    }

    #[test]
    fn consecutive_rows_of_a_key_are_one_run() {
        let mut ix = KeyIndex::default();
        for r in 0..1000 {
            ix.insert(b"w", (7, r));
        }
        ix.insert(b"v", (7, 1000));
        for r in 0..10 {
            ix.insert(b"w", (8, r));
        }
        ix.insert(b"w", (8, 20));
        assert_eq!(ix.entries.len(), 4, "a run per chunk and gap");
        let rows: Vec<RowRef> = get(&ix, b"w");
        assert_eq!(rows.len(), 1011);
        assert_eq!(rows[0], (8, 20));
        assert_eq!(&rows[1..3], &[(8, 0), (8, 1)]);
        assert_eq!(rows[11], (7, 0));
        // A run stored at once continues the key's run as rows one by one would.
        ix.insert_run(b"w", 8, 21..30);
        ix.insert_run(b"u", 9, 0..0);
        assert_eq!(ix.entries.len(), 4, "the run of rows 20.. grew");
        assert_eq!(get(&ix, b"w")[..10], (20..30).map(|r| (8, r)).collect::<Vec<_>>()[..]);
        assert_eq!(get(&ix, b"u").len(), 0, "no rows, no key");
        ix.retain(|(chunk, r)| chunk == 8 && r < 20 || chunk == 7 && r % 2 == 0);
        assert_eq!(get(&ix, b"w").len(), 510);
        assert_eq!(get(&ix, b"v").len(), 1);
    }

    #[test]
    fn rows_renumbered_in_their_chunk_keep_their_keys_and_order() {
        // A chunk that lost rows 1 and 3 of 0..5: rows 0, 2, 4 become 0, 1, 2.
        let mut ix = KeyIndex::default();
        for (r, key) in [b"a", b"b", b"a", b"b", b"a"].iter().enumerate() {
            ix.insert(&key[..], (1, r as u32));
        }
        ix.insert(b"c", (2, 0));
        let keys: Vec<(Vec<u8>, usize)> = ix.keys().map(|(k, runs)| (k.to_vec(), runs.map(|(_, r)| r.len()).sum())).collect();
        assert_eq!(keys, vec![(b"a".to_vec(), 3), (b"b".to_vec(), 2), (b"c".to_vec(), 1)]);
        let place = [Some(0), None, Some(1), None, Some(2)];
        ix.retain_map(|(chunk, r)| if chunk == 1 { place[r as usize] } else { Some(r) });
        assert_eq!(get(&ix, b"a"), vec![(1, 0), (1, 1), (1, 2)], "consecutive now: one run");
        assert_eq!(get(&ix, b"b").len(), 0);
        assert_eq!(get(&ix, b"c"), vec![(2, 0)]);
        assert_eq!(ix.entries.len(), 2);
    }
}
