//! Logical rows (what a user indexes) to physical rows (where they sit in the file).

use std::sync::Arc;

/// Dropped rows a chunk holds, about: dropping rows copies only the chunks they fall in.
const CHUNK: usize = 256;

/// The dropped rows of an array, ready for mapping: with `D` the sorted dropped rows,
/// logical row `i` is physical row `i + #{j : D[j] - j <= i}` (FORMAT.md 4).
///
/// `D` is kept in chunks that versions share, so that dropping a few more rows costs what they
/// touch rather than what was dropped before (a million dropped rows are 8 MB).
#[derive(Debug, Clone, Default)]
pub struct RowMap {
    /// `D` in ascending, non-empty chunks of at most `2 * CHUNK` rows.
    chunks: Vec<Arc<Vec<u64>>>,
    /// `before[c]`: how many rows the chunks before chunk `c` hold.
    before: Vec<usize>,
}

/// The first index in `0..n` where `pred` (true, then false) is false.
fn search(n: usize, pred: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

impl RowMap {
    pub fn new(deleted: impl Iterator<Item = u64>) -> Self {
        let all: Vec<u64> = deleted.collect();
        Self::of_chunks(all.chunks(CHUNK).map(|c| Arc::new(c.to_vec())).collect())
    }

    fn of_chunks(chunks: Vec<Arc<Vec<u64>>>) -> Self {
        let mut before = Vec::with_capacity(chunks.len());
        let mut n = 0;
        for c in &chunks {
            before.push(n);
            n += c.len();
        }
        RowMap { chunks, before }
    }

    /// The dropped rows, ascending.
    pub fn deleted(&self) -> impl Iterator<Item = u64> + '_ {
        self.chunks.iter().flat_map(|c| c.iter().copied())
    }

    /// How many rows are dropped.
    pub fn dropped(&self) -> usize {
        self.before.last().copied().unwrap_or(0) + self.chunks.last().map_or(0, |c| c.len())
    }

    pub fn is_identity(&self) -> bool {
        self.chunks.is_empty()
    }

    /// `D[j] - j` for row `k` of chunk `c` (`j` its index among all dropped rows).
    fn shifted(&self, c: usize, k: usize) -> u64 {
        self.chunks[c][k] - (self.before[c] + k) as u64
    }

    /// `#{j : D[j] - j <= i}`.
    fn count(&self, i: u64) -> usize {
        let c = search(self.chunks.len(), |c| self.shifted(c, 0) <= i);
        if c == 0 {
            return 0;
        }
        let c = c - 1;
        self.before[c] + search(self.chunks[c].len(), |k| self.shifted(c, k) <= i)
    }

    /// `D[j] - j`, if there is a `j`-th dropped row.
    fn shifted_at(&self, j: usize) -> Option<u64> {
        if j >= self.dropped() {
            return None;
        }
        let c = self.before.partition_point(|&b| b <= j) - 1;
        Some(self.shifted(c, j - self.before[c]))
    }

    pub fn physical(&self, logical: u64) -> u64 {
        logical + self.count(logical) as u64
    }

    /// Physical rows of a run of logical rows; each maximal run that stays contiguous on disk
    /// is reported once as `(logical_start, physical_start, len)`.
    pub fn runs(&self, start: u64, stop: u64) -> Vec<(u64, u64, u64)> {
        let mut out = Vec::new();
        let mut i = start;
        while i < stop {
            let j = self.count(i);
            // The next dropped row after this one ends the run.
            let limit = self.shifted_at(j).map_or(stop, |s| s.min(stop));
            out.push((i, i + j as u64, limit - i));
            i = limit;
        }
        out
    }

    /// These dropped rows and `new` ones (ascending, unique); None if one is dropped already.
    /// Chunks that no new row falls in are shared, not copied.
    pub fn merged(&self, new: &[u64]) -> Option<Self> {
        if self.chunks.is_empty() {
            return Some(Self::new(new.iter().copied()));
        }
        let mut chunks = Vec::with_capacity(self.chunks.len() + new.len() / CHUNK + 1);
        let mut rest = new;
        for (c, chunk) in self.chunks.iter().enumerate() {
            // New rows below the next chunk's first go into this one.
            let take = match self.chunks.get(c + 1) {
                Some(next) => rest.partition_point(|&r| r < next[0]),
                None => rest.len(),
            };
            let (mine, tail) = rest.split_at(take);
            rest = tail;
            if mine.is_empty() {
                chunks.push(chunk.clone());
                continue;
            }
            let merged = merge(chunk, mine);
            if merged.len() != chunk.len() + mine.len() {
                return None;
            }
            if merged.len() > 2 * CHUNK {
                chunks.extend(merged.chunks(CHUNK).map(|p| Arc::new(p.to_vec())));
            } else {
                chunks.push(Arc::new(merged));
            }
        }
        Some(Self::of_chunks(chunks))
    }
}

/// Merges two ascending lists of unique rows.
pub fn merge(a: &[u64], b: &[u64]) -> Vec<u64> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(deleted: &[u64], n: u64) -> Vec<u64> {
        (0..n).filter(|r| !deleted.contains(r)).collect()
    }

    #[test]
    fn physical_matches_a_model() {
        for deleted in [vec![], vec![0], vec![0, 1, 2], vec![3, 5, 6, 9], vec![9]] {
            let live = model(&deleted, 10);
            let map = RowMap::new(deleted.iter().copied());
            for (i, &p) in live.iter().enumerate() {
                assert_eq!(map.physical(i as u64), p, "{deleted:?} {i}");
            }
            let runs = map.runs(0, live.len() as u64);
            let flat: Vec<u64> = runs.iter().flat_map(|&(_, p, n)| p..p + n).collect();
            assert_eq!(flat, live);
        }
    }

    #[test]
    fn chunks_match_a_model_as_rows_are_dropped() {
        let n = 5000u64;
        let mut map = RowMap::default();
        let mut model: Vec<u64> = Vec::new();
        let mut x = 7u64;
        for round in 0..40 {
            // Pseudo-random batches, some clustered (a chunk grows and splits).
            let mut batch: Vec<u64> = (0..60)
                .map(|k| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    if round % 3 == 0 {
                        1000 + k * 2
                    } else {
                        (x >> 33) % n
                    }
                })
                .filter(|r| !model.contains(r))
                .collect();
            batch.sort_unstable();
            batch.dedup();
            map = map.merged(&batch).expect("new rows only");
            model = merge(&model, &batch);
            assert_eq!(map.deleted().collect::<Vec<_>>(), model);
            let live: Vec<u64> = (0..n).filter(|r| model.binary_search(r).is_err()).collect();
            for (i, &p) in live.iter().enumerate().step_by(37) {
                assert_eq!(map.physical(i as u64), p);
            }
            let flat: Vec<u64> = map
                .runs(0, live.len() as u64)
                .iter()
                .flat_map(|&(_, p, k)| p..p + k)
                .collect();
            assert_eq!(flat, live);
        }
        assert!(map.merged(&[model[3]]).is_none());
    }

    #[test]
    fn merge_is_a_sorted_union() {
        assert_eq!(merge(&[1, 4, 7], &[0, 4, 9]), [0, 1, 4, 7, 9]);
    }
}
