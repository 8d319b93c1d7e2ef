//! Fuzzing of the decoders with proptest: the metadata decoder, the block index and block
//! decoder, the undo journal's parser and recovery, and a store opened on mutated metadata.
//! Each takes arbitrary bytes and mutations of valid encodings and must return `Ok` or `Err`,
//! never panic (a panic would cross the FFI boundary) nor abort on a lying size.
//!
//! Bounded for CI: 20,000 cases of each target (2,000 of the store target, which touches
//! files), about 3 s in all with `cargo test --release`; CI also runs 5,000 (500) in a debug
//! build (overflow checks on, so an arithmetic overflow is a panic the fuzzer reports), about
//! 5 s. Longer runs:
//!
//!     NUMPACK_FUZZ_CASES=1000000 cargo test --release fuzz_ -- --nocapture
//!     NUMPACK_FUZZ_CASES=100000 cargo test fuzz_ -- --nocapture
//!
//! (`PROPTEST_CASES` works too.) Each target prints how many cases it ran. A failure prints
//! the minimal input; the regression tests at the end keep the bugs found so far.
//!
//! Reproducible by default: every target draws its cases from ChaCha seeded with
//! `DEFAULT_SEED`, so CI runs the same cases each time (a red run is a regression, and a
//! rerun shows it again). `NUMPACK_FUZZ_SEED=<u64>` picks another seed,
//! `NUMPACK_FUZZ_SEED=random` a fresh one (the long opt-in run); each target prints the seed
//! it used, so a failure of a random run reproduces with that seed:
//!
//!     NUMPACK_FUZZ_SEED=random NUMPACK_FUZZ_CASES=1000000 cargo test --release fuzz_ -- --nocapture

use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, RngSeed, TestRunner};
use rmpv::Value;

use super::compress::{self, Layout, Record};
use super::format::{Compressed, Entry, Metadata};
use super::journal;
use super::naming;
use super::store::{Item, Replacement, Store};
use super::Error;

/// Cases of one target: `NUMPACK_FUZZ_CASES` (or `PROPTEST_CASES`), else `default`.
fn cases(default: u32) -> u32 {
    ["NUMPACK_FUZZ_CASES", "PROPTEST_CASES"]
        .iter()
        .find_map(|k| std::env::var(k).ok()?.parse().ok())
        .unwrap_or(default)
}

/// The seed of CI's runs (any fixed value; changing it changes which cases CI runs).
const DEFAULT_SEED: u64 = 0x6e75_6d70_6163_6b21;

/// `NUMPACK_FUZZ_SEED`: a u64, or `random` for a fresh seed; else `DEFAULT_SEED`.
fn seed() -> u64 {
    match std::env::var("NUMPACK_FUZZ_SEED").as_deref().map(str::trim) {
        Err(_) | Ok("") => DEFAULT_SEED,
        Ok("random") => {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            h.finish()
        }
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("NUMPACK_FUZZ_SEED={s:?}: a u64 or \"random\"")),
    }
}

fn run<S: Strategy>(
    target: &str,
    n: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let seed = seed();
    let config = Config {
        cases: n,
        failure_persistence: None,
        // Mutations that rarely hold are not filtered: every case runs.
        max_global_rejects: n.saturating_mul(4),
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: RngSeed::Fixed(seed),
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let count = std::cell::Cell::new(0u64);
    let result = runner.run(&strategy, |v| {
        count.set(count.get() + 1);
        test(v)
    });
    eprintln!("fuzz {target}: {} executions (seed {seed})", count.get());
    if let Err(e) = result {
        panic!("fuzz {target} (NUMPACK_FUZZ_SEED={seed}): {e}");
    }
}

// -- mutations of bytes ---------------------------------------------------------------------

#[derive(Debug, Clone)]
enum ByteOp {
    Flip(usize, u8),
    Set(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Append(Vec<u8>),
}

fn byte_op() -> impl Strategy<Value = ByteOp> {
    prop_oneof![
        4 => (any::<usize>(), 0u8..8).prop_map(|(p, b)| ByteOp::Flip(p, b)),
        3 => (any::<usize>(), any::<u8>()).prop_map(|(p, v)| ByteOp::Set(p, v)),
        1 => any::<usize>().prop_map(ByteOp::Truncate),
        1 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(p, b)| ByteOp::Insert(p, b)),
        1 => (any::<usize>(), 1usize..16).prop_map(|(p, n)| ByteOp::Delete(p, n)),
        1 => prop::collection::vec(any::<u8>(), 1..32).prop_map(ByteOp::Append),
    ]
}

fn mutate(mut bytes: Vec<u8>, ops: &[ByteOp]) -> Vec<u8> {
    for op in ops {
        let len = bytes.len();
        match op {
            ByteOp::Flip(p, b) if len > 0 => bytes[p % len] ^= 1 << b,
            ByteOp::Set(p, v) if len > 0 => bytes[p % len] = *v,
            ByteOp::Truncate(p) => bytes.truncate(p % (len + 1)),
            ByteOp::Insert(p, b) => {
                let at = p % (len + 1);
                bytes.splice(at..at, b.iter().copied());
            }
            ByteOp::Delete(p, n) if len > 0 => {
                let at = p % len;
                bytes.drain(at..(at + n).min(len));
            }
            ByteOp::Append(b) => bytes.extend_from_slice(b),
            _ => {}
        }
    }
    bytes
}

fn byte_ops() -> impl Strategy<Value = Vec<ByteOp>> {
    prop::collection::vec(byte_op(), 1..6)
}

// -- mutations of MessagePack values ----------------------------------------------------------

/// Values a hostile or broken writer could put anywhere: boundary integers, wrong types.
fn evil_value() -> impl Strategy<Value = Value> {
    let ints = prop_oneof![
        Just(Value::from(0u64)),
        Just(Value::from(1u64)),
        Just(Value::from(u64::MAX)),
        Just(Value::from(i64::MAX as u64)),
        Just(Value::from(i64::MAX as u64 + 1)),
        Just(Value::from(u32::MAX as u64 + 1)),
        Just(Value::from(1u64 << 40)),
        Just(Value::from(-1i64)),
        Just(Value::from(i64::MIN)),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (0u64..64).prop_map(Value::from),
    ];
    let leaves = prop_oneof![
        6 => ints,
        1 => Just(Value::Nil),
        1 => any::<bool>().prop_map(Value::from),
        1 => any::<f64>().prop_map(Value::from),
        1 => "[a-z0-9<|.-]{0,12}".prop_map(Value::from),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Value::Binary),
    ];
    leaves.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(("[a-z_]{1,10}", inner), 0..3).prop_map(|kv| {
                Value::Map(kv.into_iter().map(|(k, v)| (Value::from(k), v)).collect())
            }),
        ]
    })
}

#[derive(Debug, Clone)]
enum ValueOp {
    /// Replace the value at a path (indexes taken modulo the children there).
    Replace(Vec<usize>, Value),
    /// Remove the child at a path from its map or array.
    Remove(Vec<usize>),
    /// Replace a blob (a block index, a dropped-row list) at a path with mutated bytes.
    Bytes(Vec<usize>, Vec<ByteOp>),
    /// Swap two children of the array or map at a path (reorders dropped rows, entries).
    Swap(Vec<usize>, usize, usize),
    /// Set a named field of entry `.0` (a key of the entry, or of its compression map when
    /// it starts with `c.`) to a value made to lie about it.
    Field(usize, &'static str, Value),
}

/// Integers at the edges: zero, small, powers of two near the u32/i64/u64 limits.
fn edge_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..5,
        prop::sample::select(vec![
            7,
            8,
            1 << 20,
            1 << 32,
            1 << 40,
            1 << 62,
            i64::MAX as u64,
            i64::MAX as u64 + 1,
            u64::MAX / 8 + 1,
            u64::MAX - 1,
            u64::MAX,
        ]),
        any::<u64>(),
    ]
}

fn words(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(edge_u64(), 0..max)
        .prop_map(|w| w.iter().flat_map(|x| x.to_le_bytes()).collect())
}

/// Lies aimed at the fields a reader sizes things by.
fn field_op() -> impl Strategy<Value = ValueOp> {
    let ints = || {
        prop_oneof![
            edge_u64().prop_map(Value::from),
            (-3i64..0).prop_map(Value::from),
            Just(Value::from(i64::MIN)),
        ]
    };
    let shape = prop::collection::vec(ints(), 0..4).prop_map(Value::Array);
    let record = (edge_u64(), edge_u64(), any::<u32>(), 0u8..3, 0u8..6).prop_map(
        |(offset, size, crc32, codec, filter)| {
            compress::pack(&[Record {
                offset,
                size,
                crc32,
                codec,
                filter,
            }])
        },
    );
    let blocks = prop::collection::vec(record, 0..5).prop_map(|r| Value::Binary(r.concat()));
    let field = prop_oneof![
        3 => shape.prop_map(|v| ("shape", v)),
        2 => words(5).prop_map(|w| ("deleted", Value::Binary(w))),
        2 => ints().prop_map(|v| ("c.block_rows", v)),
        1 => (6u64..).prop_map(|v| ("c.block_rows", Value::from(v))),
        3 => blocks.prop_map(|v| ("c.blocks", v)),
        1 => ints().prop_map(|v| ("c.level", v)),
        1 => prop::sample::select(vec!["zstd", "lz4", ""]).prop_map(|v| ("c.codec", Value::from(v))),
        1 => prop::sample::select(vec!["<f8", "<i4", "|u1", "<c16", ">f8", "<f16", "O", ""])
            .prop_map(|v| ("dtype", Value::from(v))),
        1 => ints().prop_map(|v| ("modified_us", v)),
    ];
    (0usize..4, field).prop_map(|(i, (k, v))| ValueOp::Field(i, k, v))
}

fn path() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(any::<usize>(), 0..5)
}

fn value_op() -> impl Strategy<Value = ValueOp> {
    prop_oneof![
        6 => field_op(),
        4 => (path(), evil_value()).prop_map(|(p, v)| ValueOp::Replace(p, v)),
        1 => path().prop_map(ValueOp::Remove),
        3 => (path(), byte_ops()).prop_map(|(p, o)| ValueOp::Bytes(p, o)),
        1 => (path(), any::<usize>(), any::<usize>()).prop_map(|(p, a, b)| ValueOp::Swap(p, a, b)),
    ]
}

/// The children of a map (its values) or an array.
fn children(v: &mut Value) -> Option<Vec<&mut Value>> {
    match v {
        Value::Array(a) => Some(a.iter_mut().collect()),
        Value::Map(m) => Some(m.iter_mut().map(|(_, v)| v).collect()),
        _ => None,
    }
}

fn walk<'a>(v: &'a mut Value, path: &[usize]) -> &'a mut Value {
    let Some((&first, rest)) = path.split_first() else {
        return v;
    };
    let n = match v {
        Value::Array(a) => a.len(),
        Value::Map(m) => m.len(),
        _ => 0,
    };
    if n == 0 {
        return v;
    }
    // A borrow-checker-friendly descent: decide first, then borrow once.
    let child = children(v).unwrap().into_iter().nth(first % n).unwrap();
    walk(child, rest)
}

fn map_get<'a>(v: &'a mut Value, key: &str) -> Option<&'a mut Value> {
    match v {
        Value::Map(m) => m
            .iter_mut()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v),
        _ => None,
    }
}

fn apply_value_op(root: &mut Value, op: &ValueOp) {
    match op {
        ValueOp::Field(i, key, new) => {
            let Some(Value::Array(arrays)) = map_get(root, "arrays") else {
                return;
            };
            let Some(entry) = arrays.get_mut(*i) else {
                return;
            };
            let (target, key) = match key.strip_prefix("c.") {
                Some(k) => (map_get(entry, "compression"), k),
                None => (Some(entry), *key),
            };
            if let Some(slot) = target.and_then(|t| map_get(t, key)) {
                *slot = new.clone();
            }
        }
        ValueOp::Replace(p, new) => *walk(root, p) = new.clone(),
        ValueOp::Remove(p) if !p.is_empty() => {
            let (last, parent) = p.split_last().unwrap();
            match walk(root, parent) {
                Value::Array(a) if !a.is_empty() => {
                    let i = last % a.len();
                    a.remove(i);
                }
                Value::Map(m) if !m.is_empty() => {
                    let i = last % m.len();
                    m.remove(i);
                }
                _ => {}
            }
        }
        ValueOp::Bytes(p, ops) => {
            let v = walk(root, p);
            if let Value::Binary(b) = v {
                *b = mutate(std::mem::take(b), ops);
            }
        }
        ValueOp::Swap(p, a, b) => match walk(root, p) {
            Value::Array(v) if !v.is_empty() => {
                let n = v.len();
                v.swap(a % n, b % n);
            }
            Value::Map(v) if !v.is_empty() => {
                let n = v.len();
                v.swap(a % n, b % n);
            }
            Value::Binary(v) if v.len() >= 16 => {
                // Swap two 8-byte words: dropped rows out of order, block records reordered.
                let n = v.len() / 8;
                let (i, j) = (a % n, b % n);
                for k in 0..8 {
                    v.swap(i * 8 + k, j * 8 + k);
                }
            }
            _ => {}
        },
        _ => {}
    }
}

fn to_bytes(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, v).unwrap();
    out
}

// -- a valid sample ---------------------------------------------------------------------------

fn rows_of(n: u64, row_bytes: usize, seed: u8) -> Vec<u8> {
    (0..n as usize * row_bytes)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) / 3)
        .collect()
}

/// Metadata with a raw array (dropped rows), a compressed one and an empty one, and the data
/// files that go with it.
fn sample() -> (Metadata, Vec<(String, Vec<u8>)>) {
    let mut meta = Metadata::empty();
    let mut files = Vec::new();
    let mut raw = Entry::new("raw", "<i4", vec![6, 3], 0, 1);
    raw.set_deleted(&[1, 4]);
    files.push((raw.file.clone(), rows_of(6, 12, 1)));
    meta.arrays.push(raw);
    let mut zst = Entry::new("zst", "<f8", vec![7, 2], 1, 2);
    let layout = zst.layout();
    let data = rows_of(7, 16, 2);
    let mut blob = Vec::new();
    let mut records = Vec::new();
    for chunk in data.chunks(3 * 16) {
        let enc = compress::encode(chunk, layout, 3).unwrap();
        records.push(Record {
            offset: blob.len() as u64,
            ..enc.record
        });
        blob.extend_from_slice(&enc.bytes);
    }
    zst.set_compressed(Compressed::new(3, 3, records));
    zst.set_deleted(&[0]);
    files.push((zst.file.clone(), blob));
    let empty = Entry::new("e", "|u1", vec![0], 2, 3);
    files.push((empty.file.clone(), Vec::new()));
    // One block: any block_rows >= 6 keeps its index consistent, so a lying one reaches
    // the readers and writers.
    let mut one = Entry::new("one", "<f4", vec![6, 2], 3, 4);
    let enc = compress::encode(&rows_of(6, 8, 3), one.layout(), 3).unwrap();
    one.set_compressed(Compressed::new(3, 8, vec![enc.record]));
    one.set_deleted(&[2]);
    files.push((one.file.clone(), enc.bytes));
    meta.arrays.push(zst);
    meta.arrays.push(empty);
    meta.arrays.push(one);
    meta.next_file_id = 4;
    (meta, files)
}

/// Everything a reader derives from decoded metadata, so nothing downstream panics either.
fn exercise(meta: &Metadata) {
    for e in &meta.arrays {
        let _ = e.itemsize();
        let _ = e.row_bytes();
        let _ = e.physical_bytes();
        let _ = e.logical_shape();
        let _ = e.layout();
        let _ = e.deleted_rows().count();
        let _ = e.file_bytes();
        if let Ok(Some(c)) = e.compressed() {
            for k in 0..c.blocks.len() {
                let _ = c.rows_of(k, e.shape[0]);
            }
            let _ = c.stored_bytes();
        }
    }
    let _ = Metadata::decode(&meta.encode(), "round trip").expect("valid metadata re-encodes");
}

fn metadata_input() -> impl Strategy<Value = Vec<u8>> {
    let valid = sample().0.encode();
    let value: Value = rmpv::decode::read_value(&mut valid.as_slice()).unwrap();
    prop_oneof![
        // Arbitrary bytes.
        1 => prop::collection::vec(any::<u8>(), 0..256),
        // Bit flips, truncations and splices of a valid file.
        3 => byte_ops().prop_map(move |ops| mutate(valid.clone(), &ops)),
        // Well-formed MessagePack of the right shape with wrong values.
        6 => prop::collection::vec(value_op(), 1..4).prop_map(move |ops| {
            let mut v = value.clone();
            for op in &ops {
                apply_value_op(&mut v, op);
            }
            to_bytes(&v)
        }),
    ]
}

#[test]
fn fuzz_metadata_decode() {
    run("metadata decode", cases(20000), metadata_input(), |bytes| {
        match Metadata::decode(&bytes, "fuzz") {
            Ok(meta) => exercise(&meta),
            Err(Error::Corrupt(_)) => {}
            Err(e) => return Err(TestCaseError::fail(format!("not Corrupt: {e:?}"))),
        }
        Ok(())
    });
}

// -- the block index and blocks ---------------------------------------------------------------

#[test]
fn fuzz_block_index_unpack() {
    let valid = compress::pack(&sample().0.arrays[1].compressed().unwrap().unwrap().blocks);
    let input = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        byte_ops().prop_map(move |ops| mutate(valid.clone(), &ops)),
    ];
    run("block index unpack", cases(20000), input, |bytes| {
        if let Some(records) = compress::unpack(&bytes) {
            prop_assert_eq!(records.len() * 24, bytes.len());
            prop_assert_eq!(compress::pack(&records), {
                // Padding bytes are not kept.
                let mut b = bytes.clone();
                for r in b.chunks_exact_mut(24) {
                    r[22] = 0;
                    r[23] = 0;
                }
                b
            });
        }
        Ok(())
    });
}

#[derive(Debug, Clone)]
struct BlockCase {
    unit: usize,
    width: usize,
    rows: u64,
    seed: u8,
    /// Mutations of the stored bytes (none: the valid block).
    ops: Vec<ByteOp>,
    /// A lie in the record: (field, value).
    lie: Option<(u8, u64)>,
    /// Rows the reader believes the block has, as a change of the true count.
    rows_delta: i8,
}

fn block_case() -> impl Strategy<Value = BlockCase> {
    (
        prop::sample::select(vec![1usize, 2, 4, 8]),
        1usize..6,
        0u64..40,
        any::<u8>(),
        prop_oneof![
            1 => Just(Vec::new()),
            3 => byte_ops(),
        ],
        prop_oneof![
            3 => Just(None),
            1 => (0u8..5, any::<u64>()).prop_map(Some),
            1 => (0u8..5, 0u64..8).prop_map(Some),
        ],
        prop_oneof![4 => Just(0i8), 1 => -3i8..4],
    )
        .prop_map(
            |(unit, width, rows, seed, ops, lie, rows_delta)| BlockCase {
                unit,
                width,
                rows,
                seed,
                ops,
                lie,
                rows_delta,
            },
        )
}

#[test]
fn fuzz_block_decode() {
    run("block decode", cases(20000), block_case(), |c| {
        let layout = Layout {
            row_bytes: c.unit * c.width,
            unit: c.unit,
        };
        // Smooth data compresses (so the zstd and filter paths run); the seed varies it. A
        // third of the cases are multiples of 16 given the gcd filter (FORMAT.md 7).
        let gcd = c.seed % 3 == 0;
        let raw: Vec<u8> = (0..c.rows as usize * layout.row_bytes)
            .map(|i| ((i / 7) as u8).wrapping_add(c.seed) & if gcd { 0xF0 } else { 0xFF })
            .collect();
        let filter = gcd.then_some(compress::GCD);
        let enc = compress::encode_as(&raw, layout, 1, filter).unwrap();
        let stored = mutate(enc.bytes.clone(), &c.ops);
        let mut record = enc.record;
        if let Some((field, v)) = c.lie {
            match field {
                0 => record.size = v,
                1 => record.crc32 = v as u32,
                2 => record.codec = (v % 2) as u8,
                3 => record.filter = (v % 7) as u8,
                _ => record.offset = v,
            }
        }
        let rows = (c.rows as i64 + c.rows_delta as i64).max(0) as usize;
        let raw_len = rows * layout.row_bytes;
        match compress::decode(&stored, &record, layout, raw_len, "fuzz") {
            Ok(out) => {
                prop_assert_eq!(out.len(), raw_len);
                prop_assert_eq!(crc32fast::hash(&out), record.crc32);
                if record == enc.record && raw_len == raw.len() {
                    // The CRC held: the numbers are the right ones.
                    prop_assert_eq!(out, raw);
                }
            }
            Err(Error::Corrupt(_)) => {}
            Err(e) => return Err(TestCaseError::fail(format!("not Corrupt: {e:?}"))),
        }
        Ok(())
    });
}

#[test]
fn fuzz_block_decode_arbitrary() {
    let input = (
        prop::collection::vec(any::<u8>(), 0..300),
        any::<[u8; 24]>(),
        prop::sample::select(vec![1usize, 2, 4, 8]),
        1usize..5,
        0usize..64,
    );
    run(
        "block decode (arbitrary)",
        cases(20000),
        input,
        |(stored, rec, unit, width, rows)| {
            let Some(records) = compress::unpack(&rec) else {
                return Ok(());
            };
            let layout = Layout {
                row_bytes: unit * width,
                unit,
            };
            let raw_len = rows * layout.row_bytes;
            match compress::decode(&stored, &records[0], layout, raw_len, "fuzz") {
                Ok(out) => prop_assert_eq!(out.len(), raw_len),
                Err(Error::Corrupt(_)) => {}
                Err(e) => return Err(TestCaseError::fail(format!("not Corrupt: {e:?}"))),
            }
            Ok(())
        },
    );
}

// -- the undo journal -------------------------------------------------------------------------

const DATA_LEN: usize = 96;

fn journal_of(file: &str, row_bytes: u64, rows: &[u64], old: &[u8]) -> Vec<u8> {
    let mut b = b"NPKUNDO1".to_vec();
    b.extend_from_slice(&(file.len() as u64).to_le_bytes());
    b.extend_from_slice(file.as_bytes());
    b.extend_from_slice(&row_bytes.to_le_bytes());
    b.extend_from_slice(&(rows.len() as u64).to_le_bytes());
    for r in rows {
        b.extend_from_slice(&r.to_le_bytes());
    }
    b.extend_from_slice(old);
    b
}

fn journal_input() -> impl Strategy<Value = Vec<u8>> {
    let file = naming::data_file("j", 0);
    let word = prop_oneof![
        0u64..16,
        Just(u64::MAX),
        Just(u64::MAX / 8 + 1),
        Just(1u64 << 62),
        Just(i64::MAX as u64),
        any::<u64>(),
    ];
    let file2 = file.clone();
    let lying = (word.clone(), prop::collection::vec(word, 0..4), 0usize..64).prop_map(
        move |(row_bytes, rows, old_len)| {
            let old = vec![0xAB; old_len];
            journal_of(&file, row_bytes, &rows, &old)
        },
    );
    let valid = journal_of(&file2, 8, &[0, 3, 3, 11], &[7u8; 32]);
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..128)
            .prop_map(|b| [b"NPKUNDO1".as_slice(), &b].concat()),
        1 => prop::collection::vec(any::<u8>(), 0..64),
        3 => lying,
        3 => byte_ops().prop_map(move |ops| mutate(valid.clone(), &ops)),
    ]
}

#[test]
fn fuzz_journal_recover() {
    let dir = tempfile::tempdir().unwrap();
    let file = naming::data_file("j", 0);
    run("journal recover", cases(20000), journal_input(), |bytes| {
        std::fs::write(dir.path().join(&file), [0x11u8; DATA_LEN]).unwrap();
        std::fs::write(dir.path().join(journal::FILE), &bytes).unwrap();
        match journal::recover(dir.path()) {
            Ok(found) => {
                prop_assert!(found);
                prop_assert!(!dir.path().join(journal::FILE).exists());
                // Recovery writes old rows inside the file, never past its end.
                let len = std::fs::metadata(dir.path().join(&file)).unwrap().len();
                prop_assert_eq!(len, DATA_LEN as u64);
            }
            Err(Error::Corrupt(_)) => {
                let _ = std::fs::remove_file(dir.path().join(journal::FILE));
            }
            Err(e) => return Err(TestCaseError::fail(format!("not Corrupt: {e:?}"))),
        }
        Ok(())
    });
}

// -- a whole store on mutated metadata --------------------------------------------------------

/// Opens the store, reads every array whole and by rows, then (with `write`) replaces,
/// appends, drops and compacts: the paths that size buffers and blocks from the metadata.
fn use_everything(dir: &Path, write: bool) -> Result<(), Error> {
    let mut store = Store::open(dir, Duration::from_secs(5), false)?;
    store.entries()?;
    for name in store.names()? {
        store.info(&name)?;
        let view = store.view(&name)?;
        let rows = view.shape[0];
        let row: u64 = view.shape[1..].iter().product::<u64>()
            * super::format::itemsize(&view.dtype).unwrap() as u64;
        if rows.saturating_mul(row) > 1 << 24 {
            continue; // a shape this large was validated against a file this large
        }
        let mut out = vec![0u8; (rows * row) as usize];
        view.read(0, rows, &mut out)?;
        let picks: Vec<i64> = [0, rows / 2, rows.saturating_sub(1)]
            .iter()
            .filter(|&&r| r < rows)
            .map(|&r| r as i64)
            .collect();
        let mut out = vec![0u8; picks.len() * row as usize];
        view.gather(&picks, &mut out)?;
        if write && !picks.is_empty() {
            let first = out[..row as usize].to_vec();
            let one = [1u64];
            let shape: Vec<u64> = one.iter().chain(&view.shape[1..]).copied().collect();
            let item = Item {
                name: &name,
                dtype: &view.dtype,
                shape: &shape,
                data: &first,
            };
            store.replace(&[Replacement {
                name: &name,
                rows: &picks[..1],
                data: &first,
            }])?;
            store.append(&[item])?;
            store.drop_rows(&name, &picks[..1])?;
            store.compact(Some(&[name.as_str()]))?;
        }
    }
    if write {
        store.compact(None)?;
    }
    Ok(())
}

/// Empties `dir` and writes `files` into it, then `name` with the bytes under test: every case
/// starts from the same store, the writes of the last one undone.
fn refill(dir: &Path, files: &[(String, Vec<u8>)], name: &str, bytes: &[u8]) {
    for f in std::fs::read_dir(dir).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    for (f, data) in files {
        std::fs::write(dir.join(f), data).unwrap();
    }
    std::fs::write(dir.join(name), bytes).unwrap();
}

#[test]
fn fuzz_store_on_mutated_metadata() {
    let (meta, files) = sample();
    let dir = tempfile::tempdir().unwrap();
    let fresh = |metadata: &[u8]| refill(dir.path(), &files, "metadata.npkm", metadata);
    let valid = meta.encode();
    let value: Value = rmpv::decode::read_value(&mut valid.as_slice()).unwrap();
    let input = prop_oneof![
        1 => byte_ops().prop_map(move |ops| mutate(valid.clone(), &ops)),
        3 => prop::collection::vec(value_op(), 1..3).prop_map(move |ops| {
            let mut v = value.clone();
            for op in &ops {
                apply_value_op(&mut v, op);
            }
            to_bytes(&v)
        }),
    ];
    run(
        "store on mutated metadata",
        (cases(20000) / 10).max(1),
        input,
        |bytes| {
            fresh(&bytes);
            match use_everything(dir.path(), true) {
                Ok(()) | Err(Error::Corrupt(_)) => {}
                Err(e) => {
                    let doc = rmpv::decode::read_value(&mut bytes.as_slice());
                    return Err(TestCaseError::fail(format!(
                        "unexpected error: {e:?} on metadata {doc:?}"
                    )));
                }
            }
            Ok(())
        },
    );
    // The untouched store reads back what was written, and takes every write.
    fresh(&meta.encode());
    use_everything(dir.path(), false).unwrap();
    let mut store = Store::open(dir.path(), Duration::from_secs(5), false).unwrap();
    let view = store.view("zst").unwrap();
    let mut out = vec![0u8; 6 * 16];
    view.read(0, 6, &mut out).unwrap();
    assert_eq!(out, rows_of(7, 16, 2)[16..]);
    drop(store);
    use_everything(dir.path(), true).unwrap();
}

/// Found by fuzz_metadata_decode: a shape with no rows but rows of more bytes than any
/// array can hold (shape[0] = 0 made the product 0) was accepted; Entry::row_bytes then
/// overflowed (a panic in debug builds, a wrapped size in release ones) and NumPy refused
/// to make the empty array with a ValueError.
#[test]
fn zero_rows_do_not_hide_an_overflowing_row() {
    for shape in [vec![0, 1 << 40, 1 << 40], vec![1 << 40, 0, 1 << 40]] {
        let mut m = sample().0;
        m.arrays[0].shape = shape;
        m.arrays[0].set_deleted(&[]);
        assert!(matches!(
            Metadata::decode(&m.encode(), "t"),
            Err(Error::Corrupt(_))
        ));
    }
}

/// Found by fuzz_store_on_mutated_metadata: with a huge `block_rows` (valid: at most 2^63 - 1),
/// `block_rows * row_bytes` wrapped to 0 (par_chunks panicked: a PanicException in Python)
/// and compaction's `block_rows * 64` wrapped to 0 (no progress: compact hung).
#[test]
fn huge_block_rows_neither_panic_nor_hang() {
    let (meta, files) = sample();
    for block_rows in [1u64 << 58, 1 << 60, 1 << 62, i64::MAX as u64] {
        let dir = tempfile::tempdir().unwrap();
        for (f, bytes) in &files {
            std::fs::write(dir.path().join(f), bytes).unwrap();
        }
        let mut m = meta.clone();
        let one = m.arrays.iter_mut().find(|e| e.name == "one").unwrap();
        let mut c = (*one.compressed().unwrap().unwrap()).clone();
        c.block_rows = block_rows;
        one.set_compressed(c);
        std::fs::write(dir.path().join("metadata.npkm"), m.encode()).unwrap();
        use_everything(dir.path(), true).unwrap();
        let mut store = Store::open(dir.path(), Duration::from_secs(5), false).unwrap();
        let view = store.view("one").unwrap();
        // use_everything appends a copy of the first row and drops the first row.
        assert_eq!(view.shape, [5, 2]);
    }
}

/// Found by fuzz_store_on_mutated_metadata: metadata whose `next_file_id` is below the ids
/// its entries use made a writer create a file under a live file's name: the live file was
/// deleted first, and retiring the old entry then deleted the new file (both arrays lost).
#[test]
fn a_lying_next_file_id_loses_nothing() {
    let (mut meta, files) = sample();
    let dir = tempfile::tempdir().unwrap();
    for (f, bytes) in &files {
        std::fs::write(dir.path().join(f), bytes).unwrap();
    }
    meta.next_file_id = 0;
    std::fs::write(dir.path().join("metadata.npkm"), meta.encode()).unwrap();
    use_everything(dir.path(), true).unwrap();
    let mut store = Store::open(dir.path(), Duration::from_secs(5), false).unwrap();
    let view = store.view("zst").unwrap();
    let mut out = vec![0u8; 6 * 16];
    view.read(0, 6, &mut out).unwrap();
    // use_everything moved the first row to the end.
    let want = rows_of(7, 16, 2);
    assert_eq!(out[..80], want[32..]);
    assert_eq!(out[80..], want[16..32]);
    let data = [7u8; 4];
    store
        .save(
            &[Item {
                name: "raw",
                dtype: "|u1",
                shape: &[4],
                data: &data,
            }],
            None,
            None,
        )
        .unwrap();
    drop(store);
    use_everything(dir.path(), false).unwrap();
}

// -- a whole store on a mutated commit log ----------------------------------------------------

/// A store written by the real writer, with every kind of record in its log: its files.
fn logged_store() -> Vec<(String, Vec<u8>)> {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path(), Duration::from_secs(5), false).unwrap();
    let raw = rows_of(6, 12, 1);
    let item = |name: &'static str, shape: &'static [u64], data: &'static [u8]| Item {
        name,
        dtype: "<i4",
        shape,
        data,
    };
    let raw: &'static [u8] = Box::leak(raw.into_boxed_slice());
    let comp: &'static [u8] = Box::leak(rows_of(20, 12, 3).into_boxed_slice());
    store.save(&[item("r", &[6, 3], raw)], None, None).unwrap();
    store
        .save(&[item("z", &[20, 3], comp)], Some(3), Some(4))
        .unwrap();
    store.append(&[item("r", &[1, 3], &raw[..12])]).unwrap();
    store.append(&[item("z", &[1, 3], &comp[..12])]).unwrap();
    let row = &raw[12..24];
    for name in ["r", "z"] {
        store
            .replace(&[Replacement {
                name,
                rows: &[2],
                data: row,
            }])
            .unwrap();
        store.drop_rows(name, &[0, 3]).unwrap();
    }
    store
        .save(&[item("gone", &[1, 3], row)], None, None)
        .unwrap();
    store.drop_arrays(&["gone"]).unwrap();
    drop(store);
    std::fs::read_dir(dir.path())
        .unwrap()
        .map(|f| {
            let f = f.unwrap();
            let name = f.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(f.path()).unwrap())
        })
        .filter(|(name, _)| name != "numpack.lock")
        .collect()
}

/// Sets every `modified_us` in `v` (at any depth) to one fixed time.
fn fixed_times(v: &mut Value) {
    match v {
        Value::Map(m) => {
            for (k, x) in m.iter_mut() {
                if k.as_str() == Some("modified_us") {
                    *x = Value::from(1_767_225_600_000_000u64); // 2026-01-01
                } else {
                    fixed_times(x);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(fixed_times),
        _ => {}
    }
}

/// Re-frames `payload` as a record whose CRC matches: a hostile writer's, not a torn one.
fn framed(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_le_bytes().to_vec();
    out.extend(crc32fast::hash(payload).to_le_bytes());
    out.extend(payload);
    out
}

#[test]
fn fuzz_store_on_mutated_log() {
    let files = logged_store();
    let log = files
        .iter()
        .find(|(n, _)| n == "numpack.log")
        .unwrap()
        .1
        .clone();
    let body = log[16..].to_vec();
    // The records with every `modified_us` set to one value: the writer stamped them with
    // the clock, and the same seed must give the same cases on every run.
    let records: Vec<Vec<u8>> = super::log::scan(&body)
        .into_iter()
        .map(|(p, _)| {
            let mut v = rmpv::decode::read_value(&mut &p[..]).unwrap();
            fixed_times(&mut v);
            to_bytes(&v)
        })
        .collect();
    assert!(records.len() >= 10, "every kind of record is there");
    let mut log = log[..16].to_vec();
    for payload in &records {
        log.extend(framed(payload));
    }
    let dir = tempfile::tempdir().unwrap();
    let fresh = |log: &[u8]| refill(dir.path(), &files, "numpack.log", log);
    let head = log[..16].to_vec();
    let recs = records.clone();
    let input = prop_oneof![
        // Torn, flipped, cut: anything a crash or a bad disk leaves.
        1 => byte_ops().prop_map(move |ops| mutate(log.clone(), &ops)),
        // A whole record (its CRC right) that lies: a hostile or broken writer.
        3 => (0..recs.len(), prop::collection::vec(value_op(), 1..3)).prop_map(move |(k, ops)| {
            let mut out = head.clone();
            for (i, payload) in recs.iter().enumerate() {
                if i == k {
                    let mut v = rmpv::decode::read_value(&mut payload.as_slice()).unwrap();
                    for op in &ops {
                        apply_value_op(&mut v, op);
                    }
                    out.extend(framed(&to_bytes(&v)));
                } else {
                    out.extend(framed(payload));
                }
            }
            out
        }),
    ];
    run(
        "store on mutated log",
        (cases(20000) / 10).max(1),
        input,
        |bytes| {
            fresh(&bytes);
            match use_everything(dir.path(), true) {
                Ok(()) | Err(Error::Corrupt(_)) => {}
                Err(e) => return Err(TestCaseError::fail(format!("unexpected error: {e:?}"))),
            }
            Ok(())
        },
    );
    // The untouched log reads back and takes every write.
    fresh(&files.iter().find(|(n, _)| n == "numpack.log").unwrap().1);
    use_everything(dir.path(), true).unwrap();
}
