//! Putting back old rows: of undo records (FORMAT.md 6), and of the undo journal of version 1
//! stores (FORMAT.md 9), which a version 2 writer recovers before it upgrades the store.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::error::{Error, Result};
use super::naming;

pub const FILE: &str = "numpack.undo";
const MAGIC: &[u8; 8] = b"NPKUNDO1";

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
        restore(dir, file, row_bytes, &rows, old).map_err(|e| match e {
            Error::Corrupt(_) => corrupt(),
            e => e,
        })?;
    }
    remove(dir)?;
    Ok(true)
}

fn remove(dir: &Path) -> Result<()> {
    fs::remove_file(dir.join(FILE))?;
    Ok(())
}

/// Writes `old`, the old contents of physical `rows` of `file`, back: last row first, so that
/// for a row listed twice the oldest contents win. A file that is gone is skipped (its rows
/// went with it); rows past its end are `Corrupt`.
pub fn restore(dir: &Path, file: &str, row_bytes: usize, rows: &[u64], old: &[u8]) -> Result<()> {
    let path = dir.join(file);
    let f = match OpenOptions::new().write(true).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let len = f.metadata()?.len();
    let corrupt = || Error::Corrupt(format!("{}: undo names rows past its end", path.display()));
    for (k, &r) in rows.iter().enumerate().rev() {
        // Row sizes and indexes come from a file: their products and sums may overflow.
        let off = r.checked_mul(row_bytes as u64).ok_or_else(corrupt)?;
        if off
            .checked_add(row_bytes as u64)
            .is_none_or(|end| end > len)
        {
            return Err(corrupt());
        }
        f.write_all_at(&old[k * row_bytes..(k + 1) * row_bytes], off)?;
    }
    Ok(())
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
