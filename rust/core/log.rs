//! The commit log, `numpack.log` (FORMAT.md 6): its header, record framing, the records, and
//! applying commit records to the metadata.

use std::sync::Arc;

use rmpv::Value;

use super::compress::{self, Record as BlockRecord};
use super::error::{Error, Result};
use super::format::{itemsize, shape_fits, Compression, Entry, Metadata, Wire};
use super::naming;

pub const FILE: &str = "numpack.log";
const MAGIC: &[u8; 8] = b"NPKLOG02";
/// Bytes of the header: the magic and the generation.
pub const HEADER: u64 = 16;
/// Bytes before a record's payload: its length and CRC-32.
const FRAME: usize = 8;
/// Old row bytes one undo record holds at most (FORMAT.md 6).
pub const UNDO_BYTES: usize = 64 << 20;

pub fn header(generation: u64) -> [u8; HEADER as usize] {
    let mut h = [0u8; HEADER as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..].copy_from_slice(&generation.to_le_bytes());
    h
}

/// The generation of a log header; None when it is not one.
pub fn generation(bytes: &[u8]) -> Option<u64> {
    let h = bytes.get(..HEADER as usize)?;
    (&h[..8] == MAGIC).then(|| u64::from_le_bytes(h[8..].try_into().unwrap()))
}

/// One change to the metadata (FORMAT.md 6, "Commit").
#[derive(Debug, Clone)]
pub enum Op {
    Put(Entry),
    Drop(String),
    Update(Update),
}

#[derive(Debug, Clone, Default)]
pub struct Update {
    pub name: String,
    pub modified_us: i64,
    /// The new physical row count.
    pub rows: Option<u64>,
    /// Block records to set (below the index's length) or append (at it).
    pub blocks: Vec<(u64, BlockRecord)>,
    /// Physical rows newly dropped, ascending.
    pub deleted: Vec<u64>,
}

/// The old contents of rows of a raw data file, logged before they are overwritten in place.
#[derive(Debug, Clone)]
pub struct Undo {
    pub file: String,
    pub row_bytes: usize,
    pub rows: Vec<u64>,
    pub old: Vec<u8>,
}

pub enum Record {
    Commit { next_file_id: u64, ops: Vec<Op> },
    Undo(Undo),
}

/// Frames a payload: length, CRC-32, payload. Payloads of 4 GiB or more do not fit.
fn frame(payload: Vec<u8>) -> Result<Vec<u8>> {
    if payload.len() > u32::MAX as usize {
        return Err(Error::InvalidArgument(format!(
            "a log record of {} bytes is too large; make the call in smaller parts",
            payload.len()
        )));
    }
    let mut out = Vec::with_capacity(FRAME + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

fn pack(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, value).expect("writing to a Vec cannot fail");
    out
}

fn map(pairs: Vec<(&str, Value)>) -> Value {
    Value::Map(
        pairs
            .into_iter()
            .map(|(k, v)| (Value::from(k), v))
            .collect(),
    )
}

fn u64s(values: impl IntoIterator<Item = u64>) -> Value {
    Value::Binary(values.into_iter().flat_map(u64::to_le_bytes).collect())
}

/// A framed commit record.
pub fn commit(next_file_id: u64, ops: &[Op]) -> Result<Vec<u8>> {
    let ops = ops.iter().map(op_value).collect();
    frame(pack(&map(vec![
        ("t", Value::from("commit")),
        ("next_file_id", Value::from(next_file_id)),
        ("ops", Value::Array(ops)),
    ])))
}

/// Framed undo records of the old contents of `rows`, at most [`UNDO_BYTES`] of rows each.
pub fn undo(file: &str, row_bytes: usize, rows: &[u64], old: &[u8]) -> Result<Vec<u8>> {
    let per = (UNDO_BYTES / row_bytes.max(1)).max(1);
    let mut out = Vec::new();
    for (k, chunk) in rows.chunks(per).enumerate() {
        let start = k * per * row_bytes;
        let bytes = &old[start..start + chunk.len() * row_bytes];
        out.extend(frame(pack(&map(vec![
            ("t", Value::from("undo")),
            ("file", Value::from(file)),
            ("row_bytes", Value::from(row_bytes as u64)),
            ("rows", u64s(chunk.iter().copied())),
            ("old", Value::Binary(bytes.to_vec())),
        ])))?);
    }
    Ok(out)
}

fn op_value(op: &Op) -> Value {
    match op {
        Op::Put(e) => map(vec![
            ("op", Value::from("put")),
            ("entry", e.to_wire().to_value()),
        ]),
        Op::Drop(name) => map(vec![
            ("op", Value::from("drop")),
            ("name", Value::from(name.as_str())),
        ]),
        Op::Update(u) => {
            let mut pairs = vec![
                ("op", Value::from("update")),
                ("name", Value::from(u.name.as_str())),
                ("modified_us", Value::from(u.modified_us)),
            ];
            if let Some(rows) = u.rows {
                pairs.push(("rows", Value::from(rows)));
            }
            if !u.blocks.is_empty() {
                let mut bytes = Vec::with_capacity(u.blocks.len() * 32);
                for (k, r) in &u.blocks {
                    bytes.extend_from_slice(&k.to_le_bytes());
                    bytes.extend(compress::pack(std::slice::from_ref(r)));
                }
                pairs.push(("blocks", Value::Binary(bytes)));
            }
            if !u.deleted.is_empty() {
                pairs.push(("deleted", u64s(u.deleted.iter().copied())));
            }
            map(pairs)
        }
    }
}

/// The whole records at the start of `bytes` (the log after its header, or after a record),
/// each with the offset just past it; stops at the first torn one, or one of length 0
/// (FORMAT.md 6).
pub fn scan(bytes: &[u8]) -> Vec<(&[u8], usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(head) = bytes.get(at..at + FRAME) {
        let len = u32::from_le_bytes(head[..4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(head[4..].try_into().unwrap());
        // No record is empty: zeros are what a write lost in a power cut leaves.
        let Some(payload) = bytes.get(at + FRAME..at + FRAME + len).filter(|_| len > 0) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        at += FRAME + len;
        out.push((payload, at));
    }
    out
}

/// Decodes a whole record's payload; `what` names the log in error messages.
pub fn decode(payload: &[u8], what: &str) -> Result<Record> {
    let bad = |m: &str| Error::Corrupt(format!("{what}: a log record {m}"));
    let mut cursor = std::io::Cursor::new(payload);
    let value = rmpv::decode::read_value(&mut cursor).map_err(|_| bad("is not MessagePack"))?;
    if cursor.position() != payload.len() as u64 {
        return Err(bad("has bytes after its map"));
    }
    let fields = Fields::of(&value).ok_or_else(|| bad("is not a map"))?;
    match fields.str("t") {
        Some("commit") => {
            let next_file_id = fields
                .u64("next_file_id")
                .filter(|&n| n <= i64::MAX as u64)
                .ok_or_else(|| bad("has an invalid next_file_id"))?;
            let ops = fields
                .get("ops")
                .and_then(Value::as_array)
                .ok_or_else(|| bad("has no ops"))?
                .iter()
                .map(|op| decode_op(op, what))
                .collect::<Result<_>>()?;
            Ok(Record::Commit { next_file_id, ops })
        }
        Some("undo") => {
            let file = fields.str("file").filter(|f| naming::is_data_file(f));
            let row_bytes = fields
                .u64("row_bytes")
                .and_then(|r| usize::try_from(r).ok());
            let rows = fields.bin("rows").filter(|r| r.len().is_multiple_of(8));
            let old = fields.bin("old");
            let (Some(file), Some(row_bytes), Some(rows), Some(old)) = (file, row_bytes, rows, old)
            else {
                return Err(bad("is a malformed undo record"));
            };
            let rows: Vec<u64> = rows
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
                .collect();
            if rows.len().checked_mul(row_bytes) != Some(old.len()) {
                return Err(bad("is an undo record whose rows and bytes disagree"));
            }
            Ok(Record::Undo(Undo {
                file: file.to_owned(),
                row_bytes,
                rows,
                old: old.to_vec(),
            }))
        }
        _ => Err(bad("has an unknown kind")),
    }
}

fn decode_op(op: &Value, what: &str) -> Result<Op> {
    let bad = |m: &str| Error::Corrupt(format!("{what}: a log record {m}"));
    let fields = Fields::of(op).ok_or_else(|| bad("has an op that is not a map"))?;
    let name = || {
        fields
            .str("name")
            .map(str::to_owned)
            .ok_or_else(|| bad("has an op without a name"))
    };
    match fields.str("op") {
        Some("put") => {
            let wire: Wire = fields
                .get("entry")
                .and_then(|v| rmp_serde::from_slice(&pack(v)).ok())
                .ok_or_else(|| bad("has a malformed put"))?;
            Ok(Op::Put(Entry::from_wire(wire, what)?))
        }
        Some("drop") => Ok(Op::Drop(name()?)),
        Some("update") => {
            let modified_us = fields
                .get("modified_us")
                .and_then(Value::as_i64)
                .ok_or_else(|| bad("has an update without modified_us"))?;
            let rows = match fields.get("rows") {
                None => None,
                Some(v) => Some(v.as_u64().ok_or_else(|| bad("has invalid rows"))?),
            };
            let blocks = match fields.get("blocks") {
                None => Vec::new(),
                Some(v) => {
                    let b = v
                        .as_slice()
                        .filter(|b| b.len().is_multiple_of(32))
                        .ok_or_else(|| bad("has invalid blocks"))?;
                    let mut out = Vec::with_capacity(b.len() / 32);
                    for c in b.chunks_exact(32) {
                        let k = u64::from_le_bytes(c[..8].try_into().unwrap());
                        let r =
                            compress::unpack(&c[8..]).ok_or_else(|| bad("has invalid blocks"))?;
                        out.push((k, r[0]));
                    }
                    out
                }
            };
            let deleted = match fields.get("deleted") {
                None => Vec::new(),
                Some(v) => v
                    .as_slice()
                    .filter(|b| b.len().is_multiple_of(8))
                    .ok_or_else(|| bad("has an invalid dropped-row list"))?
                    .chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            };
            Ok(Op::Update(Update {
                name: name()?,
                modified_us,
                rows,
                blocks,
                deleted,
            }))
        }
        _ => Err(bad("has an unknown op")),
    }
}

/// The string-keyed entries of a MessagePack map.
struct Fields<'a>(&'a [(Value, Value)]);

impl<'a> Fields<'a> {
    fn of(v: &'a Value) -> Option<Self> {
        v.as_map().map(|m| Fields(m.as_slice()))
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.0
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    fn str(&self, key: &str) -> Option<&'a str> {
        self.get(key).and_then(Value::as_str)
    }

    fn u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(Value::as_u64)
    }

    fn bin(&self, key: &str) -> Option<&'a [u8]> {
        self.get(key).and_then(Value::as_slice)
    }
}

impl Metadata {
    /// Applies one op (FORMAT.md 6). Returns the data file it retires, if any. An op that
    /// breaks the format's rules is `Corrupt`; `what` names the store.
    pub fn apply(&mut self, op: &Op, what: &str) -> Result<Option<String>> {
        let bad = |m: String| Error::Corrupt(format!("{what}: a log record {m}"));
        match op {
            Op::Put(entry) => match self.position(&entry.name) {
                Some(p) => {
                    let old = std::mem::replace(&mut self.arrays[p], entry.clone());
                    Ok((old.file != entry.file).then_some(old.file))
                }
                None => {
                    self.arrays.push(entry.clone());
                    Ok(None)
                }
            },
            Op::Drop(name) => {
                let p = self
                    .position(name)
                    .ok_or_else(|| bad(format!("drops array {name:?}, which does not exist")))?;
                Ok(Some(self.arrays.remove(p).file))
            }
            Op::Update(u) => {
                let p = self.position(&u.name).ok_or_else(|| {
                    bad(format!("updates array {:?}, which does not exist", u.name))
                })?;
                let e = &mut self.arrays[p];
                update(e, u).map_err(|m| bad(format!("updates array {:?}: {m}", u.name)))?;
                Ok(None)
            }
        }
    }
}

fn update(e: &mut Entry, u: &Update) -> std::result::Result<(), String> {
    e.modified_us = u.modified_us;
    if let Some(rows) = u.rows {
        if rows < e.shape[0] {
            return Err(format!("shrinks it to {rows} rows"));
        }
        let mut shape = e.shape.clone();
        shape[0] = rows;
        if !shape_fits(&shape, itemsize(&e.dtype).expect("validated dtype")) {
            return Err(format!("gives it an impossible shape {shape:?}"));
        }
        e.shape = shape;
    }
    let row = e.row_bytes();
    match &mut e.compression {
        Compression::Zstd(c) => {
            let c = Arc::make_mut(c);
            c.set_blocks(&u.blocks)?;
            if c.blocks.len() as u64 != e.shape[0].div_ceil(c.block_rows) {
                return Err("leaves the wrong number of blocks".into());
            }
            // What a read allocates stays bounded by the stored bytes (FORMAT.md 7).
            let last = c.blocks.len().saturating_sub(1) as u64;
            for k in u
                .blocks
                .iter()
                .map(|&(k, _)| k)
                .chain((!c.blocks.is_empty()).then_some(last))
            {
                if !super::blocks::holds(c, k as usize, e.shape[0], row) {
                    return Err(format!("gives block {k} too few stored bytes"));
                }
            }
        }
        Compression::Raw if !u.blocks.is_empty() => return Err("sets blocks of a raw array".into()),
        _ => {}
    }
    if !u.deleted.is_empty() {
        let n = e.shape[0];
        if u.deleted.windows(2).any(|w| w[0] >= w[1]) || u.deleted.last().is_some_and(|&d| d >= n) {
            return Err("drops an invalid list of rows".into());
        }
        let merged = e.rows.merged(&u.deleted);
        e.rows = Arc::new(merged.ok_or("drops rows that are already dropped")?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops() -> Vec<Op> {
        vec![
            Op::Put(Entry::new("a", "<f4", vec![4, 2], 0, 1)),
            Op::Update(Update {
                name: "a".into(),
                modified_us: 5,
                rows: Some(6),
                deleted: vec![0, 5],
                ..Default::default()
            }),
        ]
    }

    #[test]
    fn records_round_trip_and_apply() {
        let rec = commit(1, &ops()).unwrap();
        let found = scan(&rec);
        assert_eq!(found.len(), 1);
        let Record::Commit { next_file_id, ops } = decode(found[0].0, "t").unwrap() else {
            panic!("a commit")
        };
        assert_eq!(next_file_id, 1);
        let mut m = Metadata::empty();
        for op in &ops {
            m.apply(op, "t").unwrap();
        }
        let e = m.find("a").unwrap();
        assert_eq!(e.shape, [6, 2]);
        assert_eq!(e.deleted_rows().collect::<Vec<_>>(), [0, 5]);
        assert_eq!(e.modified_us, 5);
    }

    #[test]
    fn a_torn_record_ends_the_log() {
        let mut log = commit(1, &ops()).unwrap();
        let whole = log.len();
        log.extend(commit(2, &ops()).unwrap());
        for cut in whole..log.len() {
            assert_eq!(scan(&log[..cut]).len(), 1, "cut at {cut}");
        }
        assert_eq!(scan(&log).len(), 2);
        log[whole + 9] ^= 1;
        assert_eq!(scan(&log).len(), 1);
    }

    #[test]
    fn rule_breaking_updates_are_corrupt() {
        let mut m = Metadata::empty();
        m.apply(&ops()[0], "t").unwrap();
        let shrink = Op::Update(Update {
            name: "a".into(),
            rows: Some(1),
            ..Default::default()
        });
        assert!(matches!(m.apply(&shrink, "t"), Err(Error::Corrupt(_))));
        let twice = Op::Update(Update {
            name: "a".into(),
            deleted: vec![1, 1],
            ..Default::default()
        });
        assert!(m.apply(&twice, "t").is_err());
        assert!(m.apply(&Op::Drop("b".into()), "t").is_err());
    }

    #[test]
    fn undo_records_split_and_round_trip() {
        let rows: Vec<u64> = (0..3).collect();
        let bytes = undo("a-0123456789abcdef.0.npkd", 4, &rows, &[7u8; 12]).unwrap();
        let found = scan(&bytes);
        assert_eq!(found.len(), 1);
        let Record::Undo(u) = decode(found[0].0, "t").unwrap() else {
            panic!("an undo record")
        };
        assert_eq!((u.rows, u.old.len()), (rows, 12));
    }
}
