//! Logical rows (what a user indexes) to physical rows (where they sit in the file).

/// The dropped rows of an array, ready for mapping: with `D` the sorted dropped rows,
/// logical row `i` is physical row `i + #{j : D[j] - j <= i}` (FORMAT.md 4).
#[derive(Debug, Clone, Default)]
pub struct RowMap {
    /// `D[j] - j`, non-decreasing.
    shifted: Vec<u64>,
}

impl RowMap {
    pub fn new(deleted: impl Iterator<Item = u64>) -> Self {
        RowMap {
            shifted: deleted.enumerate().map(|(j, d)| d - j as u64).collect(),
        }
    }

    /// The dropped rows, ascending.
    pub fn deleted(&self) -> impl Iterator<Item = u64> + '_ {
        self.shifted.iter().enumerate().map(|(j, &s)| s + j as u64)
    }

    /// How many rows are dropped.
    pub fn dropped(&self) -> usize {
        self.shifted.len()
    }

    pub fn is_identity(&self) -> bool {
        self.shifted.is_empty()
    }

    pub fn physical(&self, logical: u64) -> u64 {
        logical + self.shifted.partition_point(|&s| s <= logical) as u64
    }

    /// Physical rows of a run of logical rows; each maximal run that stays contiguous on disk
    /// is reported once as `(logical_start, physical_start, len)`.
    pub fn runs(&self, start: u64, stop: u64) -> Vec<(u64, u64, u64)> {
        let mut out = Vec::new();
        let mut i = start;
        while i < stop {
            let j = self.shifted.partition_point(|&s| s <= i);
            // The next dropped row after this one ends the run.
            let limit = self.shifted.get(j).map_or(stop, |&s| s.min(stop));
            out.push((i, i + j as u64, limit - i));
            i = limit;
        }
        out
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
    fn merge_is_a_sorted_union() {
        assert_eq!(merge(&[1, 4, 7], &[0, 4, 9]), [0, 1, 4, 7, 9]);
    }
}
