//! Writing the store's files: new files whole, files replaced by a temporary file and a
//! rename, and the syncs of the durable mode.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use super::error::Result;

/// Creates `path` and lets `fill` write it; a leftover of an interrupted call of the same
/// name is unlinked first (never truncated: a process may still map it). On failure (a full
/// disk) the file is deleted, so it keeps no space.
pub fn create_with<T>(path: &Path, fill: impl FnOnce(&mut File) -> Result<T>) -> Result<T> {
    remove(path)?;
    let result = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(Into::into)
        .and_then(|mut f| fill(&mut f));
    if result.is_err() {
        let _ = fs::remove_file(path);
    }
    result
}

/// Replaces `dir/name` with `bytes` atomically: written to `name.<pid>.tmp`, then renamed
/// over it. With `durable`, the file is synced before the rename and the directory after.
pub fn replace(dir: &Path, name: &str, bytes: &[u8], durable: bool) -> Result<()> {
    let tmp = dir.join(format!("{name}.{}.tmp", std::process::id()));
    create_with(&tmp, |f| {
        f.write_all(bytes)?;
        if durable {
            f.sync_all()?;
        }
        Ok(())
    })?;
    if let Err(e) = fs::rename(&tmp, dir.join(name)) {
        let _ = fs::remove_file(&tmp);
        return Err(e.into());
    }
    if durable {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Makes a directory's entries (created, renamed files) durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    Ok(File::open(dir)?.sync_all()?)
}

/// Deletes a file; one that is already gone is not an error.
pub fn remove(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}
