//! The undo journal that makes an in-place `replace` atomic (FORMAT.md 6).

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::error::{Error, Result};
use super::naming;

pub const FILE: &str = "numpack.undo";
const MAGIC: &[u8; 8] = b"NPKUNDO1";

/// The old contents of some rows of one data file.
pub struct Section<'a> {
    pub file: &'a str,
    pub row_bytes: usize,
    pub rows: &'a [u64],
    pub old: &'a [u8],
}

/// Writes the journal under a temporary name and renames it into place; with `durable`, it is
/// on disk before the caller touches the data it protects.
pub fn write(dir: &Path, sections: &[Section], durable: bool) -> Result<()> {
    let mut buf = MAGIC.to_vec();
    for s in sections {
        let put = |buf: &mut Vec<u8>, v: u64| buf.extend_from_slice(&v.to_le_bytes());
        put(&mut buf, s.file.len() as u64);
        buf.extend_from_slice(s.file.as_bytes());
        put(&mut buf, s.row_bytes as u64);
        put(&mut buf, s.rows.len() as u64);
        for &r in s.rows {
            put(&mut buf, r);
        }
        buf.extend_from_slice(s.old);
    }
    let tmp = dir.join(format!("{FILE}.tmp"));
    super::store::write_tmp(&tmp, &buf, durable)?;
    fs::rename(&tmp, dir.join(FILE))?;
    if durable {
        super::store::sync_dir(dir)?;
    }
    Ok(())
}

pub fn remove(dir: &Path) -> Result<()> {
    fs::remove_file(dir.join(FILE))?;
    Ok(())
}

/// Undoes an interrupted `replace`, if a journal is there. Returns whether it found one.
pub fn recover(dir: &Path) -> Result<bool> {
    let path = dir.join(FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let corrupt = || Error::Corrupt(format!("{}: undo journal is damaged", path.display()));
    let sections = parse(&bytes).ok_or_else(corrupt)?;
    for (file, row_bytes, rows, old) in sections {
        let f = match OpenOptions::new().write(true).open(dir.join(file)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        let len = f.metadata()?.len();
        for (k, &r) in rows.iter().enumerate().rev() {
            // Row sizes and indexes come from the file: their products and sums may overflow.
            let off = r.checked_mul(row_bytes as u64).ok_or_else(corrupt)?;
            if off
                .checked_add(row_bytes as u64)
                .is_none_or(|end| end > len)
            {
                return Err(corrupt());
            }
            f.write_all_at(&old[k * row_bytes..(k + 1) * row_bytes], off)?;
        }
    }
    remove(dir)?;
    Ok(true)
}

type Parsed<'a> = Vec<(&'a str, usize, Vec<u64>, &'a [u8])>;

fn parse(bytes: &[u8]) -> Option<Parsed<'_>> {
    let mut r = Cursor(bytes.strip_prefix(MAGIC.as_slice())?);
    let mut sections = Vec::new();
    while !r.0.is_empty() {
        let len = r.u64()? as usize;
        let file = std::str::from_utf8(r.take(len)?).ok()?;
        if !naming::is_data_file(file) {
            return None;
        }
        let row_bytes = r.u64()? as usize;
        let n = r.u64()? as usize;
        let rows = r.take(n.checked_mul(8)?)?.chunks_exact(8);
        let rows = rows
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let old = r.take(n.checked_mul(row_bytes)?)?;
        sections.push((file, row_bytes, rows, old));
    }
    Some(sections)
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    }
}
