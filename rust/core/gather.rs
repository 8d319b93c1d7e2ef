//! Copying rows out of a mapping into a caller's buffer, in parallel when it is large.

use rayon::prelude::*;

/// Below this many output bytes one thread copies; rayon's start-up would cost more.
const PARALLEL_BYTES: usize = 1 << 20;
/// Output bytes each parallel task fills.
const TASK_BYTES: usize = 1 << 18;

/// Copies rows `rows` (physical, each `< src.len() / row`) of `row` bytes into `out`, in order.
/// Adjacent rows are copied as one run.
pub fn rows(src: &[u8], row: usize, rows: &[u64], out: &mut [u8]) {
    debug_assert_eq!(out.len(), rows.len() * row);
    if row == 0 || rows.is_empty() {
        return;
    }
    if out.len() < PARALLEL_BYTES {
        return copy_runs(src, row, rows, out);
    }
    let per_task = (TASK_BYTES / row).max(1);
    out.par_chunks_mut(per_task * row)
        .zip(rows.par_chunks(per_task))
        .for_each(|(o, r)| copy_runs(src, row, r, o));
}

/// How many rows ahead of the copy to ask the CPU to start loading: random rows miss the
/// cache, and overlapping those misses is what makes a gather fast.
const PREFETCH_AHEAD: usize = 8;

fn copy_runs(src: &[u8], row: usize, rows: &[u64], out: &mut [u8]) {
    for &r in rows.iter().take(PREFETCH_AHEAD) {
        prefetch(src, r as usize * row, row);
    }
    let mut k = 0;
    while k < rows.len() {
        if let Some(&r) = rows.get(k + PREFETCH_AHEAD) {
            prefetch(src, r as usize * row, row);
        }
        let first = rows[k] as usize;
        let mut n = 1;
        while k + n < rows.len() && rows[k + n] as usize == first + n {
            n += 1;
        }
        out[k * row..(k + n) * row].copy_from_slice(&src[first * row..(first + n) * row]);
        k += n;
    }
}

/// Hints the CPU to load `src[at..at + len]` (at most 1 KiB of it) into cache.
#[inline(always)]
fn prefetch(src: &[u8], at: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    for line in (at..at + len.min(1024)).step_by(64) {
        if let Some(b) = src.get(line) {
            // SAFETY: a prefetch of an address inside `src`; it never faults or writes.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    b as *const u8 as *const i8,
                )
            };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (src, at, len);
}

/// Copies `src` into `out` (same length), in parallel when it is large.
pub fn bytes(src: &[u8], out: &mut [u8]) {
    if out.len() < PARALLEL_BYTES {
        return out.copy_from_slice(src);
    }
    out.par_chunks_mut(TASK_BYTES * 4)
        .zip(src.par_chunks(TASK_BYTES * 4))
        .for_each(|(o, s)| o.copy_from_slice(s));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_in_any_order_with_duplicates() {
        let src: Vec<u8> = (0..=255).collect();
        for idx in [vec![0u64, 1, 2], vec![5, 3, 3, 4, 63], vec![63, 0]] {
            let mut out = vec![0u8; idx.len() * 4];
            rows(&src, 4, &idx, &mut out);
            let want: Vec<u8> = idx
                .iter()
                .flat_map(|&r| src[r as usize * 4..][..4].to_vec())
                .collect();
            assert_eq!(out, want);
        }
    }

    #[test]
    fn large_gathers_run_in_parallel_and_agree() {
        let src: Vec<u8> = (0..4 << 20).map(|i| (i % 251) as u8).collect();
        let idx: Vec<u64> = (0..20_000).map(|i| (i * 7919 % 32_768) as u64).collect();
        let mut out = vec![0u8; idx.len() * 128];
        rows(&src, 128, &idx, &mut out);
        for (k, &r) in idx.iter().enumerate() {
            assert_eq!(out[k * 128..][..128], src[r as usize * 128..][..128]);
        }
    }
}
