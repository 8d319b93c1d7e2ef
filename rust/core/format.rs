//! The metadata file: its MessagePack schema, encoding and validation (FORMAT.md 2).

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::compress::{self, Layout, Record};
use super::error::{Error, Result};
use super::naming;

pub const VERSION: u64 = 1;
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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Metadata {
    pub format: String,
    pub version: u64,
    pub next_file_id: u64,
    pub arrays: Vec<Entry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub name: String,
    pub file: String,
    pub dtype: String,
    /// Physical shape: `shape[0]` counts dropped rows too.
    pub shape: Vec<u64>,
    /// Physical indexes of dropped rows, ascending, as little-endian u64.
    pub deleted: ByteBuf,
    pub modified_us: i64,
    /// `nil`, or the map of a compressed array (FORMAT.md 7). Kept as a value, so a map this
    /// version cannot read fails only that array, and a rewrite does not lose it.
    pub compression: rmpv::Value,
}

/// The block index of a compressed array.
#[derive(Debug, Clone)]
pub struct Compressed {
    pub level: i32,
    pub block_rows: u64,
    pub blocks: Vec<Record>,
}

impl Compressed {
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
}

impl Metadata {
    pub fn empty() -> Self {
        Metadata {
            format: FORMAT.into(),
            version: VERSION,
            next_file_id: 0,
            arrays: Vec::new(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).expect("metadata always encodes")
    }

    /// Decodes and validates; `what` names the file in error messages.
    pub fn decode(bytes: &[u8], what: &str) -> Result<Self> {
        let corrupt =
            |e: String| Error::Corrupt(format!("{what}: not valid numpack metadata ({e})"));
        // A single map and nothing after it: bytes left over mean a damaged file.
        let mut de = rmp_serde::Deserializer::new(std::io::Cursor::new(bytes));
        let meta = Metadata::deserialize(&mut de).map_err(|e| corrupt(e.to_string()))?;
        if de.position() != bytes.len() as u64 {
            return Err(corrupt(format!(
                "{} bytes after the metadata map",
                bytes.len() as u64 - de.position()
            )));
        }
        meta.validate(what)?;
        Ok(meta)
    }

    fn validate(&self, what: &str) -> Result<()> {
        let bad = |m: String| Err(Error::Corrupt(format!("{what}: {m}")));
        if self.format != FORMAT {
            return bad(format!("format is {:?}, not {FORMAT:?}", self.format));
        }
        if self.version > VERSION {
            return bad(format!(
                "format version {} is newer than this numpack supports ({VERSION}); upgrade numpack",
                self.version
            ));
        }
        if self.next_file_id > i64::MAX as u64 {
            return bad(format!("next_file_id {} is too large", self.next_file_id));
        }
        let mut names = std::collections::HashSet::new();
        for e in &self.arrays {
            if !names.insert(e.name.as_str()) {
                return bad(format!("array {:?} is listed twice", e.name));
            }
            if e.name.is_empty() {
                return bad("an array has an empty name".into());
            }
            let Some(item) = itemsize(&e.dtype) else {
                return bad(format!(
                    "array {:?} has unknown dtype {:?}",
                    e.name, e.dtype
                ));
            };
            match e.file.strip_prefix(&naming::stem(&e.name)) {
                Some(rest)
                    if rest.len() > 6
                        && rest.starts_with('.')
                        && rest.ends_with(".npkd")
                        && rest[1..rest.len() - 5].bytes().all(|b| b.is_ascii_digit()) => {}
                _ => return bad(format!("array {:?} names data file {:?}", e.name, e.file)),
            }
            if e.shape.is_empty() {
                return bad(format!("array {:?} has no dimensions", e.name));
            }
            // Zero dimensions are skipped (as NumPy does): an array with no rows must still
            // have rows that fit, or `row_bytes` overflows and NumPy cannot make the array.
            let nbytes = e
                .shape
                .iter()
                .try_fold(item as u64, |acc, &d| acc.checked_mul(d.max(1)))
                .filter(|&n| n <= i64::MAX as u64);
            if nbytes.is_none() {
                return bad(format!(
                    "array {:?} has an impossible shape {:?}",
                    e.name, e.shape
                ));
            }
            if e.deleted.len() % 8 != 0 {
                return bad(format!("array {:?} has a torn dropped-row list", e.name));
            }
            let mut prev: Option<u64> = None;
            for d in e.deleted_rows() {
                if d >= e.shape[0] || prev.is_some_and(|p| p >= d) {
                    return bad(format!(
                        "array {:?} has an invalid dropped-row list",
                        e.name
                    ));
                }
                prev = Some(d);
            }
        }
        Ok(())
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
            deleted: ByteBuf::new(),
            modified_us: now,
            compression: rmpv::Value::Nil,
        }
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
        self.deleted
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
    }

    pub fn set_deleted(&mut self, rows: &[u64]) {
        self.deleted = ByteBuf::from(
            rows.iter()
                .flat_map(|r| r.to_le_bytes())
                .collect::<Vec<_>>(),
        );
    }

    pub fn layout(&self) -> Layout {
        Layout::new(&self.dtype, self.itemsize(), self.row_bytes())
    }

    /// The block index of a compressed array, None for a raw one.
    pub fn compressed(&self) -> Result<Option<Compressed>> {
        let map = match &self.compression {
            rmpv::Value::Nil => return Ok(None),
            rmpv::Value::Map(m) => m,
            _ => return Err(self.bad_compression("is not a map")),
        };
        let get = |key: &str| {
            map.iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v)
        };
        match get("codec").and_then(|v| v.as_str()) {
            Some(compress::CODEC) => {}
            Some(other) => return Err(self.bad_compression(&format!("uses codec {other:?}"))),
            None => return Err(self.bad_compression("names no codec")),
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
            return Err(self.bad_compression("has a malformed block index"));
        };
        // Offsets and sizes are signed 64-bit in the OS (off_t), as the Python backend checks.
        if blocks
            .iter()
            .any(|b| b.offset > i64::MAX as u64 || b.size > i64::MAX as u64)
        {
            return Err(self.bad_compression("has an invalid block record"));
        }
        if blocks.len() as u64 != self.shape[0].div_ceil(block_rows) {
            return Err(self.bad_compression("has the wrong number of blocks"));
        }
        Ok(Some(Compressed {
            level,
            block_rows,
            blocks,
        }))
    }

    fn bad_compression(&self, why: &str) -> Error {
        Error::Corrupt(format!("array {:?}: its compression {why}", self.name))
    }

    pub fn set_compressed(&mut self, c: &Compressed) {
        use rmpv::Value;
        self.compression = Value::Map(vec![
            (Value::from("codec"), Value::from(compress::CODEC)),
            (Value::from("level"), Value::from(c.level)),
            (Value::from("block_rows"), Value::from(c.block_rows)),
            (
                Value::from("blocks"),
                Value::Binary(compress::pack(&c.blocks)),
            ),
        ]);
    }

    /// How long the data file must be.
    pub fn file_bytes(&self) -> Result<u64> {
        Ok(match self.compressed()? {
            None => self.physical_bytes(),
            Some(c) => c.blocks.iter().map(Record::end).max().unwrap_or(0),
        })
    }

    pub fn dropped(&self) -> u64 {
        (self.deleted.len() / 8) as u64
    }

    pub fn logical_shape(&self) -> Vec<u64> {
        let mut s = self.shape.clone();
        s[0] -= self.dropped();
        s
    }
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
        let mut m = sample();
        m.version = 2;
        assert!(Metadata::decode(&m.encode(), "t").is_err());
    }
}
