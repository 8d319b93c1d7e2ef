//! Compressed arrays (FORMAT.md 7): the block index, the filters, and encoding and decoding
//! of one block.

use std::borrow::Cow;
use std::cell::RefCell;

use super::error::{Error, Result};
#[cfg(target_arch = "x86_64")]
use super::transpose::{
    bitshuffle as sse2_bitshuffle, shuffle as sse2_shuffle, unbitshuffle as sse2_unbitshuffle,
    unshuffle as sse2_unshuffle,
};

pub const CODEC: &str = "zstd";
/// Raw bytes a default block holds, about: a read decodes whole blocks, so a gather of a few
/// rows costs a block each.
pub const DEFAULT_BLOCK_BYTES: usize = 1 << 16;
/// Raw bytes of the sample each candidate filter is tried on.
const SAMPLE_BYTES: usize = 1 << 14;
/// Raw bytes of the blocks that share one filter, picked on the first one's sample: trying
/// every candidate on each small block would cost more than compressing it.
const FILTER_GROUP_BYTES: usize = 1 << 20;
const RECORD: usize = 24;

pub const STORED_RAW: u8 = 0;
pub const ZSTD: u8 = 1;
pub const NO_FILTER: u8 = 0;
pub const SHUFFLE: u8 = 1;
pub const DELTA_SHUFFLE: u8 = 2;
pub const BITSHUFFLE: u8 = 3;
pub const DELTA_BITSHUFFLE: u8 = 4;
pub const DECIMAL: u8 = 5;
pub const GCD: u8 = 6;
pub const FILTER_NAMES: [&str; 7] = [
    "none",
    "shuffle",
    "delta+shuffle",
    "bitshuffle",
    "delta+bitshuffle",
    "decimal",
    "gcd",
];
/// The decimal filter's most decimal places, and its scales (exact in float64).
const MAX_DECIMALS: u8 = 9;
const POW10: [f64; 10] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];

/// Where one block lives and how to read it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub offset: u64,
    pub size: u64,
    pub crc32: u32,
    pub codec: u8,
    pub filter: u8,
}

impl Record {
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.size)
    }
}

pub fn pack(records: &[Record]) -> Vec<u8> {
    let mut out = Vec::with_capacity(records.len() * RECORD);
    for r in records {
        out.extend_from_slice(&r.offset.to_le_bytes());
        out.extend_from_slice(&r.size.to_le_bytes());
        out.extend_from_slice(&r.crc32.to_le_bytes());
        out.extend_from_slice(&[r.codec, r.filter, 0, 0]);
    }
    out
}

/// Parses a block index; None when it is malformed.
pub fn unpack(bytes: &[u8]) -> Option<Vec<Record>> {
    if !bytes.len().is_multiple_of(RECORD) {
        return None;
    }
    bytes
        .chunks_exact(RECORD)
        .map(|c| {
            let r = Record {
                offset: u64::from_le_bytes(c[0..8].try_into().unwrap()),
                size: u64::from_le_bytes(c[8..16].try_into().unwrap()),
                crc32: u32::from_le_bytes(c[16..20].try_into().unwrap()),
                codec: c[20],
                filter: c[21],
            };
            (r.codec <= ZSTD && r.filter <= GCD).then_some(r)
        })
        .collect()
}

macro_rules! by_unit {
    (bytes $unit:expr, $f:ident, $($arg:expr),*) => {
        match $unit {
            1 => $f::<1>($($arg),*),
            2 => $f::<2>($($arg),*),
            4 => $f::<4>($($arg),*),
            _ => $f::<8>($($arg),*),
        }
    };
    ($unit:expr, $f:ident, $($arg:expr),*) => {
        match $unit {
            1 => $f::<u8, 1>($($arg),*),
            2 => $f::<u16, 2>($($arg),*),
            4 => $f::<u32, 4>($($arg),*),
            _ => $f::<u64, 8>($($arg),*),
        }
    };
}

/// The shape of a block's bytes: `rows x width` units of `unit` bytes.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub row_bytes: usize,
    pub unit: usize,
}

impl Layout {
    /// Units are the itemsize, or half of it for complex dtypes (their parts are floats).
    pub fn new(dtype: &str, itemsize: usize, row_bytes: usize) -> Self {
        let unit = if dtype.starts_with("<c") {
            itemsize / 2
        } else {
            itemsize
        };
        Layout { row_bytes, unit }
    }

    pub fn default_block_rows(&self) -> u64 {
        (DEFAULT_BLOCK_BYTES / self.row_bytes.max(1)).max(1) as u64
    }
}

/// A block ready to be written: its stored bytes and its record (offset still to be set).
pub struct Encoded {
    pub bytes: Vec<u8>,
    pub record: Record,
}

/// Encodes one block: picks the filter on a sample, compresses, and stores the raw bytes
/// instead when compression does not make them smaller.
pub fn encode(raw: &[u8], layout: Layout, level: i32) -> Result<Encoded> {
    encode_as(raw, layout, level, None)
}

/// Encodes one block with `filter`, or, with None, the filter that compresses a sample best.
pub fn encode_as(raw: &[u8], layout: Layout, level: i32, filter: Option<u8>) -> Result<Encoded> {
    let crc32 = crc32fast::hash(raw);
    let filter = match filter {
        Some(f) => f,
        None => pick_filter(raw, layout, level)?,
    };
    // A group's decimal (gcd) filter does not fit a block whose values are not such decimals
    // (share no divisor): it takes delta+bitshuffle (bitshuffle) instead (FORMAT.md 7).
    let (filter, filtered) = match filter {
        DECIMAL => match apply_decimal(raw, layout) {
            Some(f) => (DECIMAL, Cow::Owned(f)),
            None => (DELTA_BITSHUFFLE, apply(raw, layout, DELTA_BITSHUFFLE)),
        },
        GCD => match apply_gcd(raw, layout) {
            Some(f) => (GCD, Cow::Owned(f)),
            None => (BITSHUFFLE, apply(raw, layout, BITSHUFFLE)),
        },
        f => (f, apply(raw, layout, f)),
    };
    let compressed = compress(&filtered, level, layout.unit, filter)?;
    if compressed.len() >= raw.len() {
        return Ok(stored_raw(raw.to_vec(), crc32));
    }
    let size = compressed.len() as u64;
    Ok(Encoded {
        bytes: compressed,
        record: Record {
            offset: 0,
            size,
            crc32,
            codec: ZSTD,
            filter,
        },
    })
}

/// A block stored as its raw bytes (codec 0, filter 0), of CRC-32 `crc32`.
pub fn stored_raw(raw: Vec<u8>, crc32: u32) -> Encoded {
    let record = Record {
        offset: 0,
        size: raw.len() as u64,
        crc32,
        codec: STORED_RAW,
        filter: NO_FILTER,
    };
    Encoded { bytes: raw, record }
}

/// How many consecutive blocks of `block_bytes` bytes one encoding call gives the filter
/// picked for the first of them.
pub fn filter_group(block_bytes: usize) -> usize {
    (FILTER_GROUP_BYTES / block_bytes.max(1)).max(1)
}

/// The filter that compresses the block's first rows (about `SAMPLE_BYTES`) best.
pub fn pick_filter(raw: &[u8], layout: Layout, level: i32) -> Result<u8> {
    let rows = raw.len().checked_div(layout.row_bytes).unwrap_or(0);
    let sample_rows = rows.min((SAMPLE_BYTES / layout.row_bytes.max(1)).max(1));
    let sample = &raw[..sample_rows * layout.row_bytes];
    let mut best = (usize::MAX, NO_FILTER);
    for filter in [
        NO_FILTER,
        SHUFFLE,
        DELTA_SHUFFLE,
        BITSHUFFLE,
        DELTA_BITSHUFFLE,
    ] {
        let is_delta = matches!(filter, DELTA_SHUFFLE | DELTA_BITSHUFFLE);
        if (filter == SHUFFLE && layout.unit < 2) || (is_delta && sample_rows < 2) {
            continue;
        }
        let size = compress(&apply(sample, layout, filter), level, layout.unit, filter)?.len();
        if size < best.0 {
            best = (size, filter);
        }
    }
    // Decimals are floats: a divisor of their bit patterns is only a shift, which the bit
    // planes of their integers already make free.
    let decimal = apply_decimal(sample, layout);
    let gcd = if decimal.is_none() {
        apply_gcd(sample, layout)
    } else {
        None
    };
    for (filter, filtered) in [(DECIMAL, decimal), (GCD, gcd)] {
        if let Some(f) = filtered {
            let size = compress(&f, level, layout.unit, filter)?.len();
            if size < best.0 {
                best = (size, filter);
            }
        }
    }
    Ok(best.1)
}

/// Decodes one block of `raw_len` bytes from its stored bytes, checking everything.
pub fn decode(
    stored: &[u8],
    record: &Record,
    layout: Layout,
    raw_len: usize,
    what: &str,
) -> Result<Vec<u8>> {
    // The size comes from metadata that may lie: the frame must agree with it before the
    // buffer is allocated, and that fallibly (a failure is an error, not an abort).
    let want = check_frame(stored, record, layout, raw_len, what)?;
    let mut out = Vec::new();
    out.try_reserve_exact(raw_len)
        .map_err(|_| Error::Corrupt(format!("{what}: cannot allocate {raw_len} bytes")))?;
    out.resize(raw_len, 0);
    fill(stored, record, layout, &mut out, want, what)?;
    Ok(out)
}

/// Decodes one block straight into `out`, which holds exactly its raw bytes (a full load
/// decodes each block into the array it returns), checking everything.
pub fn decode_into(
    stored: &[u8],
    record: &Record,
    layout: Layout,
    out: &mut [u8],
    what: &str,
) -> Result<()> {
    let want = check_frame(stored, record, layout, out.len(), what)?;
    fill(stored, record, layout, out, want, what)
}

/// `decode_into` once `check_frame` has passed and given the frame's size, `want`.
fn fill(
    stored: &[u8],
    record: &Record,
    layout: Layout,
    out: &mut [u8],
    want: usize,
    what: &str,
) -> Result<()> {
    let corrupt = |why: &str| Error::Corrupt(format!("{what}: {why}"));
    let bad_frame = |e: std::io::Error| corrupt(&format!("a block does not decompress ({e})"));
    match (record.codec, record.filter) {
        (STORED_RAW, _) => out.copy_from_slice(stored),
        (_, NO_FILTER) => {
            if decompress_to(stored, out).map_err(bad_frame)? != want {
                return Err(corrupt("a block decompresses to the wrong size"));
            }
        }
        (_, filter) => SCRATCH.with(|s| {
            let mut filtered = s.borrow_mut();
            filtered.clear();
            filtered
                .try_reserve_exact(want)
                .map_err(|_| corrupt(&format!("cannot allocate {want} bytes")))?;
            decompress_to(stored, &mut *filtered).map_err(bad_frame)?;
            if filtered.len() != want {
                return Err(corrupt("a block decompresses to the wrong size"));
            }
            if filter == DECIMAL && filtered[0] > MAX_DECIMALS {
                return Err(corrupt("a decimal block claims more than 9 decimal places"));
            }
            if filter == GCD && by_unit!(bytes layout.unit, gcd_of, &filtered).is_none() {
                return Err(corrupt("a gcd block's divisor is below 2 or too large"));
            }
            undo(&filtered, layout, filter, out);
            if filtered.capacity() > SCRATCH_KEPT {
                *filtered = Vec::new();
            }
            Ok(())
        })?,
    }
    if crc32fast::hash(out) != record.crc32 {
        return Err(corrupt("a block fails its CRC-32 check"));
    }
    Ok(())
}

/// Checks what a block's record and the header of its frame say against the `raw_len` bytes
/// it must decode to; returns the frame's (filtered) size.
fn check_frame(
    stored: &[u8],
    record: &Record,
    layout: Layout,
    raw_len: usize,
    what: &str,
) -> Result<usize> {
    let corrupt = |why: &str| Error::Corrupt(format!("{what}: {why}"));
    if record.codec == STORED_RAW {
        return match stored.len() == raw_len {
            true => Ok(raw_len),
            false => Err(corrupt("a raw block has the wrong size")),
        };
    }
    let want = filtered_len(raw_len, layout.unit, record.filter);
    // A damaged header could claim any size: check it before anything is allocated. The
    // frame must declare its size (FORMAT.md 7), or the buffer would be sized from the
    // metadata alone.
    match zstd::zstd_safe::get_frame_content_size(stored) {
        Ok(Some(n)) if n == want as u64 => {}
        Ok(Some(n)) => {
            return Err(corrupt(&format!(
                "a block's frame claims {n} bytes, not {want}"
            )))
        }
        Ok(None) => return Err(corrupt("a block's frame does not declare its size")),
        Err(_) => return Err(corrupt("a block is not a zstd frame")),
    }
    if record.filter == DECIMAL && layout.unit != 8 {
        return Err(corrupt(
            "a block of units other than 8 bytes has the decimal filter",
        ));
    }
    Ok(want)
}

/// A thread's buffer for the filtered bytes of the blocks it decodes, kept between blocks
/// unless a block of more than this many bytes grew it.
const SCRATCH_KEPT: usize = 4 << 20;

thread_local! {
    // zstd contexts hold megabytes of tables: one per thread, reused, instead of one per block.
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// zstd's shortest match in the byte-position runs. Matches shorter than this between bytes of
/// one position are mostly chance (a mantissa byte's noise): they cost more than the literals
/// they replace, and looking for them is most of the work (FORMAT.md 7).
const RUN_MIN_MATCH: u32 = 7;

/// The zstd level of the byte-position runs: two below the array's (clamped to zstd's range
/// first), at least 1; levels of 1 and below as they are. At the default 3 they are compressed
/// at 1: zstd's fast strategy finds the same few long matches (the ratios of every dataset of
/// bench_compress but one stay the same, volumes' 0.4% lower) at a fraction of the search.
fn run_level(level: i32) -> i32 {
    match level > 1 {
        true => (level.min(zstd::zstd_safe::max_c_level()) - 2).max(1),
        false => level,
    }
}

/// Compresses a block's filtered bytes at `level` into one zstd frame that declares its size
/// (FORMAT.md 7). After a byte shuffle or the gcd filter, the bytes of each of the `unit` byte
/// positions follow one another (after gcd's divisor), and each gets a zstd block of its own (a
/// flush ends one), so each has its own entropy tables: an exponent byte and a random mantissa
/// byte share none. (After a bitshuffle it measured no better: its planes decode slower.)
fn compress(data: &[u8], level: i32, unit: usize, filter: u8) -> std::io::Result<Vec<u8>> {
    let (parts, prefix) = match filter {
        SHUFFLE | DELTA_SHUFFLE => (unit, 0),
        GCD => (unit, unit),
        _ => (1, 0),
    };
    let part = (data.len() - prefix) / parts.max(1);
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().is_none_or(|(l, _)| *l != level) {
            *c = Some((level, zstd::bulk::Compressor::new(level)?));
        }
        let c = &mut c.as_mut().expect("set above").1;
        let split = parts >= 2 && part > 0;
        let err = |code| std::io::Error::other(zstd::zstd_safe::get_error_name(code));
        // 0: the level's own.
        let min_match = if split { RUN_MIN_MATCH } else { 0 };
        c.context_mut()
            .set_parameter(zstd::zstd_safe::CParameter::MinMatch(min_match))
            .map_err(err)?;
        let level = if split { run_level(level) } else { level };
        c.context_mut()
            .set_parameter(zstd::zstd_safe::CParameter::CompressionLevel(level))
            .map_err(err)?;
        if !split {
            return c.compress(data);
        }
        let cctx = c.context_mut();
        cctx.reset(zstd::zstd_safe::ResetDirective::SessionOnly)
            .map_err(err)?;
        cctx.set_pledged_src_size(Some(data.len() as u64))
            .map_err(err)?;
        let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(data.len()) + 8 * parts);
        for k in 0..parts {
            let from = if k == 0 { 0 } else { prefix + k * part };
            let to = if k + 1 == parts {
                data.len()
            } else {
                prefix + (k + 1) * part
            };
            let end = match k + 1 == parts {
                true => zstd::zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_end,
                false => zstd::zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_flush,
            };
            let mut input = zstd::zstd_safe::InBuffer::around(&data[from..to]);
            loop {
                if out.capacity() - out.len() < 1024 {
                    out.reserve(1 << 16);
                }
                // The vector's length follows what zstd writes.
                let pos = out.len();
                let mut output = zstd::zstd_safe::OutBuffer::around_pos(&mut out, pos);
                let left = cctx
                    .compress_stream2(&mut output, &mut input, end)
                    .map_err(err)?;
                if left == 0 && input.pos() == to - from {
                    break;
                }
            }
        }
        Ok(out)
    })
}

/// Decompresses one frame into `out` (a slice, or a vector's spare capacity), which must have
/// room for all of it; returns how many bytes it wrote.
fn decompress_to<C: zstd::zstd_safe::WriteBuf + ?Sized>(
    data: &[u8],
    out: &mut C,
) -> std::io::Result<usize> {
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new()?);
        }
        d.as_mut()
            .expect("set above")
            .decompress_to_buffer(data, out)
    })
}

/// Bytes a filter turns `raw_len` bytes into: bit planes round up to whole bytes.
pub fn filtered_len(raw_len: usize, unit: usize, filter: u8) -> usize {
    match filter {
        BITSHUFFLE | DELTA_BITSHUFFLE => 8 * unit * (raw_len / unit.max(1)).div_ceil(8),
        // Its decimal places, then the integers' delta+bitshuffle.
        DECIMAL => 1 + 8 * unit * (raw_len / unit.max(1)).div_ceil(8),
        // Its divisor (one unit), then the quotients' bitshuffle.
        GCD => unit + 8 * unit * (raw_len / unit.max(1)).div_ceil(8),
        _ => raw_len,
    }
}

fn apply(raw: &[u8], layout: Layout, filter: u8) -> Cow<'_, [u8]> {
    let src: Cow<[u8]> = if matches!(filter, DELTA_SHUFFLE | DELTA_BITSHUFFLE) {
        let mut d = raw.to_vec();
        delta(&mut d, layout);
        Cow::Owned(d)
    } else {
        Cow::Borrowed(raw)
    };
    match filter {
        NO_FILTER => src,
        SHUFFLE | DELTA_SHUFFLE => Cow::Owned(shuffle(&src, layout.unit)),
        _ => Cow::Owned(bitshuffle(&src, layout.unit)),
    }
}

/// The decimal filter (FORMAT.md 7): float64 units `x` that all give back their bits as
/// `v / 10^d`, where `v` is the integer `x * 10^d` (at most 2^53 in size), for the smallest
/// such d up to 9, become those integers (int64), then delta+bitshuffle; the output starts
/// with d. None when the units are not such decimals (or not 8 bytes).
fn apply_decimal(raw: &[u8], layout: Layout) -> Option<Vec<u8>> {
    if layout.unit != 8 {
        return None;
    }
    let units = || {
        raw.chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
    };
    let d = (0..=MAX_DECIMALS).find(|&d| {
        let s = POW10[d as usize];
        units().all(|x| {
            let p = x * s;
            // NaN and the infinities fail the first test, -0.0 the last (its integer is 0).
            // Below 2^53, `p` is an integer when its i64 converts back to it (two SSE2
            // conversions, where `trunc` would call libm on baseline x86_64).
            p.abs() <= 9_007_199_254_740_992.0
                && (p as i64) as f64 == p
                && ((p as i64) as f64 / s).to_bits() == x.to_bits()
        })
    })?;
    let s = POW10[d as usize];
    let mut ints: Vec<u8> = units()
        .flat_map(|x| ((x * s) as i64).to_le_bytes())
        .collect();
    delta(&mut ints, layout);
    let mut out = Vec::with_capacity(filtered_len(raw.len(), 8, DECIMAL));
    out.push(d);
    out.extend_from_slice(&bitshuffle(&ints, 8));
    Some(out)
}

/// The gcd filter (FORMAT.md 7): units read as signed integers whose magnitudes share a
/// divisor `g` of at least 2 (the greatest) become their quotients, bit-shuffled, after `g`
/// as one unit. None when they share none (or only one too large for a positive unit).
fn apply_gcd(raw: &[u8], layout: Layout) -> Option<Vec<u8>> {
    by_unit!(bytes layout.unit, gcd_units, raw)
}

fn gcd_units<const U: usize>(raw: &[u8]) -> Option<Vec<u8>> {
    let mut d: Option<Divisor> = None;
    for chunk in raw.chunks(GCD_CHUNK * U) {
        if d.as_ref().is_some_and(|d| d.divides_all::<U>(chunk)) {
            continue;
        }
        for c in chunk.chunks_exact(U) {
            let m = signed::<U>(c).unsigned_abs();
            match &d {
                Some(d) if d.divides(m) => {}
                Some(old) => d = Some(Divisor::new(gcd(m, old.g)).filter(|d| d.g > 1)?),
                None if m == 0 => {}
                None => d = Divisor::new(m),
            }
        }
    }
    let d = d.filter(|d| d.g > 1 && d.g < 1 << (8 * U - 1))?;
    let mut q = vec![0u8; raw.len()];
    d.divide_all::<U>(raw, &mut q);
    let mut out = Vec::with_capacity(filtered_len(raw.len(), U, GCD));
    out.extend_from_slice(&d.g.to_le_bytes()[..U]);
    out.extend_from_slice(&bitshuffle(&q, U));
    Some(out)
}

/// Units the gcd filter checks at a time against the divisor so far, without a branch per
/// unit; a lot that fails is looked at unit by unit.
const GCD_CHUNK: usize = 1024;

/// The divisor a gcd block starts with, when it is one the filter can have written.
fn gcd_of<const U: usize>(filtered: &[u8]) -> Option<u64> {
    let mut g = [0u8; 8];
    g[..U].copy_from_slice(filtered.get(..U)?);
    let g = u64::from_le_bytes(g);
    (g > 1 && g < 1 << (8 * U - 1)).then_some(g)
}

/// Unit `c` (U little-endian bytes) as a signed integer.
fn signed<const U: usize>(c: &[u8]) -> i64 {
    let mut b = [0u8; 8];
    b[..U].copy_from_slice(c);
    let shift = 64 - 8 * U as u32;
    (i64::from_le_bytes(b) << shift) >> shift
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// `g = m * 2^s` with `m` odd: exact division by `g` is a shift and a multiplication by the
/// inverse of `m` modulo 2^64, and so is the test that `g` divides (no hardware division).
struct Divisor {
    g: u64,
    s: u32,
    inv: u64,
    max: u64,
}

impl Divisor {
    fn new(g: u64) -> Option<Self> {
        if g == 0 {
            return None;
        }
        let s = g.trailing_zeros();
        let m = g >> s;
        // Newton's iteration doubles the correct low bits: 3 (any odd m is its own inverse
        // modulo 8), then 6, 12, 24, 48, 96.
        let mut inv = m;
        for _ in 0..5 {
            inv = inv.wrapping_mul(2u64.wrapping_sub(m.wrapping_mul(inv)));
        }
        Some(Divisor {
            g,
            s,
            inv,
            max: u64::MAX / m,
        })
    }

    fn divides(&self, x: u64) -> bool {
        x.trailing_zeros() >= self.s && (x >> self.s).wrapping_mul(self.inv) <= self.max
    }

    /// Whether `self` divides the magnitude of each `U`-byte unit of `units`.
    fn divides_all<const U: usize>(&self, units: &[u8]) -> bool {
        match U {
            8 => lanes64::divides_all::<U>(self, units),
            _ => lanes32::divides_all::<U>(self, units),
        }
    }

    /// The quotients by `self`, which divides each unit of `units`, into `out`.
    fn divide_all<const U: usize>(&self, units: &[u8], out: &mut [u8]) {
        match U {
            8 => lanes64::divide_all::<U>(self, units, out),
            _ => lanes32::divide_all::<U>(self, units, out),
        }
    }
}

/// The gcd filter's passes over every unit of a block, in the narrowest integers that hold a
/// unit: 32 bits for units of up to four bytes (SSE2 multiplies four of those at a time, and
/// no 64-bit ones). Arithmetic modulo 2^32 gives the same answers: `inv` reduced is `m`'s
/// inverse there too, and magnitudes and quotients fit.
macro_rules! gcd_lanes {
    ($module:ident, $s:ty, $u:ty) => {
        mod $module {
            use super::Divisor;

            const BITS: u32 = <$s>::BITS;

            /// Unit `c` (U little-endian bytes), sign-extended.
            #[inline(always)]
            fn load<const U: usize>(c: &[u8]) -> $s {
                let mut b = [0u8; BITS as usize / 8];
                b[..U].copy_from_slice(c);
                let shift = BITS - 8 * U as u32;
                (<$s>::from_le_bytes(b) << shift) >> shift
            }

            pub fn divides_all<const U: usize>(d: &Divisor, units: &[u8]) -> bool {
                let (mask, s) = (((1 as $u) << d.s) - 1, d.s);
                // Opaque, or LLVM turns `q > MAX / m` into an overflow test of `q * m`, a
                // scalar multiply per unit.
                let max = std::hint::black_box(<$u>::MAX / (d.g >> d.s) as $u);
                let inv = d.inv as $u;
                // An OR of what fails, not a test per unit: that way the loop vectorises.
                let fails = units.chunks_exact(U).fold(0, |fails, c| {
                    let v = load::<U>(c);
                    let sign = v >> (BITS - 1);
                    let x = (v ^ sign).wrapping_sub(sign) as $u; // |v|, even the most negative
                    fails | (x & mask) | ((x >> s).wrapping_mul(inv) > max) as $u
                });
                fails == 0
            }

            pub fn divide_all<const U: usize>(d: &Divisor, units: &[u8], out: &mut [u8]) {
                let (s, inv) = (d.s, d.inv as $s);
                for (c, o) in units.chunks_exact(U).zip(out.chunks_exact_mut(U)) {
                    o.copy_from_slice(&(load::<U>(c) >> s).wrapping_mul(inv).to_le_bytes()[..U]);
                }
            }

            /// Each unit of `units` times `g`, in place (modulo 2^(8U): a damaged block may
            /// overflow, and the CRC-32 then tells).
            pub fn multiply_all<const U: usize>(g: u64, units: &mut [u8]) {
                let g = g as $s;
                for c in units.chunks_exact_mut(U) {
                    let v = load::<U>(c).wrapping_mul(g);
                    c.copy_from_slice(&v.to_le_bytes()[..U]);
                }
            }
        }
    };
}

gcd_lanes!(lanes32, i32, u32);
gcd_lanes!(lanes64, i64, u64);

/// Undoes `filter` on `filtered` into `out` (the block's raw bytes). decode_into checked
/// what a damaged block could get wrong: the unit of a decimal block, its places (at most 9),
/// a gcd block's divisor.
fn undo(filtered: &[u8], layout: Layout, filter: u8, out: &mut [u8]) {
    match filter {
        NO_FILTER => out.copy_from_slice(filtered),
        SHUFFLE | DELTA_SHUFFLE => unshuffle_into(filtered, layout.unit, out),
        BITSHUFFLE | DELTA_BITSHUFFLE => unbitshuffle_into(filtered, layout.unit, out),
        DECIMAL => {
            let s = POW10[filtered[0] as usize];
            unbitshuffle_into(&filtered[1..], 8, out);
            undelta(out, layout);
            for c in out.chunks_exact_mut(8) {
                let v = i64::from_le_bytes(c.try_into().unwrap());
                c.copy_from_slice(&(v as f64 / s).to_le_bytes());
            }
        }
        _ => by_unit!(bytes layout.unit, ungcd, filtered, out),
    }
    if matches!(filter, DELTA_SHUFFLE | DELTA_BITSHUFFLE) {
        undelta(out, layout);
    }
}

fn ungcd<const U: usize>(filtered: &[u8], out: &mut [u8]) {
    let g = gcd_of::<U>(filtered).expect("decode_into checked it");
    unbitshuffle_into(&filtered[U..], U, out);
    match U {
        8 => lanes64::multiply_all::<U>(g, out),
        _ => lanes32::multiply_all::<U>(g, out),
    }
}

/// Byte `j` of unit `i` goes to `j * n + i` (n units in all).
fn shuffle(src: &[u8], unit: usize) -> Vec<u8> {
    if unit < 2 {
        return src.to_vec();
    }
    let n = src.len() / unit;
    let mut out = vec![0u8; src.len()];
    #[cfg(target_arch = "x86_64")]
    let done = by_unit!(bytes unit, sse2_shuffle, src, &mut out);
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    for (i, u) in src.chunks_exact(unit).enumerate().skip(done) {
        for (j, &b) in u.iter().enumerate() {
            out[j * n + i] = b;
        }
    }
    out
}

/// Undoes `shuffle` into `out`, as long as `src`.
fn unshuffle_into(src: &[u8], unit: usize, out: &mut [u8]) {
    if unit < 2 {
        return out.copy_from_slice(src);
    }
    let n = src.len() / unit;
    #[cfg(target_arch = "x86_64")]
    let done = by_unit!(bytes unit, sse2_unshuffle, src, out);
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    for (i, u) in out.chunks_exact_mut(unit).enumerate().skip(done) {
        for (j, b) in u.iter_mut().enumerate() {
            *b = src[j * n + i];
        }
    }
}

/// Transposes an 8x8 bit matrix: bit `c` of byte `r` becomes bit `r` of byte `c`.
fn transpose8(mut x: u64) -> u64 {
    let t = (x ^ (x >> 7)) & 0x00AA_00AA_00AA_00AA;
    x ^= t ^ (t << 7);
    let t = (x ^ (x >> 14)) & 0x0000_CCCC_0000_CCCC;
    x ^= t ^ (t << 14);
    let t = (x ^ (x >> 28)) & 0x0000_0000_F0F0_F0F0;
    x ^ t ^ (t << 28)
}

/// Bit plane `8j + b` holds bit `b` of byte `j` of every unit, eight units to a byte (unit
/// `i` in bit `i % 8` of byte `i / 8`); a last partial group of units is padded with zeros.
fn bitshuffle(src: &[u8], unit: usize) -> Vec<u8> {
    let plane = (src.len() / unit).div_ceil(8);
    let mut out = vec![0u8; 8 * unit * plane];
    #[cfg(target_arch = "x86_64")]
    let done = by_unit!(bytes unit, sse2_bitshuffle, src, &mut out, plane);
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    by_unit!(bytes unit, bitshuffle_units, src, &mut out, plane, done);
    out
}

/// Groups of eight units transposed at a time: planes are far apart in memory, so each tile
/// is gathered in a small buffer and copied out a cache line per plane.
const TILE: usize = 64;

/// Groups `from..` of `bitshuffle`.
fn bitshuffle_units<const U: usize>(src: &[u8], out: &mut [u8], plane: usize, from: usize) {
    let mut tile = [[0u8; TILE]; 64];
    let mut tail = [0u8; 64];
    for g0 in (from..plane).step_by(TILE) {
        let len = TILE.min(plane - g0);
        for (t, g) in (g0..g0 + len).enumerate() {
            let group = match src.get(g * 8 * U..(g + 1) * 8 * U) {
                Some(group) => group,
                None => {
                    // The last, partial group of units, padded with zero units.
                    let rest = &src[g * 8 * U..];
                    tail[..rest.len()].copy_from_slice(rest);
                    tail[rest.len()..].fill(0);
                    &tail[..8 * U]
                }
            };
            for j in 0..U {
                let mut x = 0u64;
                for r in 0..8 {
                    x |= (group[r * U + j] as u64) << (8 * r);
                }
                for (b, byte) in transpose8(x).to_le_bytes().into_iter().enumerate() {
                    tile[8 * j + b][t] = byte;
                }
            }
        }
        for (p, row) in tile.iter().take(8 * U).enumerate() {
            out[p * plane + g0..p * plane + g0 + len].copy_from_slice(&row[..len]);
        }
    }
}

/// Undoes `bitshuffle` into `out`, the units' bytes without the padding of the planes.
fn unbitshuffle_into(src: &[u8], unit: usize, out: &mut [u8]) {
    let plane = src.len() / (8 * unit);
    if out.len() != 8 * unit * plane {
        // A last partial group of units: its padding needs room.
        let mut padded = vec![0u8; 8 * unit * plane];
        unbitshuffle_into(src, unit, &mut padded);
        return out.copy_from_slice(&padded[..out.len()]);
    }
    #[cfg(target_arch = "x86_64")]
    let done = by_unit!(bytes unit, sse2_unbitshuffle, src, out, plane);
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    by_unit!(bytes unit, unbitshuffle_units, src, out, plane, done);
}

/// Groups `from..` of `unbitshuffle`.
fn unbitshuffle_units<const U: usize>(src: &[u8], out: &mut [u8], plane: usize, from: usize) {
    let mut tile = [[0u8; TILE]; 64];
    for g0 in (from..plane).step_by(TILE) {
        let len = TILE.min(plane - g0);
        for (p, row) in tile.iter_mut().take(8 * U).enumerate() {
            row[..len].copy_from_slice(&src[p * plane + g0..p * plane + g0 + len]);
        }
        for (t, group) in out[g0 * 8 * U..(g0 + len) * 8 * U]
            .chunks_exact_mut(8 * U)
            .enumerate()
        {
            for j in 0..U {
                let x = u64::from_le_bytes(std::array::from_fn(|b| tile[8 * j + b][t]));
                for (r, byte) in transpose8(x).to_le_bytes().into_iter().enumerate() {
                    group[r * U + j] = byte;
                }
            }
        }
    }
}

trait Word: Copy {
    fn load(b: &[u8]) -> Self;
    fn store(self, b: &mut [u8]);
    fn sub(self, o: Self) -> Self;
    fn add(self, o: Self) -> Self;
}

macro_rules! word {
    ($t:ty) => {
        impl Word for $t {
            fn load(b: &[u8]) -> Self {
                <$t>::from_le_bytes(b.try_into().unwrap())
            }
            fn store(self, b: &mut [u8]) {
                b.copy_from_slice(&self.to_le_bytes())
            }
            fn sub(self, o: Self) -> Self {
                self.wrapping_sub(o)
            }
            fn add(self, o: Self) -> Self {
                self.wrapping_add(o)
            }
        }
    };
}
word!(u8);
word!(u16);
word!(u32);
word!(u64);

/// Each unit minus the unit above it (previous row, same column), last row first.
fn delta(buf: &mut [u8], layout: Layout) {
    by_unit!(layout.unit, delta_words, buf, layout.row_bytes)
}

fn delta_words<W: Word, const U: usize>(buf: &mut [u8], row: usize) {
    let width = row / U;
    if width == 0 {
        return;
    }
    let words: Vec<W> = buf.chunks_exact(U).map(W::load).collect();
    for (i, c) in buf.chunks_exact_mut(U).enumerate().skip(width) {
        words[i].sub(words[i - width]).store(c);
    }
}

fn undelta(buf: &mut [u8], layout: Layout) {
    by_unit!(layout.unit, undelta_words, buf, layout.row_bytes)
}

fn undelta_words<W: Word, const U: usize>(buf: &mut [u8], row: usize) {
    let width = row / U;
    if width == 0 {
        return;
    }
    if width == 1 {
        // A running sum kept in a register: the loop then has no memory round trip.
        let mut acc: Option<W> = None;
        for c in buf.chunks_exact_mut(U) {
            let w = acc.map_or(W::load(c), |a| a.add(W::load(c)));
            w.store(c);
            acc = Some(w);
        }
        return;
    }
    let rows = buf.len() / row;
    for r in 1..rows {
        let (above, here) = buf[(r - 1) * row..(r + 1) * row].split_at_mut(row);
        for (h, a) in here.chunks_exact_mut(U).zip(above.chunks_exact(U)) {
            W::load(h).add(W::load(a)).store(h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::transpose::xorshift;

    #[test]
    fn filters_round_trip() {
        let raw: Vec<u8> = (0..4000u32)
            .flat_map(|i| (i * 37 + 5).to_le_bytes())
            .collect();
        for unit in [1, 2, 4, 8] {
            let layout = Layout {
                row_bytes: 16,
                unit,
            };
            for filter in 0..=DELTA_BITSHUFFLE {
                let f = apply(&raw, layout, filter).into_owned();
                assert_eq!(f.len(), filtered_len(raw.len(), unit, filter));
                let mut back = vec![0u8; raw.len()];
                undo(&f, layout, filter, &mut back);
                assert_eq!(back, raw);
            }
        }
    }

    #[test]
    fn bitshuffle_matches_its_definition() {
        let src: Vec<u8> = (0..22u32).map(|i| (i * 89 + 7) as u8).collect(); // 11 units of 2
        let out = bitshuffle(&src, 2);
        let plane = 2;
        assert_eq!(out.len(), 2 * 8 * plane);
        for i in 0..11 {
            for j in 0..2 {
                for b in 0..8 {
                    let want = (src[i * 2 + j] >> b) & 1;
                    assert_eq!((out[(8 * j + b) * plane + i / 8] >> (i % 8)) & 1, want);
                }
            }
        }
    }

    #[test]
    fn transposes_match_the_scalar_ones() {
        // Lengths around the 16-unit and 128-unit steps of the SSE2 code, whose tails the
        // scalar code does.
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        for unit in [1, 2, 4, 8] {
            for n in [
                0, 1, 7, 8, 15, 16, 17, 127, 128, 129, 255, 256, 1000, 1031, 4096,
            ] {
                let src: Vec<u8> = (0..n * unit).map(|_| next() as u8).collect();
                let planes = bitshuffle(&src, unit);
                let plane = planes.len() / (8 * unit);
                let mut scalar = vec![0u8; planes.len()];
                by_unit!(bytes unit, bitshuffle_units, &src, &mut scalar, plane, 0);
                assert_eq!(planes, scalar, "unit {unit}, {n} units");
                let n_units = src.len() / unit.max(1);
                let mut bytes = vec![0u8; src.len()];
                for (i, u) in src.chunks_exact(unit).enumerate() {
                    for (j, &b) in u.iter().enumerate() {
                        bytes[j * n_units + i] = b;
                    }
                }
                assert_eq!(
                    shuffle(&src, unit),
                    if unit < 2 { src.clone() } else { bytes }
                );
                let mut scalar = vec![0u8; planes.len()];
                by_unit!(bytes unit, unbitshuffle_units, &planes, &mut scalar, plane, 0);
                scalar.truncate(src.len());
                assert_eq!(scalar, src, "unit {unit}, {n} units");
                let mut back = vec![0u8; src.len()];
                unbitshuffle_into(&planes, unit, &mut back);
                assert_eq!(back, src);
                unshuffle_into(&shuffle(&src, unit), unit, &mut back);
                assert_eq!(back, src);
            }
        }
    }

    #[test]
    fn decimals_round_trip_and_others_are_refused() {
        let layout = Layout::new("<f8", 8, 8);
        let bytes = |v: &[f64]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
        // A random walk of cents, as prices are.
        let (mut next, mut cents) = (xorshift(0x9e37_79b9_7f4a_7c15), 10_000i64);
        let prices: Vec<f64> = (0..5000)
            .map(|_| {
                cents += (next() % 3) as i64 - 1;
                cents as f64 / 100.0
            })
            .collect();
        let raw = bytes(&prices);
        let enc = encode(&raw, layout, 3).unwrap();
        assert_eq!(enc.record.filter, DECIMAL);
        assert!(enc.bytes.len() * 20 < raw.len());
        let back = decode(&enc.bytes, &enc.record, layout, raw.len(), "t").unwrap();
        assert_eq!(back, raw);
        // Not decimals: -0.0 (its integer is 0), NaN, infinities, 0.1 + 0.2, over 2^53.
        for odd in [-0.0, f64::NAN, f64::INFINITY, 0.1 + 0.2, 2f64.powi(60)] {
            let mut v = prices.clone();
            v[17] = odd;
            assert!(apply_decimal(&bytes(&v), layout).is_none(), "{odd}");
            // Given filter 5 by its group, such a block takes delta+bitshuffle, exactly.
            let enc = encode_as(&bytes(&v), layout, 3, Some(DECIMAL)).unwrap();
            assert_eq!(enc.record.filter, DELTA_BITSHUFFLE);
            let back = decode(&enc.bytes, &enc.record, layout, v.len() * 8, "t").unwrap();
            assert_eq!(back, bytes(&v));
        }
        assert!(apply_decimal(&raw[..raw.len() / 2], Layout::new("<i4", 4, 8)).is_none());
        // More places than 9, or the filter on other units, is damage, not a read.
        let mut bad = apply_decimal(&raw, layout).unwrap();
        bad[0] = 10;
        let frame = compress(&bad, 3, 1, NO_FILTER).unwrap();
        let rec = Record {
            size: frame.len() as u64,
            ..enc.record
        };
        let rec = Record {
            filter: DECIMAL,
            codec: ZSTD,
            ..rec
        };
        assert!(decode(&frame, &rec, layout, raw.len(), "t").is_err());
        let four = Layout::new("<i4", 4, 4);
        assert!(decode(&frame, &rec, four, raw.len(), "t").is_err());
    }

    #[test]
    fn gcd_blocks_round_trip_and_others_are_refused() {
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
        for unit in [1usize, 2, 4, 8] {
            let layout = Layout::new("<i8", unit, unit);
            let bits = 8 * unit as u32;
            let min = i64::MIN >> (64 - bits);
            // Multiples of g, negative ones and the most negative unit among them.
            for g in [2i64, 3, 5, 1 << (bits - 3)] {
                let mut v: Vec<i64> = (0..3000).map(|_| ((next() % 7) as i64 - 3) * g).collect();
                v[7] = min / g * g;
                let raw: Vec<u8> = v
                    .iter()
                    .flat_map(|x| x.to_le_bytes()[..unit].to_vec())
                    .collect();
                let enc = encode_as(&raw, layout, 3, Some(GCD)).unwrap();
                assert_eq!(enc.record.filter, GCD, "unit {unit} g {g}");
                let back = decode(&enc.bytes, &enc.record, layout, raw.len(), "t").unwrap();
                assert_eq!(back, raw, "unit {unit} g {g}");
            }
            // No common divisor, all zeros, and only the most negative unit (whose divisor
            // does not fit a positive unit): bitshuffle instead, exactly.
            let odd: Vec<u8> = (0..3000u64)
                .flat_map(|i| (2 * i + 1).to_le_bytes()[..unit].to_vec())
                .collect();
            let mins: Vec<u8> = (0..3000)
                .flat_map(|i| ((i % 2) * min).to_le_bytes()[..unit].to_vec())
                .collect();
            for raw in [odd, vec![0u8; 3000 * unit], mins] {
                assert!(apply_gcd(&raw, layout).is_none());
                let enc = encode_as(&raw, layout, 3, Some(GCD)).unwrap();
                assert_ne!(enc.record.filter, GCD);
                let back = decode(&enc.bytes, &enc.record, layout, raw.len(), "t").unwrap();
                assert_eq!(back, raw);
            }
        }
        // The divisor shrinks in a later lot of units (6, then 2 from unit 2,100 on); the
        // quotients are those of the divisor found in the end, in every lot.
        for unit in [1usize, 2, 4, 8] {
            let layout = Layout::new("<i8", unit, unit);
            let mut v: Vec<i64> = (0..3000).map(|i| (i % 21 - 10) * 6).collect();
            v[2100] = -4;
            let raw: Vec<u8> = v
                .iter()
                .flat_map(|x| x.to_le_bytes()[..unit].to_vec())
                .collect();
            let f = apply_gcd(&raw, layout).unwrap();
            assert_eq!(f[..unit], 2u64.to_le_bytes()[..unit], "unit {unit}");
            let q: Vec<u8> = v
                .iter()
                .flat_map(|x| (x / 2).to_le_bytes()[..unit].to_vec())
                .collect();
            assert_eq!(f[unit..], bitshuffle(&q, unit), "unit {unit}");
        }
        // Volumes in lots of 100 pick it; a divisor below 2 is damage, not a read.
        let layout = Layout::new("<i4", 4, 4);
        let raw: Vec<u8> = (0..16384)
            .flat_map(|_| ((next() % 9) as i32 * 100).to_le_bytes())
            .collect();
        let enc = encode(&raw, layout, 3).unwrap();
        assert_eq!(enc.record.filter, GCD);
        for g in [0u32, 1, 1 << 31] {
            let mut bad = apply_gcd(&raw, layout).unwrap();
            bad[..4].copy_from_slice(&g.to_le_bytes());
            let frame = compress(&bad, 3, 1, NO_FILTER).unwrap();
            let rec = Record {
                size: frame.len() as u64,
                ..enc.record
            };
            assert!(decode(&frame, &rec, layout, raw.len(), "t").is_err());
        }
    }

    #[test]
    fn blocks_round_trip_and_detect_damage() {
        let layout = Layout::new("<i8", 8, 8);
        let raw: Vec<u8> = (0..10_000i64)
            .flat_map(|i| (1_700_000_000 + 3 * i).to_le_bytes())
            .collect();
        let enc = encode(&raw, layout, 3).unwrap();
        assert_eq!(enc.record.filter, DELTA_SHUFFLE);
        assert!(enc.bytes.len() < raw.len() / 10);
        assert_eq!(
            decode(&enc.bytes, &enc.record, layout, raw.len(), "t").unwrap(),
            raw
        );
        let mut bad = enc.bytes.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x40;
        assert!(decode(&bad, &enc.record, layout, raw.len(), "t").is_err());
    }

    #[test]
    fn incompressible_blocks_are_stored_raw() {
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
        let raw: Vec<u8> = (0..50_000).map(|_| next() as u8).collect();
        let enc = encode(&raw, Layout::new("<f4", 4, 400), 3).unwrap();
        assert_eq!(enc.record.codec, STORED_RAW);
        assert_eq!(enc.bytes, raw);
    }

    #[test]
    fn index_packs_and_rejects_garbage() {
        let r = Record {
            offset: 5,
            size: 9,
            crc32: 7,
            codec: ZSTD,
            filter: SHUFFLE,
        };
        assert_eq!(unpack(&pack(&[r, r])).unwrap(), [r, r]);
        assert!(unpack(&[0u8; 23]).is_none());
        let mut b = pack(&[r]);
        b[21] = 9;
        assert!(unpack(&b).is_none());
    }
}
