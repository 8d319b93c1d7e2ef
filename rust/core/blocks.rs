//! Rows of compressed arrays: encoding rows into blocks in parallel, and reading rows back
//! by decoding only the blocks they sit in.

use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use super::compress::{self, Encoded, Layout, Record};
use super::error::{Error, Result};
use super::format::Compressed;

/// Raw bytes a zstd frame can decode to per stored byte, at most: every block of a frame
/// decodes to at most 128 KiB (RFC 8878, Block_Maximum_Size) and takes at least 4 bytes (an
/// RLE block: a 3-byte header and the byte to repeat).
pub const MAX_RATIO: u64 = 32768;

/// Checks a block index against itself before anything is read or allocated (FORMAT.md 7):
/// no block claims more raw bytes than its stored bytes can hold, and no two records overlap (blocks are only ever appended; a record copied over
/// another, same rows, size and CRC, would otherwise read as that block's rows). With the
/// data file checked to hold every record, the raw size of the array is bounded by its file's.
pub fn check_index(index: &Compressed, rows: u64, row_bytes: usize, what: &str) -> Result<()> {
    let mut spans = Vec::with_capacity(index.blocks.len());
    for (k, b) in index.blocks.iter().enumerate() {
        if !holds(index, k, rows, row_bytes) {
            let r = index.rows_of(k, rows);
            let raw = (r.end - r.start).saturating_mul(row_bytes as u64);
            return Err(Error::Corrupt(format!(
                "{what}: block {k} stores {} bytes for {raw} raw bytes",
                b.size
            )));
        }
        if b.size > 0 {
            spans.push((b.offset, b.end()));
        }
    }
    spans.sort_unstable();
    if spans.windows(2).any(|w| w[1].0 < w[0].1) {
        return Err(Error::Corrupt(format!("{what}: block records overlap")));
    }
    Ok(())
}

/// Whether block `k`'s stored bytes can hold its raw bytes (at most `MAX_RATIO` to one), so
/// that what a read allocates stays bounded by the bytes on disk.
pub fn holds(index: &Compressed, k: usize, rows: u64, row_bytes: usize) -> bool {
    let r = index.rows_of(k, rows);
    let raw = (r.end - r.start).saturating_mul(row_bytes as u64);
    raw.div_ceil(MAX_RATIO) <= index.blocks[k].size
}

/// Checks that the zstd frames of blocks `ks` of an index declare exactly the size their
/// blocks decode to (FORMAT.md 7), so that no read allocates for rows its frames do not hold.
/// `src` is the data file, checked to hold every record.
pub fn check_frames(
    src: &[u8],
    index: &Compressed,
    rows: u64,
    layout: Layout,
    what: &str,
    ks: impl IntoIterator<Item = usize>,
) -> Result<()> {
    for k in ks {
        let b = &index.blocks[k];
        if b.codec != compress::ZSTD {
            continue;
        }
        let r = index.rows_of(k, rows);
        let raw = (r.end - r.start) as usize * layout.row_bytes;
        let want = compress::filtered_len(raw, layout.unit, b.filter) as u64;
        let head = &src[b.offset as usize..b.end() as usize];
        if !matches!(zstd::zstd_safe::get_frame_content_size(head), Ok(Some(n)) if n == want) {
            return Err(Error::Corrupt(format!(
                "{what}: block {k} is not a zstd frame declaring its {want} bytes"
            )));
        }
    }
    Ok(())
}

/// Encodes `rows` rows held in `raw` into blocks of `block_rows` rows at zstd `level`, in
/// parallel; the first is block `first` of its array. Blocks of one filter group (FORMAT.md 7)
/// take the filter picked on the first of them this call encodes, or, for the group of the
/// first block, `keep` when given.
pub fn encode_rows(
    raw: &[u8],
    rows: u64,
    layout: Layout,
    (level, block_rows): (i32, u64),
    first: usize,
    keep: Option<u8>,
) -> Result<Vec<Encoded>> {
    if layout.row_bytes == 0 {
        // Rows of zero bytes still fill blocks, each of them empty.
        let n = rows.div_ceil(block_rows);
        return (0..n)
            .map(|_| compress::encode(&[], layout, level))
            .collect();
    }
    // block_rows comes from metadata or the caller and may be huge: a product that does not
    // fit means one block of every row (a wrapped one could be 0, which par_chunks rejects).
    let block_bytes = (block_rows as usize).saturating_mul(layout.row_bytes);
    let per_group = compress::filter_group(block_bytes);
    let blocks: Vec<&[u8]> = raw.chunks(block_bytes).collect();
    let mut group = Vec::with_capacity(blocks.len()); // per block: its group's first here
    for i in 0..blocks.len() {
        let starts = i == 0 || (first + i).is_multiple_of(per_group);
        group.push(if starts { i } else { group[i - 1] });
    }
    let filters = each(blocks.len(), |i| match group[i] == i {
        true if i == 0 && keep.is_some() => Ok(keep),
        true => compress::pick_filter(blocks[i], layout, level).map(Some),
        false => Ok(None),
    })?;
    each(blocks.len(), |i| {
        compress::encode_as(blocks[i], layout, level, filters[group[i]])
    })
}

/// `f(i)` for `i` in `0..n`, in parallel when there is more than one: handing a single task
/// to the thread pool costs two thread wake-ups, which a small append would notice.
pub fn each<T: Send>(n: usize, f: impl Fn(usize) -> Result<T> + Sync + Send) -> Result<Vec<T>> {
    match n {
        0 | 1 => (0..n).map(f).collect(),
        _ => (0..n).into_par_iter().map(f).collect(),
    }
}

/// Writes encoded blocks one after another from byte `at` of `file` (already positioned
/// there) and returns their records.
pub fn write(file: &mut File, at: u64, blocks: Vec<Encoded>) -> Result<Vec<Record>> {
    let mut out = std::io::BufWriter::with_capacity(1 << 22, file);
    let mut offset = at;
    let mut records = Vec::with_capacity(blocks.len());
    for b in blocks {
        out.write_all(&b.bytes)?;
        records.push(Record { offset, ..b.record });
        offset += b.record.size;
    }
    out.flush()?;
    Ok(records)
}

/// A decoded block kept for the next read: its number and raw bytes.
pub type LastBlock = Mutex<Option<(usize, Arc<Vec<u8>>)>>;

/// Reads rows of one compressed array out of its mapped data file.
pub struct Reader<'a> {
    pub src: &'a [u8],
    pub index: &'a Compressed,
    pub layout: Layout,
    /// Physical rows of the array.
    pub rows: u64,
    pub what: &'a str,
    /// The last block decoded through this view: streaming and slicing read many rows of
    /// one block in a row, and blocks never change once written.
    pub last: &'a LastBlock,
}

impl Reader<'_> {
    /// The raw bytes of block `k`.
    pub fn block(&self, k: usize) -> Result<Arc<Vec<u8>>> {
        if let Some((last, raw)) = &*self.last.lock().unwrap_or_else(|p| p.into_inner()) {
            if *last == k {
                return Ok(raw.clone());
            }
        }
        let rec = &self.index.blocks[k];
        let range = self.index.rows_of(k, self.rows);
        let raw_len = (range.end - range.start) as usize * self.layout.row_bytes;
        let raw = Arc::new(compress::decode(
            self.stored(k),
            rec,
            self.layout,
            raw_len,
            self.what,
        )?);
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((k, raw.clone()));
        Ok(raw)
    }

    /// The stored bytes of block `k` (check_index checked that they lie in the file).
    fn stored(&self, k: usize) -> &[u8] {
        let rec = &self.index.blocks[k];
        &self.src[rec.offset as usize..rec.end() as usize]
    }

    /// Copies physical rows `rows` (any order) into `out`, decoding each block once.
    pub fn gather(&self, rows: &[u64], out: &mut [u8]) -> Result<()> {
        let (row, br) = (self.layout.row_bytes, self.index.block_rows);
        if row == 0 || rows.is_empty() {
            return Ok(());
        }
        let mut needed: Vec<usize> = rows.iter().map(|&p| (p / br) as usize).collect();
        needed.sort_unstable();
        needed.dedup();
        let decoded: Vec<Arc<Vec<u8>>> = needed
            .par_iter()
            .map(|&k| self.block(k))
            .collect::<Result<_>>()?;
        for (o, &p) in out.chunks_exact_mut(row).zip(rows) {
            let k = (p / br) as usize;
            let at = (p - k as u64 * br) as usize * row;
            let slot = needed.binary_search(&k).expect("every block was decoded");
            o.copy_from_slice(&decoded[slot][at..at + row]);
        }
        Ok(())
    }

    /// Copies runs of physical rows, `(first, n)` in order, into consecutive rows of `out`,
    /// one parallel task per block.
    pub fn read_runs(&self, runs: &[(u64, u64)], out: &mut [u8]) -> Result<()> {
        let (row, br) = (self.layout.row_bytes, self.index.block_rows);
        if row == 0 {
            return Ok(());
        }
        // Split the runs at block edges and group the pieces by block: each group fills a
        // contiguous stretch of `out`, since runs ascend.
        let mut groups: Vec<(usize, Vec<(u64, u64)>)> = Vec::new();
        for &(first, n) in runs {
            let mut p = first;
            while p < first + n {
                let k = (p / br) as usize;
                let take = (k as u64 + 1).saturating_mul(br).min(first + n) - p;
                match groups.last_mut() {
                    Some((last, pieces)) if *last == k => pieces.push((p, take)),
                    _ => groups.push((k, vec![(p, take)])),
                }
                p += take;
            }
        }
        let mut tasks = Vec::with_capacity(groups.len());
        let mut rest = out;
        for (k, pieces) in groups {
            let len = pieces.iter().map(|&(_, n)| n as usize).sum::<usize>() * row;
            let (here, tail) = rest.split_at_mut(len);
            tasks.push((k, pieces, here));
            rest = tail;
        }
        tasks.into_par_iter().try_for_each(|(k, pieces, here)| {
            let range = self.index.rows_of(k, self.rows);
            if pieces[..] == [(range.start, range.end - range.start)] {
                // The whole block: decoded straight into the output, with no copy.
                let rec = &self.index.blocks[k];
                return compress::decode_into(self.stored(k), rec, self.layout, here, self.what);
            }
            let block = self.block(k)?;
            let base = k as u64 * br;
            let mut at = 0;
            for (p, n) in pieces {
                let from = (p - base) as usize * row;
                let len = n as usize * row;
                here[at..at + len].copy_from_slice(&block[from..from + len]);
                at += len;
            }
            Ok(())
        })
    }
}
