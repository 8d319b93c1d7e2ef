//! Packages: a store in one file, read in place (FORMAT.md 10). numpack writes them from
//! Python (`numpack.io.pack`); the core only reads them.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, MmapOptions};
use serde::Deserialize;

use super::error::{Error, Result};
use super::naming;

pub const MAGIC: &[u8; 8] = b"NPKPKG01";
const HEADER: u64 = 32;
const ALIGN: u64 = 4096;
pub const METADATA: &str = "metadata.npkm";

/// One member: where its bytes are in the package, and their CRC-32.
type Member = (u64, u64, u32);

pub struct Package {
    path: PathBuf,
    file: File,
    members: HashMap<String, Member>,
}

/// Whether the file at `path` starts with a package's magic.
pub fn is_package(path: &Path) -> bool {
    let mut magic = [0u8; 8];
    File::open(path)
        .and_then(|f| f.read_exact_at(&mut magic, 0))
        .is_ok_and(|_| &magic == MAGIC)
}

impl Package {
    /// Opens a package and validates its header and directory (FORMAT.md 10).
    pub fn open(path: &Path) -> Result<Package> {
        let file = File::open(path)?;
        let what = path.display().to_string();
        let bad = |m: &str| Error::Corrupt(format!("{what}: not a valid numpack package ({m})"));
        let size = file.metadata()?.len();
        let mut head = [0u8; HEADER as usize];
        if size < HEADER {
            return Err(bad("shorter than its header"));
        }
        file.read_exact_at(&mut head, 0)?;
        if &head[..8] != MAGIC {
            return Err(bad("wrong magic"));
        }
        let u64_at = |i: usize| u64::from_le_bytes(head[i..i + 8].try_into().expect("8 bytes"));
        let (at, len) = (u64_at(8), u64_at(16));
        let crc = u32::from_le_bytes(head[24..28].try_into().expect("4 bytes"));
        if head[28..] != [0; 4] {
            return Err(bad("the header's last field is not 0"));
        }
        if at < HEADER || len > size || at > size - len {
            return Err(bad("the directory lies outside the file"));
        }
        let mut dir = vec![0u8; len as usize]; // at most the file's size, checked above
        file.read_exact_at(&mut dir, at)?;
        if crc32fast::hash(&dir) != crc {
            return Err(bad("the directory's CRC does not match"));
        }
        // One array and nothing after it, as the Python reader requires.
        let mut de = rmp_serde::Deserializer::new(std::io::Cursor::new(&dir[..]));
        let list = Vec::<(String, u64, u64, u32)>::deserialize(&mut de)
            .map_err(|e| bad(&format!("directory: {e}")))?;
        if de.position() != len {
            return Err(bad("directory: bytes after its array"));
        }
        let mut spans: Vec<(u64, u64)> = Vec::with_capacity(list.len());
        let mut members = HashMap::with_capacity(list.len());
        for (name, offset, length, crc) in list {
            let fits =
                offset >= HEADER && offset % ALIGN == 0 && length <= at && offset <= at - length;
            // Names become file names when unpacked: only those a store directory holds.
            if name != METADATA && !naming::is_data_file(&name) {
                return Err(bad(&format!("member {name:?} is not a store's file")));
            }
            if !fits {
                return Err(bad(&format!("member {name:?} is misplaced")));
            }
            spans.push((offset, offset + length));
            if members
                .insert(name.clone(), (offset, length, crc))
                .is_some()
            {
                return Err(bad(&format!("member {name:?} appears twice")));
            }
        }
        spans.sort_unstable();
        if spans.windows(2).any(|w| w[0].1 > w[1].0) {
            return Err(bad("members overlap"));
        }
        if !members.contains_key(METADATA) {
            return Err(bad("no metadata member"));
        }
        Ok(Package {
            path: path.to_path_buf(),
            file,
            members,
        })
    }

    /// Names a member in error messages.
    pub fn what(&self, name: &str) -> String {
        format!("{}:{name}", self.path.display())
    }

    /// The metadata member's bytes, their CRC checked.
    pub fn metadata(&self) -> Result<Vec<u8>> {
        let (offset, length, crc) = self.members[METADATA];
        let mut bytes = Vec::new();
        bytes
            .try_reserve_exact(length as usize)
            .map_err(|_| Error::Corrupt(format!("{}: too large", self.what(METADATA))))?;
        bytes.resize(length as usize, 0);
        self.file.read_exact_at(&mut bytes, offset)?;
        if crc32fast::hash(&bytes) != crc {
            return Err(Error::Corrupt(format!(
                "{}: the CRC does not match",
                self.what(METADATA)
            )));
        }
        Ok(bytes)
    }

    /// Where data member `name`, the data file of array `array`, starts: it must hold at
    /// least `len` bytes.
    pub fn check(&self, name: &str, len: u64, array: &str) -> Result<u64> {
        let Some(&(offset, length, _)) = self.members.get(name) else {
            return Err(Error::Corrupt(format!(
                "{}: data file of array {array:?} is missing",
                self.what(name)
            )));
        };
        if length < len {
            return Err(Error::Corrupt(format!(
                "{}: data file of array {array:?} holds {length} bytes, the metadata says {len}",
                self.what(name)
            )));
        }
        Ok(offset)
    }

    /// A read-only mapping of the first `len` (> 0) bytes of data member `name`, the data file
    /// of array `array`.
    pub fn map(&self, name: &str, len: u64, array: &str) -> Result<Mmap> {
        let offset = self.check(name, len, array)?;
        // SAFETY: a package is never changed after it is written (FORMAT.md 10), and the
        // member lies inside the file (checked at open).
        Ok(unsafe {
            MmapOptions::new()
                .offset(offset)
                .len(len as usize)
                .map(&self.file)?
        })
    }
}
