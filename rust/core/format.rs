//! The metadata file: its MessagePack schema, encoding and validation (FORMAT.md 2).

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use std::sync::Arc;

use super::blocks;
use super::compress::{self, Layout, Record};
use super::error::{Error, Result};
use super::naming;
use super::rows::RowMap;

pub const VERSION: u64 = 2;
const FORMAT: &str = "numpack";

/// dtype strings of the format and their item sizes.
const DTYPES: [(&str, usize); 14] = [
    ("|b1", 1),
    ("|i1", 1),
    ("<i2", 2),
    ("<i4", 4),
    ("<i8", 8),
    ("|u1", 1),
    ("<u2", 2),
    ("<u4", 4),
    ("<u8", 8),
    ("<f2", 2),
    ("<f4", 4),
    ("<f8", 8),
    ("<c8", 8),
    ("<c16", 16),
];

pub fn itemsize(dtype: &str) -> Option<usize> {
    DTYPES.iter().find(|(d, _)| *d == dtype).map(|(_, s)| *s)
}

/// The store's metadata in memory: the snapshot with the log applied (FORMAT.md 2, 6).
#[derive(Debug, Clone)]
pub struct Metadata {
    /// 1 for a store not yet upgraded (no log), else [`VERSION`].
    pub version: u64,
    pub generation: u64,
    pub next_file_id: u64,
    pub arrays: Vec<Entry>,
}

/// The snapshot file as MessagePack sees it; key order is the format's.
#[derive(Serialize, Deserialize)]
struct Snapshot {
    format: String,
    version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    generation: Option<u64>,
    next_file_id: u64,
    #[serde(deserialize_with = "array_of")]
    arrays: Vec<Wire>,
}

/// A MessagePack array only: serde would also take a bin (its bytes as a sequence), which the
/// format does not allow.
fn array_of<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<Wire>, D::Error> {
    struct Entries;
    impl<'de> serde::de::Visitor<'de> for Entries {
        type Value = Vec<Wire>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an array of entry maps")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> std::result::Result<Vec<Wire>, A::Error> {
            let mut out = Vec::new();
            while let Some(w) = seq.next_element()? {
                out.push(w);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(Entries)
}

/// An entry map (FORMAT.md 2), as stored in the snapshot and in a log `put`.
#[derive(Serialize, Deserialize)]
pub struct Wire {
    name: String,
    file: String,
    dtype: String,
    shape: Vec<u64>,
    deleted: ByteBuf,
    modified_us: i64,
    compression: rmpv::Value,
}

/// One array. Its large parts (dropped rows, block index) are shared, so cloning an entry, or
/// the metadata, costs what its names and shape cost.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub file: String,
    pub dtype: String,
    /// Physical shape: `shape[0]` counts dropped rows too.
    pub shape: Vec<u64>,
    /// The dropped rows.
    pub rows: Arc<RowMap>,
    pub modified_us: i64,
    pub compression: Compression,
}

#[derive(Debug, Clone)]
pub enum Compression {
    Raw,
    Zstd(Arc<Compressed>),
    /// A map this version cannot read: kept as it is, so it fails only its own array and a
    /// rewrite does not lose it; `why` says what is wrong with it.
    Unreadable {
        value: rmpv::Value,
        why: String,
    },
}

/// The block index of a compressed array.
#[derive(Debug, Clone)]
pub struct Compressed {
    pub level: i32,
    pub block_rows: u64,
    pub blocks: Vec<Record>,
    /// The end of the last stored byte any record covers: how long the data file must be.
    pub end: u64,
}

impl Compressed {
    pub fn new(level: i32, block_rows: u64, blocks: Vec<Record>) -> Self {
        let end = blocks.iter().map(Record::end).max().unwrap_or(0);
        Compressed {
            level,
            block_rows,
            blocks,
            end,
        }
    }

    /// Physical rows of block `k`, given the array's physical row count.
    pub fn rows_of(&self, k: usize, rows: u64) -> std::ops::Range<u64> {
        let start = k as u64 * self.block_rows;
        start..start.saturating_add(self.block_rows).min(rows)
    }

    pub fn stored_bytes(&self) -> u64 {
        // Sizes come from the metadata: a lying index must not overflow the sum.
        self.blocks
            .iter()
            .fold(0u64, |acc, b| acc.saturating_add(b.size))
    }

    fn to_value(&self) -> rmpv::Value {
        use rmpv::Value;
        Value::Map(vec![
            (Value::from("codec"), Value::from(compress::CODEC)),
            (Value::from("level"), Value::from(self.level)),
            (Value::from("block_rows"), Value::from(self.block_rows)),
            (
                Value::from("blocks"),
                Value::Binary(compress::pack(&self.blocks)),
            ),
        ])
    }

    /// Sets or appends block records (FORMAT.md 6, `update`): each new record must lie past
    /// every record before the update (blocks are only appended to the file) and past the
    /// ones before it in `blocks`; the first may instead grow a raw last block in place.
    pub fn set_blocks(&mut self, blocks: &[(u64, Record)]) -> std::result::Result<(), String> {
        let mut end = self.end;
        if let Some(&(k, r)) = blocks.first() {
            if let Some(old) = self.blocks.get(k as usize) {
                if grows_in_place(old, &r, self.end) {
                    end = old.offset;
                }
            }
        }
        for &(k, r) in blocks {
            if r.size > 0 && r.offset < end {
                return Err(format!("block {k} overlaps blocks written before it"));
            }
            if r.offset > i64::MAX as u64 || r.size > i64::MAX as u64 {
                return Err(format!("block {k} has an invalid record"));
            }
            match (k as usize).cmp(&self.blocks.len()) {
                std::cmp::Ordering::Less => self.blocks[k as usize] = r,
                std::cmp::Ordering::Equal => self.blocks.push(r),
                std::cmp::Ordering::Greater => return Err(format!("block {k} leaves a gap")),
            }
            end = end.max(r.end());
        }
        self.end = end;
        Ok(())
    }
}

/// Whether `new` is `old` grown in place: both stored raw at one offset, `new` no shorter,
/// and `old` ending where every record of the index ends (FORMAT.md 6, `update`).
fn grows_in_place(old: &Record, new: &Record, end: u64) -> bool {
    old.codec == compress::STORED_RAW
        && new.codec == compress::STORED_RAW
        && new.offset == old.offset
        && new.size >= old.size
        && old.end() == end
}

impl Wire {
    /// The entry map as a MessagePack value (for the log's `put`), keys in the format's order.
    pub fn to_value(&self) -> rmpv::Value {
        let bytes = rmp_serde::to_vec_named(self).expect("an entry always encodes");
        rmpv::decode::read_value(&mut bytes.as_slice()).expect("it decodes back")
    }
}

impl Metadata {
    pub fn empty() -> Self {
        Metadata {
            version: VERSION,
            generation: 1,
            next_file_id: 0,
            arrays: Vec::new(),
        }
    }

    /// The snapshot of this metadata, in version 2.
    pub fn encode(&self) -> Vec<u8> {
        let snapshot = Snapshot {
            format: FORMAT.into(),
            version: VERSION,
            generation: Some(self.generation),
            next_file_id: self.next_file_id,
            arrays: self.arrays.iter().map(Entry::to_wire).collect(),
        };
        rmp_serde::to_vec_named(&snapshot).expect("metadata always encodes")
    }

    /// Decodes and validates a snapshot (version 1 or 2); `what` names it in error messages.
    pub fn decode(bytes: &[u8], what: &str) -> Result<Self> {
        let corrupt =
            |e: String| Error::Corrupt(format!("{what}: not valid numpack metadata ({e})"));
        // A single map and nothing after it: bytes left over mean a damaged file.
        let mut de = rmp_serde::Deserializer::new(std::io::Cursor::new(bytes));
        let snap = Snapshot::deserialize(&mut de).map_err(|e| corrupt(e.to_string()))?;
        if de.position() != bytes.len() as u64 {
            return Err(corrupt(format!(
                "{} bytes after the metadata map",
                bytes.len() as u64 - de.position()
            )));
        }
        let bad = |m: String| Err(Error::Corrupt(format!("{what}: {m}")));
        if snap.format != FORMAT {
            return bad(format!("format is {:?}, not {FORMAT:?}", snap.format));
        }
        if snap.version > VERSION {
            return bad(format!(
                "format version {} is newer than this numpack supports ({VERSION}); upgrade numpack",
                snap.version
            ));
        }
        if snap.version < 1 {
            return bad(format!("format version {} is invalid", snap.version));
        }
        let generation = match (snap.version, snap.generation) {
            (1, _) => 1,
            (_, Some(g)) if (1..=i64::MAX as u64).contains(&g) => g,
            (_, g) => return bad(format!("generation {g:?} is invalid")),
        };
        if snap.next_file_id > i64::MAX as u64 {
            return bad(format!("next_file_id {} is too large", snap.next_file_id));
        }
        let mut names = std::collections::HashSet::new();
        let mut arrays = Vec::with_capacity(snap.arrays.len());
        for w in snap.arrays {
            if !names.insert(w.name.clone()) {
                return bad(format!("array {:?} is listed twice", w.name));
            }
            arrays.push(Entry::from_wire(w, what)?);
        }
        Ok(Metadata {
            version: snap.version,
            generation,
            next_file_id: snap.next_file_id,
            arrays,
        })
    }

    pub fn find(&self, name: &str) -> Option<&Entry> {
        self.arrays.iter().find(|e| e.name == name)
    }

    pub fn position(&self, name: &str) -> Option<usize> {
        self.arrays.iter().position(|e| e.name == name)
    }
}

impl Entry {
    pub fn new(name: &str, dtype: &str, shape: Vec<u64>, file_id: u64, now: i64) -> Self {
        Entry {
            name: name.into(),
            file: naming::data_file(name, file_id),
            dtype: dtype.into(),
            shape,
            rows: Default::default(),
            modified_us: now,
            compression: Compression::Raw,
        }
    }

    /// Validates an entry map (FORMAT.md 2, 7); `what` names the store.
    pub fn from_wire(w: Wire, what: &str) -> Result<Self> {
        let bad = |m: String| Err(Error::Corrupt(format!("{what}: {m}")));
        if w.name.is_empty() {
            return bad("an array has an empty name".into());
        }
        let Some(item) = itemsize(&w.dtype) else {
            return bad(format!(
                "array {:?} has unknown dtype {:?}",
                w.name, w.dtype
            ));
        };
        match w.file.strip_prefix(&naming::stem(&w.name)) {
            Some(rest)
                if rest.len() > 6
                    && rest.starts_with('.')
                    && rest.ends_with(".npkd")
                    && rest[1..rest.len() - 5].bytes().all(|b| b.is_ascii_digit()) => {}
            _ => return bad(format!("array {:?} names data file {:?}", w.name, w.file)),
        }
        if w.shape.is_empty() {
            return bad(format!("array {:?} has no dimensions", w.name));
        }
        if !shape_fits(&w.shape, item) {
            return bad(format!(
                "array {:?} has an impossible shape {:?}",
                w.name, w.shape
            ));
        }
        if !w.deleted.len().is_multiple_of(8) {
            return bad(format!("array {:?} has a torn dropped-row list", w.name));
        }
        let deleted: Vec<u64> = w
            .deleted
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        if deleted.iter().any(|&d| d >= w.shape[0]) || deleted.windows(2).any(|p| p[0] >= p[1]) {
            return bad(format!(
                "array {:?} has an invalid dropped-row list",
                w.name
            ));
        }
        let mut e = Entry {
            name: w.name,
            file: w.file,
            dtype: w.dtype,
            shape: w.shape,
            rows: Arc::new(RowMap::new(deleted.into_iter())),
            modified_us: w.modified_us,
            compression: Compression::Raw,
        };
        e.compression = e.parse_compression(w.compression, what);
        Ok(e)
    }

    pub fn to_wire(&self) -> Wire {
        let deleted: Vec<u8> = self.deleted_rows().flat_map(|r| r.to_le_bytes()).collect();
        Wire {
            name: self.name.clone(),
            file: self.file.clone(),
            dtype: self.dtype.clone(),
            shape: self.shape.clone(),
            deleted: ByteBuf::from(deleted),
            modified_us: self.modified_us,
            compression: match &self.compression {
                Compression::Raw => rmpv::Value::Nil,
                Compression::Zstd(c) => c.to_value(),
                Compression::Unreadable { value, .. } => value.clone(),
            },
        }
    }

    /// The compression map, checked against itself (FORMAT.md 7). A map that fails fails only
    /// this array, when it is read or written.
    fn parse_compression(&self, value: rmpv::Value, what: &str) -> Compression {
        match self.check_compression(&value, what) {
            Ok(None) => Compression::Raw,
            Ok(Some(c)) => Compression::Zstd(Arc::new(c)),
            Err(why) => Compression::Unreadable { value, why },
        }
    }

    fn check_compression(
        &self,
        value: &rmpv::Value,
        what: &str,
    ) -> std::result::Result<Option<Compressed>, String> {
        let map = match value {
            rmpv::Value::Nil => return Ok(None),
            rmpv::Value::Map(m) => m,
            _ => return Err("is not a map".into()),
        };
        let get = |key: &str| {
            map.iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v)
        };
        match get("codec").and_then(|v| v.as_str()) {
            Some(compress::CODEC) => {}
            Some(other) => return Err(format!("uses codec {other:?}")),
            None => return Err("names no codec".into()),
        }
        let level = get("level")
            .and_then(|v| v.as_i64())
            .and_then(|l| i32::try_from(l).ok());
        let block_rows = get("block_rows")
            .and_then(|v| v.as_u64())
            .filter(|&b| b > 0 && b <= i64::MAX as u64);
        let blocks = get("blocks")
            .and_then(|v| v.as_slice())
            .and_then(compress::unpack);
        let (Some(level), Some(block_rows), Some(blocks)) = (level, block_rows, blocks) else {
            return Err("has a malformed block index".into());
        };
        // Offsets and sizes are signed 64-bit in the OS (off_t), as the Python backend checks.
        if blocks
            .iter()
            .any(|b| b.offset > i64::MAX as u64 || b.size > i64::MAX as u64)
        {
            return Err("has an invalid block record".into());
        }
        if blocks.len() as u64 != self.shape[0].div_ceil(block_rows) {
            return Err("has the wrong number of blocks".into());
        }
        let c = Compressed::new(level, block_rows, blocks);
        let where_ = format!("{what} (array {:?})", self.name);
        blocks::check_index(&c, self.shape[0], self.row_bytes(), &where_)
            .map_err(|e| e.to_string())?;
        Ok(Some(c))
    }

    pub fn itemsize(&self) -> usize {
        itemsize(&self.dtype).expect("validated dtype")
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.shape[1..].iter().product::<u64>() as usize * self.itemsize()
    }

    pub fn physical_bytes(&self) -> u64 {
        self.shape[0] * self.row_bytes() as u64
    }

    pub fn deleted_rows(&self) -> impl Iterator<Item = u64> + '_ {
        self.rows.deleted()
    }

    /// Sets the dropped rows: ascending, unique physical rows.
    pub fn set_deleted(&mut self, rows: &[u64]) {
        self.rows = Arc::new(RowMap::new(rows.iter().copied()));
    }

    pub fn layout(&self) -> Layout {
        Layout::new(&self.dtype, self.itemsize(), self.row_bytes())
    }

    /// The block index of a compressed array, None for a raw one.
    pub fn compressed(&self) -> Result<Option<Arc<Compressed>>> {
        match &self.compression {
            Compression::Raw => Ok(None),
            Compression::Zstd(c) => Ok(Some(c.clone())),
            Compression::Unreadable { why, .. } => Err(Error::Corrupt(format!(
                "array {:?}: its compression {why}",
                self.name
            ))),
        }
    }

    pub fn set_compressed(&mut self, c: Compressed) {
        self.compression = Compression::Zstd(Arc::new(c));
    }

    /// How long the data file must be.
    pub fn file_bytes(&self) -> Result<u64> {
        Ok(match self.compressed()? {
            None => self.physical_bytes(),
            Some(c) => c.end,
        })
    }

    pub fn dropped(&self) -> u64 {
        self.rows.dropped() as u64
    }

    pub fn logical_shape(&self) -> Vec<u64> {
        let mut s = self.shape.clone();
        s[0] -= self.dropped();
        s
    }
}

/// Whether an array of `shape` fits in 2^63 - 1 bytes; zero dimensions are skipped (as NumPy
/// does): an array with no rows must still have rows that fit, or `row_bytes` overflows.
pub fn shape_fits(shape: &[u64], itemsize: usize) -> bool {
    shape
        .iter()
        .try_fold(itemsize as u64, |acc, &d| acc.checked_mul(d.max(1)))
        .is_some_and(|n| n <= i64::MAX as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Metadata {
        let mut m = Metadata::empty();
        let mut e = Entry::new("emb", "<f4", vec![4, 3], 0, 1);
        e.set_deleted(&[1, 3]);
        m.arrays.push(e);
        m.next_file_id = 1;
        m
    }

    #[test]
    fn round_trip() {
        let m = sample();
        let back = Metadata::decode(&m.encode(), "t").unwrap();
        assert_eq!(back.arrays[0].deleted_rows().collect::<Vec<_>>(), [1, 3]);
        assert_eq!(back.arrays[0].logical_shape(), [2, 3]);
    }

    #[test]
    fn garbage_and_truncation_are_corrupt() {
        let bytes = sample().encode();
        for cut in 0..bytes.len() {
            assert!(matches!(
                Metadata::decode(&bytes[..cut], "t"),
                Err(Error::Corrupt(_))
            ));
        }
        assert!(matches!(
            Metadata::decode(&[0u8; 64], "t"),
            Err(Error::Corrupt(_))
        ));
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(matches!(
            Metadata::decode(&trailing, "t"),
            Err(Error::Corrupt(_))
        ));
    }

    #[test]
    fn lying_entries_are_corrupt() {
        let mut m = sample();
        m.arrays[0].file = "../etc.0.npkd".into();
        assert!(Metadata::decode(&m.encode(), "t").is_err());
        let mut m = sample();
        m.arrays[0].shape = vec![u64::MAX, 2];
        assert!(Metadata::decode(&m.encode(), "t").is_err());
        let mut m = sample();
        m.arrays[0].set_deleted(&[3, 1]);
        assert!(Metadata::decode(&m.encode(), "t").is_err());
        let mut bytes = sample().encode();
        // The version is the second key: "version" then a positive fixint.
        let at = bytes.windows(7).position(|w| w == b"version").unwrap() + 7;
        bytes[at] = 3;
        assert!(Metadata::decode(&bytes, "t").is_err());
    }
}
