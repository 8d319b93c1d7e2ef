//! The store: a directory of arrays, its metadata, and every call that reads or changes it.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use memmap2::{Mmap, MmapMut, MmapOptions};
use rayon::prelude::*;

use super::blocks;
use super::compress::{self, Layout};
use super::error::{Error, Result};
use super::format::{itemsize, Compressed, Entry, Metadata};
use super::gather;
use super::journal::{self, Section};
use super::lock::WriteLock;
use super::naming;
use super::rows::{self, RowMap};

const METADATA: &str = "metadata.npkm";
const LOCK: &str = "numpack.lock";

/// Whole arrays to save, or rows to append: C-order little-endian bytes.
pub struct Item<'a> {
    pub name: &'a str,
    pub dtype: &'a str,
    pub shape: &'a [u64],
    pub data: &'a [u8],
}

/// New contents for logical rows of one array.
pub struct Replacement<'a> {
    pub name: &'a str,
    pub rows: &'a [i64],
    pub data: &'a [u8],
}

/// What identifies one version of the metadata file.
type Stamp = (u64, u64, u64, i64, i64);

fn stamp_of(st: &fs::Metadata) -> Stamp {
    (st.dev(), st.ino(), st.size(), st.mtime(), st.mtime_nsec())
}

pub struct Store {
    dir: PathBuf,
    lock_file: File,
    timeout: Duration,
    /// fsync data, journal, metadata and directory at each commit (power-loss durability).
    durable: bool,
    meta: Metadata,
    stamp: Option<Stamp>,
    maps: HashMap<String, Arc<Mmap>>,
    /// Writable mappings for `replace`: scattered rows written through a mapping cost a
    /// fraction of one `pwrite` each (no per-call file-time update).
    write_maps: HashMap<String, MmapMut>,
    /// Data files of compressed arrays whose index and frame headers were checked against
    /// the current metadata (`check_index`, `check_frames`); emptied when it changes.
    checked: std::collections::HashSet<String>,
}

impl Store {
    pub fn open(dir: &Path, timeout: Duration, durable: bool) -> Result<Self> {
        if dir.exists() && !dir.is_dir() {
            return Err(Error::InvalidArgument(format!(
                "{} is not a directory",
                dir.display()
            )));
        }
        fs::create_dir_all(dir)?;
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(dir.join(LOCK))?;
        let mut store = Store {
            dir: dir.to_path_buf(),
            lock_file,
            timeout,
            durable,
            meta: Metadata::empty(),
            stamp: None,
            maps: HashMap::new(),
            write_maps: HashMap::new(),
            checked: Default::default(),
        };
        if store.dir.join(METADATA).exists() && !store.dir.join(journal::FILE).exists() {
            store.refresh()?;
        } else {
            // A new store, or an interrupted replace to undo: both need the lock.
            store.write(|_| Ok(()))?;
        }
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn what(&self) -> String {
        self.dir.display().to_string()
    }

    /// Reloads the metadata when another process (or object) committed a newer version.
    fn refresh(&mut self) -> Result<()> {
        let path = self.dir.join(METADATA);
        let st = match fs::metadata(&path) {
            Ok(st) => st,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::Corrupt(format!(
                    "{}: metadata is missing",
                    path.display()
                )))
            }
            Err(e) => return Err(e.into()),
        };
        let stamp = stamp_of(&st);
        if self.stamp == Some(stamp) {
            return Ok(());
        }
        let bytes = fs::read(&path)?;
        self.meta = Metadata::decode(&bytes, &path.display().to_string())?;
        self.stamp = Some(stamp);
        let live: std::collections::HashSet<&str> =
            self.meta.arrays.iter().map(|e| e.file.as_str()).collect();
        self.maps.retain(|f, _| live.contains(f.as_str()));
        self.write_maps.retain(|f, _| live.contains(f.as_str()));
        self.checked.clear();
        Ok(())
    }

    /// Runs `f` holding the write lock, on fresh metadata, after undoing any interrupted replace.
    fn write<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let _lock = WriteLock::acquire(self.lock_file.as_raw_fd(), self.timeout, &self.what())?;
        journal::recover(&self.dir)?;
        if self.dir.join(METADATA).exists() {
            self.stamp = None; // the journal may have changed data; re-read under the lock
            self.refresh()?;
        } else {
            self.commit(Metadata::empty())?;
        }
        f(self)
    }

    /// Replaces the metadata file atomically: the commit point of every call.
    fn commit(&mut self, meta: Metadata) -> Result<()> {
        if self.durable {
            // Every data file this call wrote reaches the disk before the metadata naming it.
            for e in &meta.arrays {
                let old = self.meta.find(&e.name);
                if old.is_none_or(|o| {
                    (&o.file, o.modified_us, &o.shape) != (&e.file, e.modified_us, &e.shape)
                }) {
                    File::open(self.dir.join(&e.file))?.sync_all()?;
                }
            }
        }
        let tmp = self
            .dir
            .join(format!("{METADATA}.{}.tmp", std::process::id()));
        write_tmp(&tmp, &meta.encode(), self.durable)?;
        let path = self.dir.join(METADATA);
        fs::rename(&tmp, &path)?;
        if self.durable {
            sync_dir(&self.dir)?;
        }
        let st = fs::metadata(&path)?;
        self.stamp = Some(stamp_of(&st));
        self.meta = meta;
        self.checked.clear();
        Ok(())
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.meta
            .find(name)
            .ok_or_else(|| Error::NotFound(format!("no array named {name:?} in {}", self.what())))
    }

    /// Creates a data file and lets `fill` write it; a leftover of an interrupted call of
    /// the same name is replaced.
    fn create_with<T>(&self, file: &str, fill: impl FnOnce(&mut File) -> Result<T>) -> Result<T> {
        let path = self.dir.join(file);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        let result = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(Error::from)
            .and_then(|mut f| fill(&mut f));
        if result.is_err() {
            let _ = fs::remove_file(&path);
        }
        result
    }

    /// Creates the data file of a new entry from its rows, compressed when `level` is given.
    fn create_array(
        &self,
        entry: &mut Entry,
        data: &[u8],
        level: Option<i32>,
        block_rows: Option<u64>,
    ) -> Result<()> {
        let Some(level) = level else {
            return self.create_with(&entry.file, |f| Ok(f.write_all(data)?));
        };
        let layout = entry.layout();
        let block_rows = block_rows.unwrap_or_else(|| layout.default_block_rows());
        let encoded = blocks::encode_rows(data, entry.shape[0], layout, level, block_rows)?;
        let records = self.create_with(&entry.file, |f| blocks::write(f, 0, encoded))?;
        entry.set_compressed(&Compressed {
            level,
            block_rows,
            blocks: records,
        });
        Ok(())
    }

    fn remove_files(&mut self, files: &[String]) {
        for f in files {
            self.maps.remove(f);
            self.write_maps.remove(f);
            // The store is already consistent; a file we fail to delete is only garbage.
            let _ = fs::remove_file(self.dir.join(f));
        }
    }

    /// A read-only mapping of at least the first `len` bytes of a data file.
    fn mapping(&mut self, e: &Entry) -> Result<Option<Arc<Mmap>>> {
        let len = e.file_bytes()? as usize;
        if len == 0 {
            return Ok(None);
        }
        if let Some(m) = self.maps.get(&e.file).filter(|m| m.len() >= len) {
            return Ok(Some(m.clone()));
        }
        let path = self.dir.join(&e.file);
        // Not opened unless a regular file: opening a FIFO put there would block forever.
        if fs::metadata(&path).is_ok_and(|m| !m.is_file()) {
            return Err(Error::Corrupt(format!(
                "{}: data file of array {:?} is not a regular file",
                path.display(),
                e.name
            )));
        }
        let file = File::open(&path).map_err(|err| match err.kind() {
            std::io::ErrorKind::NotFound => Error::Corrupt(format!(
                "{}: data file of array {:?} is missing",
                path.display(),
                e.name
            )),
            _ => err.into(),
        })?;
        let actual = file.metadata()?.len();
        if actual < len as u64 {
            return Err(Error::Corrupt(format!(
                "{}: data file of array {:?} holds {actual} bytes, the metadata says {len}",
                path.display(),
                e.name
            )));
        }
        // SAFETY: numpack never truncates a data file that metadata references (FORMAT.md 3),
        // so the mapped range stays backed by the file for the mapping's lifetime.
        let map = Arc::new(unsafe { MmapOptions::new().len(len).map(&file)? });
        self.maps.insert(e.file.clone(), map.clone());
        Ok(Some(map))
    }

    /// A writable shared mapping of at least the first `len` (> 0) bytes of a data file.
    fn write_mapping(&mut self, file: &str, len: usize) -> Result<&mut MmapMut> {
        if self.write_maps.get(file).is_none_or(|m| m.len() < len) {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(self.dir.join(file))?;
            // SAFETY: as for `mapping`; the file is at least `len` long (the caller's view
            // checked it) and only this store, under the write lock, writes through it.
            let map = unsafe { MmapOptions::new().len(len).map_mut(&f)? };
            self.write_maps.insert(file.to_owned(), map);
        }
        Ok(self.write_maps.get_mut(file).expect("inserted above"))
    }

    // -- reads ----------------------------------------------------------------------------

    pub fn names(&mut self) -> Result<Vec<String>> {
        self.refresh()?;
        Ok(self.meta.arrays.iter().map(|e| e.name.clone()).collect())
    }

    pub fn entries(&mut self) -> Result<Vec<Entry>> {
        self.refresh()?;
        Ok(self.meta.arrays.clone())
    }

    /// `(dtype, logical shape, modified_us)` of one array.
    pub fn info(&mut self, name: &str) -> Result<(String, Vec<u64>, i64)> {
        self.refresh()?;
        let e = self.entry(name)?;
        Ok((e.dtype.clone(), e.logical_shape(), e.modified_us))
    }

    pub fn view(&mut self, name: &str) -> Result<View> {
        self.refresh()?;
        let e = self.entry(name)?.clone();
        let index = e.compressed()?.map(Arc::new);
        let what = format!("{} (array {:?})", self.dir.join(&e.file).display(), e.name);
        let unchecked = index.is_some() && !self.checked.contains(&e.file);
        if let (Some(index), true) = (&index, unchecked) {
            blocks::check_index(index, e.shape[0], e.row_bytes(), &what)?;
        }
        let map = self.mapping(&e)?;
        if let (Some(index), true) = (&index, unchecked) {
            if let Some(map) = &map {
                blocks::check_frames(map, index, e.shape[0], e.layout(), &what)?;
            }
            self.checked.insert(e.file.clone());
        }
        Ok(View {
            name: e.name.clone(),
            dtype: e.dtype.clone(),
            shape: e.logical_shape(),
            physical_rows: e.shape[0],
            dropped: e.dropped(),
            row: e.row_bytes(),
            layout: e.layout(),
            len: e.file_bytes()? as usize,
            rows: RowMap::new(e.deleted_rows()),
            index,
            map,
            what,
            last_block: Mutex::new(None),
        })
    }

    // -- writes ---------------------------------------------------------------------------

    /// Saves whole arrays: raw, or compressed at zstd `level` in blocks of `block_rows`.
    pub fn save(
        &mut self,
        items: &[Item],
        level: Option<i32>,
        block_rows: Option<u64>,
    ) -> Result<()> {
        self.write(|s| {
            let mut meta = s.meta.clone();
            let mut created = Vec::new();
            let mut retired = Vec::new();
            let result = (|| {
                for item in items {
                    let mut entry = s.new_entry(&mut meta, item)?;
                    created.push(entry.file.clone());
                    s.create_array(&mut entry, item.data, level, block_rows)?;
                    match meta.position(item.name) {
                        Some(p) => retired.push(std::mem::replace(&mut meta.arrays[p], entry).file),
                        None => meta.arrays.push(entry),
                    }
                }
                s.commit(meta)
            })();
            match result {
                Ok(()) => s.remove_files(&retired),
                Err(_) => s.remove_files(&created),
            }
            result
        })
    }

    fn new_entry(&self, meta: &mut Metadata, item: &Item) -> Result<Entry> {
        let size = itemsize(item.dtype).ok_or_else(|| {
            Error::DType(format!(
                "array {:?}: dtype {:?} is not supported",
                item.name, item.dtype
            ))
        })?;
        check_len(item, size)?;
        let id = self.take_file_id(meta, item.name)?;
        Ok(Entry::new(
            item.name,
            item.dtype,
            item.shape.to_vec(),
            id,
            now_us(),
        ))
    }

    /// The next file id for a new data file of array `name`. An id whose file the committed
    /// or the new metadata names is skipped: only metadata that lied about `next_file_id`
    /// could name it, and that file must not be overwritten (`create_with` would delete it,
    /// and retiring the old entry would then delete the new file).
    fn take_file_id(&self, meta: &mut Metadata, name: &str) -> Result<u64> {
        loop {
            let id = meta.next_file_id;
            if id >= i64::MAX as u64 {
                // Readers accept next_file_id up to 2^63 - 1 (FORMAT.md 2).
                return Err(Error::Corrupt(format!(
                    "{}: next_file_id {id} is exhausted",
                    self.what()
                )));
            }
            meta.next_file_id = id + 1;
            let file = naming::data_file(name, id);
            if !self
                .meta
                .arrays
                .iter()
                .chain(&meta.arrays)
                .any(|e| e.file == file)
            {
                return Ok(id);
            }
        }
    }

    pub fn append(&mut self, items: &[Item]) -> Result<()> {
        self.write(|s| {
            let mut meta = s.meta.clone();
            let mut created = Vec::new();
            let result = (|| {
                for item in items {
                    let Some(p) = meta.position(item.name) else {
                        let mut entry = s.new_entry(&mut meta, item)?;
                        created.push(entry.file.clone());
                        s.create_array(&mut entry, item.data, None, None)?;
                        meta.arrays.push(entry);
                        continue;
                    };
                    let e = &mut meta.arrays[p];
                    if e.dtype != item.dtype {
                        return Err(Error::DType(format!(
                            "array {:?}: cannot append {} rows to an array of dtype {}",
                            item.name, item.dtype, e.dtype
                        )));
                    }
                    if item.shape.is_empty() || item.shape[1..] != e.shape[1..] {
                        return Err(Error::ShapeMismatch(format!(
                            "array {:?}: rows of shape {:?} do not fit rows of shape {:?}",
                            item.name,
                            item.shape.get(1..).unwrap_or(&[]),
                            &e.shape[1..]
                        )));
                    }
                    check_len(item, e.itemsize())?;
                    if let Some(index) = e.compressed()? {
                        let view = s.view(item.name)?;
                        let (index, rows) =
                            view.append_blocks(&s.dir.join(&e.file), index, item)?;
                        e.set_compressed(&index);
                        e.shape[0] = rows;
                        e.modified_us = now_us();
                        continue;
                    }
                    let file = OpenOptions::new().write(true).open(s.dir.join(&e.file))?;
                    let end = e.physical_bytes();
                    if file.metadata()?.len() < end {
                        return Err(Error::Corrupt(format!(
                            "{}: data file of array {:?} is shorter than its metadata says",
                            s.dir.join(&e.file).display(),
                            e.name
                        )));
                    }
                    file.write_all_at(item.data, end)?;
                    e.shape[0] += item.shape[0];
                    e.modified_us = now_us();
                }
                s.commit(meta)
            })();
            if result.is_err() {
                s.remove_files(&created);
            }
            result
        })
    }

    pub fn replace(&mut self, items: &[Replacement]) -> Result<()> {
        self.write(|s| {
            let mut meta = s.meta.clone();
            let mut plans = Vec::new();
            for item in items {
                let view = s.view(item.name)?;
                let p = meta.position(item.name).expect("view found it");
                view.check_rows(item.rows)?;
                if item.data.len() != item.rows.len() * view.row {
                    return Err(Error::ShapeMismatch(format!(
                        "array {:?}: {} bytes of rows given for {} rows of {} bytes",
                        item.name,
                        item.data.len(),
                        item.rows.len(),
                        view.row
                    )));
                }
                let physical = view.physical(item.rows);
                if view.index.is_some() {
                    // New block versions go after the old ones; the commit switches to them.
                    let file = s.dir.join(&meta.arrays[p].file);
                    let index = view.replace_blocks(&file, &physical, item.data)?;
                    meta.arrays[p].set_compressed(&index);
                    meta.arrays[p].modified_us = now_us();
                    continue;
                }
                let mut old = vec![0u8; item.data.len()];
                gather::rows(view.src(), view.row, &physical, &mut old);
                plans.push((
                    p,
                    meta.arrays[p].file.clone(),
                    view.row,
                    physical,
                    old,
                    item.data,
                ));
            }
            let sections: Vec<Section> = plans
                .iter()
                .map(|(_, file, row, physical, old, _)| Section {
                    file,
                    row_bytes: *row,
                    rows: physical,
                    old,
                })
                .collect();
            if sections.is_empty() {
                return s.commit(meta);
            }
            journal::write(&s.dir, &sections, s.durable)?;
            let written = (|| {
                for (p, file, row, physical, _, data) in &plans {
                    if physical.is_empty() {
                        continue;
                    }
                    if s.durable {
                        // fsync of pages dirtied through a mapping cost ~30 ms here against a
                        // few ms for the same rows written with pwrite (bench_store, durable rows).
                        let f = OpenOptions::new().write(true).open(s.dir.join(file))?;
                        for (k, &r) in physical.iter().enumerate() {
                            f.write_all_at(&data[k * row..(k + 1) * row], r * *row as u64)?;
                        }
                    } else {
                        let len = meta.arrays[*p].physical_bytes() as usize;
                        let map = s.write_mapping(file, len)?;
                        write_rows(map, *row, physical, data);
                    }
                    meta.arrays[*p].modified_us = now_us();
                }
                s.commit(meta)
            })();
            if let Err(e) = written {
                journal::recover(&s.dir)?;
                return Err(e);
            }
            journal::remove(&s.dir)
        })
    }

    pub fn drop_arrays(&mut self, names: &[&str]) -> Result<()> {
        self.write(|s| {
            for name in names {
                s.entry(name)?;
            }
            let mut meta = s.meta.clone();
            let (gone, kept) = meta
                .arrays
                .into_iter()
                .partition(|e| names.contains(&e.name.as_str()));
            meta.arrays = kept;
            s.commit(meta)?;
            let files: Vec<String> = gone.into_iter().map(|e: Entry| e.file).collect();
            s.remove_files(&files);
            Ok(())
        })
    }

    /// Drops logical rows (ascending, unique) of one array.
    pub fn drop_rows(&mut self, name: &str, rows: &[i64]) -> Result<()> {
        self.write(|s| {
            let view = s.view(name)?;
            view.check_rows(rows)?;
            let mut meta = s.meta.clone();
            let p = meta.position(name).expect("view found it");
            let e = &mut meta.arrays[p];
            let dropped: Vec<u64> = e.deleted_rows().collect();
            e.set_deleted(&rows::merge(&dropped, &view.physical(rows)));
            e.modified_us = now_us();
            s.commit(meta)
        })
    }

    /// Rewrites arrays with dropped rows to hold only their live rows; with `None`, every
    /// array, and files no metadata references are deleted.
    pub fn compact(&mut self, names: Option<&[&str]>) -> Result<()> {
        self.write(|s| {
            if let Some(names) = names {
                for name in names {
                    s.entry(name)?;
                }
            }
            let mut meta = s.meta.clone();
            let mut created = Vec::new();
            let mut retired = Vec::new();
            let result = (|| {
                for p in 0..meta.arrays.len() {
                    let e = &meta.arrays[p];
                    if names.is_some_and(|n| !n.contains(&e.name.as_str())) || !s.wasteful(e)? {
                        continue;
                    }
                    let view = s.view(&e.name)?;
                    let (name, dtype, shape, modified) = (
                        e.name.clone(),
                        e.dtype.clone(),
                        e.logical_shape(),
                        e.modified_us,
                    );
                    let compressed = e.compressed()?;
                    let id = s.take_file_id(&mut meta, &name)?;
                    let mut fresh = Entry::new(&name, &dtype, shape, id, modified);
                    created.push(fresh.file.clone());
                    match compressed {
                        Some(index) => {
                            let records =
                                s.create_with(&fresh.file, |f| view.recompress(f, &index))?;
                            fresh.set_compressed(&Compressed {
                                blocks: records,
                                ..index
                            });
                        }
                        None => s.create_with(&fresh.file, |f| {
                            let mut out = std::io::BufWriter::with_capacity(1 << 22, f);
                            for (_, first, n) in view.rows.runs(0, view.shape[0]) {
                                let (a, b) =
                                    (first as usize * view.row, (first + n) as usize * view.row);
                                out.write_all(&view.src()[a..b])?;
                            }
                            Ok(out.flush()?)
                        })?,
                    }
                    retired.push(std::mem::replace(&mut meta.arrays[p], fresh).file);
                }
                s.commit(meta)
            })();
            if let Err(e) = result {
                s.remove_files(&created);
                return Err(e);
            }
            s.remove_files(&retired);
            if names.is_none() {
                s.sweep()?;
            }
            Ok(())
        })
    }

    /// Whether compaction would reclaim space: dropped rows, or superseded compressed blocks.
    fn wasteful(&self, e: &Entry) -> Result<bool> {
        if e.dropped() > 0 {
            return Ok(true);
        }
        Ok(match e.compressed()? {
            Some(index) => fs::metadata(self.dir.join(&e.file))?.len() > index.stored_bytes(),
            None => false,
        })
    }

    /// Deletes data and temporary files that no metadata references (left by crashes).
    fn sweep(&mut self) -> Result<()> {
        let live: std::collections::HashSet<String> =
            self.meta.arrays.iter().map(|e| e.file.clone()).collect();
        for entry in fs::read_dir(&self.dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if (name.ends_with(".npkd") && !live.contains(&name)) || name.ends_with(".tmp") {
                let _ = fs::remove_file(self.dir.join(&name));
            }
        }
        Ok(())
    }

    pub fn reset(&mut self) -> Result<()> {
        self.write(|s| {
            let mut meta = s.meta.clone();
            let files: Vec<String> = meta.arrays.drain(..).map(|e| e.file).collect();
            s.commit(meta)?;
            s.remove_files(&files);
            Ok(())
        })
    }
}

fn check_len(item: &Item, itemsize: usize) -> Result<()> {
    let want = item
        .shape
        .iter()
        .try_fold(itemsize as u64, |a, &d| a.checked_mul(d));
    if item.shape.is_empty() || want != Some(item.data.len() as u64) {
        return Err(Error::InvalidArgument(format!(
            "array {:?}: {} bytes do not make an array of shape {:?}",
            item.name,
            item.data.len(),
            item.shape
        )));
    }
    Ok(())
}

/// Writes rows in the order given (so a repeated row ends with its last value).
fn write_rows(map: &mut [u8], row: usize, physical: &[u64], data: &[u8]) {
    for (k, &p) in physical.iter().enumerate() {
        let at = p as usize * row;
        map[at..at + row].copy_from_slice(&data[k * row..(k + 1) * row]);
    }
}

/// Writes blocks at the end of an existing data file; bytes there past every record are dead
/// (an interrupted call's) and may be overwritten.
fn append_to(path: &Path, encoded: Vec<compress::Encoded>) -> Result<Vec<compress::Record>> {
    let mut file = OpenOptions::new().write(true).open(path)?;
    let at = file.seek(std::io::SeekFrom::End(0))?;
    blocks::write(&mut file, at, encoded)
}

/// Writes a temporary file whole (synced with `durable`); on failure (a full disk) it is
/// deleted, so it keeps no space.
pub fn write_tmp(path: &Path, bytes: &[u8], durable: bool) -> Result<()> {
    let written = File::create(path).and_then(|mut f| {
        f.write_all(bytes)?;
        if durable {
            f.sync_all()?;
        }
        Ok(())
    });
    if written.is_err() {
        let _ = fs::remove_file(path);
    }
    Ok(written?)
}

/// Makes a directory's entries (created, renamed files) durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    Ok(File::open(dir)?.sync_all()?)
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// A snapshot of one array: the mapping and dropped rows it had when the view was made.
pub struct View {
    pub name: String,
    pub dtype: String,
    /// Logical shape.
    pub shape: Vec<u64>,
    pub dropped: u64,
    physical_rows: u64,
    row: usize,
    layout: Layout,
    len: usize,
    rows: RowMap,
    /// The block index of a compressed array.
    index: Option<Arc<Compressed>>,
    map: Option<Arc<Mmap>>,
    /// Names the data file in error messages.
    what: String,
    last_block: blocks::LastBlock,
}

impl View {
    fn src(&self) -> &[u8] {
        self.map.as_deref().map_or(&[], |m| &m[..self.len])
    }

    fn reader<'a>(&'a self, index: &'a Compressed) -> blocks::Reader<'a> {
        blocks::Reader {
            src: self.src(),
            index,
            layout: self.layout,
            rows: self.physical_rows,
            what: &self.what,
            last: &self.last_block,
        }
    }

    /// Appends `item`'s rows to a compressed array: re-encodes its last block if partial and
    /// writes the new blocks at the end of the file. Returns the new index and row count.
    fn append_blocks(
        &self,
        path: &Path,
        index: Compressed,
        item: &Item,
    ) -> Result<(Compressed, u64)> {
        let rows = self.physical_rows + item.shape[0];
        if item.shape[0] == 0 {
            return Ok((index, rows));
        }
        let full = (self.physical_rows / index.block_rows) as usize;
        let mut raw = Vec::new();
        if full < index.blocks.len() {
            raw = self.reader(&index).block(full)?.to_vec();
        }
        raw.extend_from_slice(item.data);
        let tail_rows = rows - full as u64 * index.block_rows;
        let encoded =
            blocks::encode_rows(&raw, tail_rows, self.layout, index.level, index.block_rows)?;
        let records = append_to(path, encoded)?;
        let mut blocks = index.blocks[..full].to_vec();
        blocks.extend(records);
        Ok((Compressed { blocks, ..index }, rows))
    }

    /// Writes `data` into physical rows of a compressed array by appending new versions of the
    /// blocks they touch. Returns the new index.
    fn replace_blocks(&self, path: &Path, physical: &[u64], data: &[u8]) -> Result<Compressed> {
        let index = self.index.as_deref().expect("a compressed array").clone();
        let br = index.block_rows;
        let mut touched: Vec<usize> = physical.iter().map(|&p| (p / br) as usize).collect();
        touched.sort_unstable();
        touched.dedup();
        let reader = self.reader(&index);
        let mut raws: Vec<Vec<u8>> = touched
            .par_iter()
            .map(|&k| reader.block(k).map(|b| b.to_vec()))
            .collect::<Result<_>>()?;
        let row = self.row;
        for (i, &p) in physical.iter().enumerate() {
            let k = (p / br) as usize;
            let slot = touched.binary_search(&k).expect("touched");
            let at = (p - k as u64 * br) as usize * row;
            raws[slot][at..at + row].copy_from_slice(&data[i * row..(i + 1) * row]);
        }
        let encoded: Vec<_> = raws
            .par_iter()
            .zip(&touched)
            .map(|(raw, &k)| {
                let range = index.rows_of(k, self.physical_rows);
                blocks::encode_rows(raw, range.end - range.start, self.layout, index.level, br)
            })
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .flatten()
            .collect();
        let records = append_to(path, encoded)?;
        let mut blocks = index.blocks.clone();
        for (&k, r) in touched.iter().zip(records) {
            blocks[k] = r;
        }
        Ok(Compressed { blocks, ..index })
    }

    /// Writes this array's live rows as fresh blocks into `file`, a chunk of blocks at a time.
    fn recompress(&self, file: &mut File, index: &Compressed) -> Result<Vec<compress::Record>> {
        // Saturating: a huge block_rows must not wrap to 0 (no progress: a hang).
        let chunk_rows = index.block_rows.saturating_mul(64);
        let mut records = Vec::new();
        let mut start = 0;
        while start < self.shape[0] {
            let stop = (start + chunk_rows).min(self.shape[0]);
            let len = (stop - start) as usize * self.row;
            // The block size comes from metadata: allocate fallibly, never abort.
            let mut raw = Vec::new();
            raw.try_reserve_exact(len).map_err(|_| {
                Error::Corrupt(format!(
                    "{}: blocks of {len} bytes cannot be allocated",
                    self.what
                ))
            })?;
            raw.resize(len, 0);
            self.read(start, stop, &mut raw)?;
            let encoded = blocks::encode_rows(
                &raw,
                stop - start,
                self.layout,
                index.level,
                index.block_rows,
            )?;
            let at = records.last().map_or(0, compress::Record::end);
            records.extend(blocks::write(file, at, encoded)?);
            start = stop;
        }
        Ok(records)
    }

    fn check_rows(&self, rows: &[i64]) -> Result<()> {
        let n = self.shape[0];
        match rows.iter().find(|&&r| r < 0 || r as u64 >= n) {
            Some(bad) => Err(Error::RowIndex(format!(
                "array {:?}: index {bad} is out of bounds for {n} rows",
                self.name
            ))),
            None => Ok(()),
        }
    }

    fn check_out(&self, rows: u64, out: &[u8]) -> Result<()> {
        if out.len() as u64 != rows * self.row as u64 {
            return Err(Error::InvalidArgument(format!(
                "array {:?}: an output of {} bytes cannot hold {rows} rows of {} bytes",
                self.name,
                out.len(),
                self.row
            )));
        }
        Ok(())
    }

    /// Physical rows of checked logical rows.
    fn physical(&self, rows: &[i64]) -> Vec<u64> {
        rows.iter().map(|&r| self.rows.physical(r as u64)).collect()
    }

    /// Reads logical rows `start..stop` into `out`.
    pub fn read(&self, start: u64, stop: u64, out: &mut [u8]) -> Result<()> {
        if start > stop || stop > self.shape[0] {
            return Err(Error::RowIndex(format!(
                "array {:?}: rows {start}..{stop} are out of bounds for {} rows",
                self.name, self.shape[0]
            )));
        }
        self.check_out(stop - start, out)?;
        if let Some(index) = &self.index {
            let runs: Vec<(u64, u64)> = self
                .rows
                .runs(start, stop)
                .into_iter()
                .map(|(_, p, n)| (p, n))
                .collect();
            return self.reader(index).read_runs(&runs, out);
        }
        let row = self.row;
        for (logical, first, n) in self.rows.runs(start, stop) {
            let at = (logical - start) as usize * row;
            let src = &self.src()[first as usize * row..(first + n) as usize * row];
            gather::bytes(src, &mut out[at..at + src.len()]);
        }
        Ok(())
    }

    /// Gathers logical rows, in the order given, into `out`.
    pub fn gather(&self, rows: &[i64], out: &mut [u8]) -> Result<()> {
        self.check_rows(rows)?;
        self.check_out(rows.len() as u64, out)?;
        if let Some(index) = &self.index {
            return self.reader(index).gather(&self.physical(rows), out);
        }
        if self.rows.is_identity() {
            // SAFETY: i64 and u64 share size and alignment, and check_rows proved every value
            // non-negative, so each reads back as the same number.
            let rows =
                unsafe { std::slice::from_raw_parts(rows.as_ptr() as *const u64, rows.len()) };
            gather::rows(self.src(), self.row, rows, out);
        } else {
            gather::rows(self.src(), self.row, &self.physical(rows), out);
        }
        Ok(())
    }

    /// All rows, zero-copy, when none are dropped and there are some.
    pub fn bytes(&self) -> Option<&[u8]> {
        (self.index.is_none() && self.rows.is_identity() && self.len > 0).then(|| self.src())
    }
}
