//! The store: a directory of arrays, its snapshot and commit log, and every call that reads or
//! changes it.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use memmap2::{Mmap, MmapMut, MmapOptions};
use rayon::prelude::*;

use super::blocks;
use super::compress::{self, Layout};
use super::error::{Error, Result};
use super::files;
use super::format::{itemsize, Compressed, Entry, Metadata, VERSION};
use super::gather;
use super::journal;
use super::lock::WriteLock;
use super::log::{self, Op, Record, Update};
use super::naming;
use super::package::{self, Package};
use super::rows::RowMap;

const METADATA: &str = "metadata.npkm";
const LOCK: &str = "numpack.lock";
/// The log is folded into a new snapshot once it is longer than this and than the snapshot.
const FOLD_BYTES: u64 = 1 << 20;

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

/// What identifies one version of a file without reading it: device, inode, size, and the
/// modification and change times.
type Stamp = (u64, u64, u64, i64, i64, i64, i64);

fn stamp_of(st: &fs::Metadata) -> Stamp {
    (
        st.dev(),
        st.ino(),
        st.size(),
        st.mtime(),
        st.mtime_nsec(),
        st.ctime(),
        st.ctime_nsec(),
    )
}

/// Where the metadata in memory was read from (FORMAT.md 5).
#[derive(Clone, Copy)]
enum Source {
    /// The log as `stat` saw it, and the end of the last commit record applied.
    Log { stamp: Stamp, end: u64 },
    /// A log of an older generation (an interrupted fold): the snapshot holds everything.
    Stale { stamp: Stamp },
    /// No log: the snapshot alone.
    Snapshot { stamp: Stamp },
}

/// How far a transaction had come; a failed call goes back to where it started.
#[derive(Clone, Copy)]
struct Savepoint {
    ops: usize,
    created: usize,
    retired: usize,
    undo: usize,
    log_end: u64,
    next_file_id: u64,
}

/// A transaction under way: the write lock, and what its calls did so far.
struct Txn {
    _lock: WriteLock,
    ops: Vec<Op>,
    /// Data files created: deleted if the transaction fails.
    created: Vec<String>,
    /// Data files no longer referenced: deleted after the commit.
    retired: Vec<String>,
    /// Data files written, synced before the commit in durable mode.
    written: HashSet<String>,
    /// The undo records written, to put their rows back if the transaction fails.
    undo: Vec<log::Undo>,
    /// Where the log ends: past the last commit and the undo records written since.
    log_end: u64,
    start: Savepoint,
}

pub struct Store {
    dir: PathBuf,
    /// A package (FORMAT.md 10): the store in one file, read-only; `dir` is its path.
    package: Option<Package>,
    /// Opened by the first call that writes: readers create nothing.
    lock_file: Option<File>,
    timeout: Duration,
    /// fsync data, undo records, commit records, snapshots and the directory (FORMAT.md 6).
    durable: bool,
    meta: Metadata,
    source: Option<Source>,
    /// The log opened for writing, kept while its file stays the same (a fold or a reload
    /// drops it).
    log_file: Option<File>,
    snapshot_len: u64,
    maps: HashMap<String, Arc<Mmap>>,
    /// Writable mappings for `replace`: scattered rows written through a mapping cost a
    /// fraction of one `pwrite` each (no per-call file-time update).
    write_maps: HashMap<String, MmapMut>,
    /// Data files of compressed arrays whose frame headers were all checked (`check_frames`)...
    checked: HashSet<String>,
    /// ...but for these blocks, which other processes' commits set since.
    fresh: HashMap<String, Vec<usize>>,
    txn: Option<Txn>,
}

impl Store {
    pub fn open(dir: &Path, timeout: Duration, durable: bool) -> Result<Self> {
        let package = match fs::metadata(dir) {
            Err(_) => None,
            Ok(m) if m.is_dir() => None,
            // Only regular files are opened: opening a FIFO would block forever.
            Ok(m) if m.is_file() && package::is_package(dir) => Some(Package::open(dir)?),
            Ok(_) => {
                return Err(Error::InvalidArgument(format!(
                    "{} is neither a directory nor a numpack package",
                    dir.display()
                )))
            }
        };
        let mut store = Store {
            dir: dir.to_path_buf(),
            package,
            lock_file: None,
            timeout,
            durable,
            meta: Metadata::empty(),
            source: None,
            log_file: None,
            snapshot_len: 0,
            maps: HashMap::new(),
            write_maps: HashMap::new(),
            checked: HashSet::new(),
            fresh: HashMap::new(),
            txn: None,
        };
        if let Some(p) = &store.package {
            let meta = Metadata::decode(&p.metadata()?, &p.what(METADATA))?;
            // The directory says every member's length: data members are checked at once,
            // as the python backend checks a store's data files (an unknown codec's array
            // fails when read, as in a directory).
            for e in &meta.arrays {
                match e.file_bytes() {
                    Ok(0) | Err(_) => {}
                    Ok(len) => _ = p.check(&e.file, len, &e.name)?,
                }
            }
            let stamp = stamp_of(&fs::metadata(dir)?);
            store.install(meta, 0, Source::Snapshot { stamp });
            return Ok(store);
        }
        if !dir.join(METADATA).exists() && !dir.join(log::FILE).exists() {
            fs::create_dir_all(dir)?;
            store.write(|_| Ok(()))?; // creates it
            return Ok(store);
        }
        store.refresh()?;
        let pending = match store.source {
            Some(Source::Log { stamp, end }) => stamp.2 > end,
            _ => false,
        };
        if pending || dir.join(journal::FILE).exists() {
            // An interrupted call to undo: now, if no one holds the lock (whoever does is in
            // the middle of that call) and the file system lets us.
            let lock = store
                .lock_fd()
                .ok()
                .and_then(|fd| WriteLock::try_acquire(fd).ok().flatten());
            if let Some(lock) = lock {
                store.start(lock)?;
                // A version 1 journal beside a version 2 store (upgrades recover their own).
                journal::recover(dir)?;
                store.txn = None;
            }
        }
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn what(&self) -> String {
        self.dir.display().to_string()
    }

    // -- reading the metadata -------------------------------------------------------------

    /// Brings the metadata up to date with what other processes (or objects) committed: one
    /// `stat` when nothing changed, the new records when the log grew (FORMAT.md 5).
    fn refresh(&mut self) -> Result<()> {
        if self.txn.is_some() || self.package.is_some() {
            // The lock is ours, or a package, which never changes: nothing else changes it.
            return Ok(());
        }
        let log = match self.source {
            // A version 1 store: its snapshot is all there is.
            Some(Source::Snapshot { .. }) if self.meta.version < VERSION => {
                Err(std::io::ErrorKind::NotFound.into())
            }
            _ => fs::metadata(self.dir.join(log::FILE)),
        };
        let st = match log {
            Ok(st) => st,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let st = fs::metadata(self.dir.join(METADATA)).map_err(|e| self.missing(e))?;
                return match self.source {
                    Some(Source::Snapshot { stamp }) if stamp == stamp_of(&st) => Ok(()),
                    _ => self.reload(),
                };
            }
            Err(e) => return Err(e.into()),
        };
        let now = stamp_of(&st);
        match self.source {
            Some(Source::Log { stamp, .. } | Source::Stale { stamp }) if stamp == now => Ok(()),
            Some(Source::Log { stamp, end }) if stamp.0 == now.0 && stamp.1 == now.1 => {
                self.catch_up(stamp, end)
            }
            _ => self.reload(),
        }
    }

    fn missing(&self, e: std::io::Error) -> Error {
        match e.kind() {
            std::io::ErrorKind::NotFound => Error::Corrupt(format!(
                "{}: metadata is missing",
                self.dir.join(METADATA).display()
            )),
            _ => e.into(),
        }
    }

    /// Reads and applies the records another writer appended after `end`.
    fn catch_up(&mut self, seen: Stamp, end: u64) -> Result<()> {
        let f = match File::open(self.dir.join(log::FILE)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return self.reload(),
            Err(e) => return Err(e.into()),
        };
        let st = f.metadata()?;
        if (st.dev(), st.ino()) != (seen.0, seen.1) || st.len() < end {
            return self.reload(); // folded since the stat, or rewritten
        }
        let bytes = read_from(&f, end)?;
        let end = self.apply_log(&bytes, end)?;
        self.source = Some(Source::Log {
            stamp: stamp_of(&st),
            end,
        });
        Ok(())
    }

    /// Reads the snapshot and the log afresh (FORMAT.md 5).
    fn reload(&mut self) -> Result<()> {
        // A fold between reading the snapshot and the log makes the log look newer: read
        // again. A log that stays newer is damaged.
        for _ in 0..100 {
            let path = self.dir.join(METADATA);
            // Bytes and stamp of one file: a stamp stat'ed apart could be a newer file's.
            let file = File::open(&path).map_err(|e| self.missing(e))?;
            let snapshot_stamp = stamp_of(&file.metadata()?);
            let bytes = read_from(&file, 0)?;
            let meta = Metadata::decode(&bytes, &path.display().to_string())?;
            let log_path = self.dir.join(log::FILE);
            let opened = match File::open(&log_path) {
                // A version 1 store has no log: one beside it is not its own.
                Ok(_) if meta.version < VERSION => None,
                Ok(f) => Some(f),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(e.into()),
            };
            let Some(f) = opened else {
                let source = Source::Snapshot {
                    stamp: snapshot_stamp,
                };
                self.install(meta, bytes.len(), source);
                return Ok(());
            };
            let stamp = stamp_of(&f.metadata()?);
            let log_bytes = read_from(&f, 0)?;
            let generation = log::generation(&log_bytes).ok_or_else(|| {
                Error::Corrupt(format!("{}: not a numpack log", log_path.display()))
            })?;
            match generation.cmp(&meta.generation) {
                std::cmp::Ordering::Less => {
                    self.install(meta, bytes.len(), Source::Stale { stamp });
                    return Ok(());
                }
                std::cmp::Ordering::Greater => continue,
                std::cmp::Ordering::Equal => {
                    self.install(
                        meta,
                        bytes.len(),
                        Source::Log {
                            stamp,
                            end: log::HEADER,
                        },
                    );
                    let end = self.apply_log(&log_bytes[log::HEADER as usize..], log::HEADER)?;
                    self.source = Some(Source::Log { stamp, end });
                    return Ok(());
                }
            }
        }
        Err(Error::Corrupt(format!(
            "{}: the log's generation stays ahead of the snapshot's",
            self.what()
        )))
    }

    fn install(&mut self, meta: Metadata, snapshot_len: usize, source: Source) {
        self.log_file = None;
        self.meta = meta;
        self.snapshot_len = snapshot_len as u64;
        self.source = Some(source);
        let live: HashSet<&str> = self.meta.arrays.iter().map(|e| e.file.as_str()).collect();
        self.maps.retain(|f, _| live.contains(f.as_str()));
        self.write_maps.retain(|f, _| live.contains(f.as_str()));
        self.checked.clear();
        self.fresh.clear();
    }

    /// Applies the whole commit records at the start of `bytes`, which start at log offset
    /// `base`; returns the offset past the last one. Undo records are skipped, and not passed
    /// unless a commit follows them.
    fn apply_log(&mut self, bytes: &[u8], base: u64) -> Result<u64> {
        let what = self.dir.join(log::FILE).display().to_string();
        let mut end = base;
        for (payload, at) in log::scan(bytes) {
            let Record::Commit { next_file_id, ops } = log::decode(payload, &what)? else {
                continue;
            };
            let applied = (|| {
                if next_file_id < self.meta.next_file_id {
                    return Err(Error::Corrupt(format!(
                        "{what}: a commit record decreases next_file_id"
                    )));
                }
                for op in &ops {
                    self.note_fresh(op);
                    if let Some(file) = self.meta.apply(op, &what)? {
                        self.maps.remove(&file);
                        self.write_maps.remove(&file);
                    }
                }
                self.meta.next_file_id = next_file_id;
                Ok(())
            })();
            if let Err(e) = applied {
                self.source = None; // half applied: read everything again next time
                return Err(e);
            }
            end = base + at as u64;
        }
        Ok(end)
    }

    /// Blocks another process committed still need their frames checked before a read.
    fn note_fresh(&mut self, op: &Op) {
        match op {
            Op::Put(e) => {
                self.checked.remove(&e.file);
                self.fresh.remove(&e.file);
            }
            Op::Update(u) if !u.blocks.is_empty() => {
                if let Some(e) = self.meta.find(&u.name) {
                    if self.checked.contains(&e.file) {
                        let ks = u.blocks.iter().map(|&(k, _)| k as usize);
                        self.fresh.entry(e.file.clone()).or_default().extend(ks);
                    }
                }
            }
            _ => {}
        }
    }

    // -- transactions -----------------------------------------------------------------------

    fn lock_fd(&mut self) -> Result<RawFd> {
        if self.lock_file.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(self.dir.join(LOCK))?;
            self.lock_file = Some(f);
        }
        Ok(self.lock_file.as_ref().expect("opened above").as_raw_fd())
    }

    /// Starts a transaction: takes the write lock (waiting up to the timeout); the calls
    /// until `commit` make one commit record.
    pub fn begin(&mut self) -> Result<()> {
        if self.package.is_some() {
            return Err(Error::ReadOnly(format!(
                "{} is a package, which is read-only: numpack.io.unpack() makes a store \
                 directory of it that can be changed",
                self.what()
            )));
        }
        if self.txn.is_some() {
            return Err(Error::InvalidArgument(format!(
                "{}: a transaction is already open on this store",
                self.what()
            )));
        }
        let fd = self.lock_fd()?;
        let lock = WriteLock::acquire(fd, self.timeout, &self.what())?;
        self.start(lock)
    }

    /// Holding the lock: a new store created, a version 1 store upgraded, an interrupted
    /// call undone, then the transaction begins on fresh metadata.
    fn start(&mut self, lock: WriteLock) -> Result<()> {
        let log_end = self.prepare()?;
        let start = Savepoint {
            ops: 0,
            created: 0,
            retired: 0,
            undo: 0,
            log_end,
            next_file_id: self.meta.next_file_id,
        };
        self.txn = Some(Txn {
            _lock: lock,
            ops: Vec::new(),
            created: Vec::new(),
            retired: Vec::new(),
            written: HashSet::new(),
            undo: Vec::new(),
            log_end,
            start,
        });
        Ok(())
    }

    /// Returns where the log ends.
    fn prepare(&mut self) -> Result<u64> {
        if self.source.is_none() && !self.dir.join(METADATA).exists() {
            if self.dir.join(log::FILE).exists() {
                // A log without its snapshot: making a new store would lose what it holds.
                return Err(self.missing(std::io::ErrorKind::NotFound.into()));
            }
            self.meta = Metadata::empty();
            self.write_snapshot()?;
            self.write_log()?;
            return Ok(log::HEADER);
        }
        self.refresh()?;
        // Only a version 1 store can hold a version 1 journal.
        if self.meta.version < VERSION {
            journal::recover(&self.dir)?;
            self.meta.version = VERSION;
            self.write_snapshot()?;
            self.write_log()?;
            return Ok(log::HEADER);
        }
        match self.source {
            Some(Source::Log { stamp, end }) if stamp.2 > end => self.recover_tail(end),
            Some(Source::Log { end, .. }) => Ok(end),
            _ => {
                // No log, or one a fold did not replace: a new one for this snapshot.
                self.write_log()?;
                Ok(log::HEADER)
            }
        }
    }

    /// Puts back the rows of the undo records after the last commit (a call that never
    /// committed) and cuts the log there (FORMAT.md 6). Returns where the log ends.
    fn recover_tail(&mut self, end: u64) -> Result<u64> {
        let path = self.dir.join(log::FILE);
        let f = OpenOptions::new().read(true).write(true).open(&path)?;
        let bytes = read_from(&f, end)?;
        // Commit records here too, should the stamp have repeated (FORMAT.md 5): applied,
        // never cut. Only undo records after the last one belong to a call that failed.
        let base = end;
        let end = self.apply_log(&bytes, base)?;
        let bytes = &bytes[(end - base) as usize..];
        let what = path.display().to_string();
        let mut undo = Vec::new();
        for (payload, _) in log::scan(bytes) {
            if let Record::Undo(u) = log::decode(payload, &what)? {
                undo.push(u);
            }
        }
        self.restore(&undo)?;
        f.set_len(end)?;
        if self.durable {
            f.sync_all()?;
        }
        self.source = Some(Source::Log {
            stamp: stamp_of(&f.metadata()?),
            end,
        });
        Ok(end)
    }

    /// Writes undo records' old rows back, the last record first.
    fn restore(&self, undo: &[log::Undo]) -> Result<()> {
        for u in undo.iter().rev() {
            journal::restore(&self.dir, &u.file, u.row_bytes, &u.rows, &u.old)?;
            if self.durable {
                if let Ok(f) = File::open(self.dir.join(&u.file)) {
                    f.sync_all()?;
                }
            }
        }
        Ok(())
    }

    /// The log, open for writing (under the lock).
    fn log_writer(&mut self) -> Result<&File> {
        if self.log_file.is_none() {
            let f = OpenOptions::new()
                .write(true)
                .open(self.dir.join(log::FILE))?;
            self.log_file = Some(f);
        }
        Ok(self.log_file.as_ref().expect("opened above"))
    }

    fn txn(&mut self) -> &mut Txn {
        self.txn.as_mut().expect("inside a transaction")
    }

    fn savepoint(&self) -> Savepoint {
        let t = self.txn.as_ref().expect("inside a transaction");
        Savepoint {
            ops: t.ops.len(),
            created: t.created.len(),
            retired: t.retired.len(),
            undo: t.undo.len(),
            log_end: t.log_end,
            next_file_id: self.meta.next_file_id,
        }
    }

    /// Undoes what the transaction did since `sp`: rows put back, the log cut, files created
    /// deleted, and the metadata as committed with the calls before `sp` applied again.
    fn rollback(&mut self, sp: Savepoint) -> Result<()> {
        let undo = self.txn().undo.split_off(sp.undo);
        self.restore(&undo)?;
        self.log_writer()?.set_len(sp.log_end)?;
        let t = self.txn();
        t.log_end = sp.log_end;
        let created = t.created.split_off(sp.created);
        for f in &created {
            t.written.remove(f); // deleted below: nothing of it to sync at the commit
        }
        t.retired.truncate(sp.retired);
        t.ops.truncate(sp.ops);
        let ops = t.ops.clone();
        self.remove_files(&created);
        self.reload()?;
        let what = self.what();
        for op in &ops {
            self.meta.apply(op, &what)?;
        }
        self.meta.next_file_id = sp.next_file_id;
        Ok(())
    }

    /// Ends the transaction: one commit record of all its calls, then a fold if the log has
    /// grown enough, then the files it retired are deleted and the lock released.
    pub fn commit(&mut self) -> Result<()> {
        let Some(t) = &self.txn else {
            return Err(Error::InvalidArgument(format!(
                "{}: no transaction is open",
                self.what()
            )));
        };
        if !t.ops.is_empty() {
            if let Err(e) = self.write_commit() {
                let start = self.txn().start;
                if self.rollback(start).is_err() {
                    self.source = None;
                }
                self.txn = None;
                return Err(e);
            }
            // The commit stands whatever happens to the fold; the next commit tries again.
            if self.fold().is_err() {
                self.source = None;
            }
        }
        let t = self.txn.take().expect("checked above");
        self.remove_files(&t.retired);
        Ok(())
    }

    /// Ends the transaction, undoing all it did.
    pub fn abort(&mut self) -> Result<()> {
        let Some(t) = &self.txn else {
            return Ok(());
        };
        let start = t.start;
        let result = self.rollback(start);
        if result.is_err() {
            self.source = None;
        }
        self.txn = None;
        result
    }

    fn write_commit(&mut self) -> Result<()> {
        let t = self.txn.as_ref().expect("inside a transaction");
        if self.durable {
            for file in &t.written {
                File::open(self.dir.join(file))?.sync_all()?;
            }
            if !t.created.is_empty() {
                files::sync_dir(&self.dir)?;
            }
        }
        let (record, at) = (log::commit(self.meta.next_file_id, &t.ops)?, t.log_end);
        let durable = self.durable;
        let f = self.log_writer()?;
        f.write_all_at(&record, at)?;
        if durable {
            f.sync_data()?;
        }
        let stamp = stamp_of(&f.metadata()?);
        let end = at + record.len() as u64;
        self.txn().log_end = end;
        self.source = Some(Source::Log { stamp, end });
        Ok(())
    }

    /// Folds the log into a new snapshot once it outgrows both `FOLD_BYTES` and the snapshot.
    fn fold(&mut self) -> Result<()> {
        let Some(Source::Log { end, .. }) = self.source else {
            return Ok(());
        };
        if end <= FOLD_BYTES.max(self.snapshot_len) {
            return Ok(());
        }
        self.meta.generation += 1;
        if let Err(e) = self.write_snapshot() {
            self.meta.generation -= 1;
            return Err(e);
        }
        self.write_log()?;
        self.txn().log_end = log::HEADER;
        Ok(())
    }

    fn write_snapshot(&mut self) -> Result<()> {
        let bytes = self.meta.encode();
        files::replace(&self.dir, METADATA, &bytes, self.durable)?;
        self.snapshot_len = bytes.len() as u64;
        self.source = None;
        Ok(())
    }

    fn write_log(&mut self) -> Result<()> {
        self.log_file = None;
        let header = log::header(self.meta.generation);
        files::replace(&self.dir, log::FILE, &header, self.durable)?;
        let st = fs::metadata(self.dir.join(log::FILE))?;
        self.source = Some(Source::Log {
            stamp: stamp_of(&st),
            end: log::HEADER,
        });
        Ok(())
    }

    /// Runs one writing call: inside a transaction as part of it, else as one of its own. A
    /// call that fails undoes itself.
    fn write<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let own = self.txn.is_none();
        if own {
            self.begin()?;
        }
        let sp = self.savepoint();
        match f(self) {
            Ok(v) => {
                if own {
                    self.commit()?;
                }
                Ok(v)
            }
            Err(e) => {
                if self.rollback(sp).is_err() {
                    self.source = None;
                }
                if own {
                    self.txn = None;
                }
                Err(e)
            }
        }
    }

    /// Applies an op to the metadata and adds it to the transaction.
    fn push(&mut self, op: Op) -> Result<()> {
        let what = self.what();
        if let Some(file) = self.meta.apply(&op, &what)? {
            self.txn().retired.push(file);
        }
        self.txn().ops.push(op);
        Ok(())
    }

    /// Notes a data file this call created (and will fill).
    fn created(&mut self, file: &str) {
        let t = self.txn();
        t.created.push(file.to_owned());
        t.written.insert(file.to_owned());
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.meta
            .find(name)
            .ok_or_else(|| Error::NotFound(format!("no array named {name:?} in {}", self.what())))
    }

    /// Creates the data file of a new entry from its rows, compressed when `level` is given.
    fn create_array(
        &mut self,
        entry: &mut Entry,
        data: &[u8],
        level: Option<i32>,
        block_rows: Option<u64>,
    ) -> Result<()> {
        self.created(&entry.file);
        let path = self.dir.join(&entry.file);
        let Some(level) = level else {
            return files::create_with(&path, |f| Ok(std::io::Write::write_all(f, data)?));
        };
        let layout = entry.layout();
        let block_rows = block_rows.unwrap_or_else(|| layout.default_block_rows());
        let encoded =
            blocks::encode_rows(data, entry.shape[0], layout, (level, block_rows), 0, None)?;
        let records = files::create_with(&path, |f| blocks::write(f, 0, encoded))?;
        entry.set_compressed(Compressed::new(level, block_rows, records));
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
        if let Some(p) = &self.package {
            let map = Arc::new(p.map(&e.file, len as u64, &e.name)?);
            self.maps.insert(e.file.clone(), map.clone());
            return Ok(Some(map));
        }
        let file = self.data_file(e, len as u64)?;
        // SAFETY: numpack never truncates a data file that metadata references (FORMAT.md 3),
        // so the mapped range stays backed by the file for the mapping's lifetime.
        let map = Arc::new(unsafe { MmapOptions::new().len(len).map(&file)? });
        self.maps.insert(e.file.clone(), map.clone());
        Ok(Some(map))
    }

    /// The data file of `e`, opened for reading: a regular file of at least `len` bytes.
    fn data_file(&self, e: &Entry, len: u64) -> Result<File> {
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
        if actual < len {
            return Err(Error::Corrupt(format!(
                "{}: data file of array {:?} holds {actual} bytes, the metadata says {len}",
                path.display(),
                e.name
            )));
        }
        Ok(file)
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

    /// Checks the frame headers of a compressed array's blocks not checked yet.
    fn check_frames(
        &mut self,
        e: &Entry,
        index: &Compressed,
        map: &[u8],
        what: &str,
    ) -> Result<()> {
        let (rows, layout) = (e.shape[0], e.layout());
        if !self.checked.contains(&e.file) {
            blocks::check_frames(map, index, rows, layout, what, 0..index.blocks.len())?;
            self.fresh.remove(&e.file);
            self.checked.insert(e.file.clone());
        } else if let Some(ks) = self.fresh.remove(&e.file) {
            if let Err(err) =
                blocks::check_frames(map, index, rows, layout, what, ks.iter().copied())
            {
                self.fresh.insert(e.file.clone(), ks);
                return Err(err);
            }
        }
        Ok(())
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

    /// The metadata as one snapshot (FORMAT.md 2), the log's records folded in: what a
    /// package holds (FORMAT.md 10).
    pub fn snapshot(&mut self) -> Result<Vec<u8>> {
        self.refresh()?;
        Ok(self.meta.encode())
    }

    /// The format version of the store as it is on disk: 1 until a write upgrades it.
    pub fn format_version(&mut self) -> Result<u64> {
        self.refresh()?;
        Ok(self.meta.version)
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
        let index = e.compressed()?;
        let file = match &self.package {
            Some(p) => p.what(&e.file),
            None => self.dir.join(&e.file).display().to_string(),
        };
        let what = format!("{file} (array {:?})", e.name);
        let map = self.mapping(&e)?;
        if let (Some(index), Some(map)) = (&index, &map) {
            self.check_frames(&e, index, map, &what)?;
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
            rows: e.rows.clone(),
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
            for item in items {
                let mut entry = s.new_entry(item)?;
                s.create_array(&mut entry, item.data, level, block_rows)?;
                s.push(Op::Put(entry))?;
            }
            Ok(())
        })
    }

    fn new_entry(&mut self, item: &Item) -> Result<Entry> {
        let size = itemsize(item.dtype).ok_or_else(|| {
            Error::DType(format!(
                "array {:?}: dtype {:?} is not supported",
                item.name, item.dtype
            ))
        })?;
        check_len(item, size)?;
        let id = self.take_file_id(item.name)?;
        Ok(Entry::new(
            item.name,
            item.dtype,
            item.shape.to_vec(),
            id,
            now_us(),
        ))
    }

    /// The next file id for a new data file of array `name`. An id whose file an entry, or a
    /// file this transaction retires, uses is skipped: only metadata that lied about
    /// `next_file_id` could name it, and that file must not be overwritten (`create_with`
    /// would delete it, and retiring the old entry would then delete the new file).
    fn take_file_id(&mut self, name: &str) -> Result<u64> {
        loop {
            let id = self.meta.next_file_id;
            if id >= i64::MAX as u64 {
                // Readers accept next_file_id up to 2^63 - 1 (FORMAT.md 2).
                return Err(Error::Corrupt(format!(
                    "{}: next_file_id {id} is exhausted",
                    self.what()
                )));
            }
            self.meta.next_file_id = id + 1;
            let file = naming::data_file(name, id);
            let retired = self.txn.as_ref().is_some_and(|t| t.retired.contains(&file));
            if !retired && !self.meta.arrays.iter().any(|e| e.file == file) {
                return Ok(id);
            }
        }
    }

    pub fn append(&mut self, items: &[Item]) -> Result<()> {
        self.write(|s| {
            for item in items {
                let Some(e) = s.meta.find(item.name).cloned() else {
                    let mut entry = s.new_entry(item)?;
                    s.create_array(&mut entry, item.data, None, None)?;
                    s.push(Op::Put(entry))?;
                    continue;
                };
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
                let path = s.dir.join(&e.file);
                let mut update = Update {
                    name: e.name.clone(),
                    modified_us: now_us(),
                    rows: Some(e.shape[0] + item.shape[0]),
                    ..Default::default()
                };
                if let Some(index) = e.compressed()? {
                    let file = s.data_file(&e, index.end)?;
                    update.blocks = append_blocks(&path, &file, &e, &index, item)?;
                    // Its reference to the index would make `push` copy it whole.
                    drop(index);
                } else {
                    let file = OpenOptions::new().write(true).open(&path)?;
                    let end = e.physical_bytes();
                    if file.metadata()?.len() < end {
                        return Err(Error::Corrupt(format!(
                            "{}: data file of array {:?} is shorter than its metadata says",
                            path.display(),
                            e.name
                        )));
                    }
                    file.write_all_at(item.data, end)?;
                }
                s.txn().written.insert(e.file.clone());
                drop(e);
                s.push(Op::Update(update))?;
            }
            Ok(())
        })
    }

    pub fn replace(&mut self, items: &[Replacement]) -> Result<()> {
        self.write(|s| {
            for item in items {
                let view = s.view(item.name)?;
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
                let e = s.entry(item.name)?.clone();
                let physical = view.physical(item.rows);
                let mut update = Update {
                    name: e.name.clone(),
                    modified_us: now_us(),
                    ..Default::default()
                };
                if view.index.is_some() {
                    // New block versions go after the old ones; the commit switches to them.
                    update.blocks =
                        view.replace_blocks(&s.dir.join(&e.file), &physical, item.data)?;
                } else if !physical.is_empty() {
                    s.replace_rows(&e, &view, physical, item.data)?;
                }
                s.txn().written.insert(e.file.clone());
                // Their references to the index would make `push` copy it whole.
                drop((view, e));
                s.push(Op::Update(update))?;
            }
            Ok(())
        })
    }

    /// Overwrites rows of a raw array in place, after logging their old contents.
    fn replace_rows(
        &mut self,
        e: &Entry,
        view: &View,
        physical: Vec<u64>,
        data: &[u8],
    ) -> Result<()> {
        let row = view.row;
        // The old contents of each row once, ascending (a row given twice ends with its last
        // value, written below; its old contents are what undo puts back).
        let mut rows = physical.clone();
        rows.sort_unstable();
        rows.dedup();
        let mut old = vec![0u8; rows.len() * row];
        gather::rows(view.src(), row, &rows, &mut old);
        let record = log::undo(&e.file, row, &rows, &old)?;
        let at = self.txn().log_end;
        let durable = self.durable;
        let f = self.log_writer()?;
        f.write_all_at(&record, at)?;
        if durable {
            f.sync_data()?;
        }
        let t = self.txn();
        t.log_end = at + record.len() as u64;
        t.undo.push(log::Undo {
            file: e.file.clone(),
            row_bytes: row,
            rows,
            old,
        });
        if self.durable {
            // fsync of pages dirtied through a mapping cost ~30 ms here against a few ms for
            // the same rows written with pwrite (bench_store, durable rows).
            let f = OpenOptions::new()
                .write(true)
                .open(self.dir.join(&e.file))?;
            for (k, &r) in physical.iter().enumerate() {
                f.write_all_at(&data[k * row..(k + 1) * row], r * row as u64)?;
            }
        } else {
            let map = self.write_mapping(&e.file, e.physical_bytes() as usize)?;
            write_rows(map, row, &physical, data);
        }
        Ok(())
    }

    pub fn drop_arrays(&mut self, names: &[&str]) -> Result<()> {
        self.write(|s| {
            for name in names {
                s.entry(name)?;
            }
            let gone: Vec<String> = s
                .meta
                .arrays
                .iter()
                .filter(|e| names.contains(&e.name.as_str()))
                .map(|e| e.name.clone())
                .collect();
            for name in gone {
                s.push(Op::Drop(name))?;
            }
            Ok(())
        })
    }

    /// Drops logical rows (ascending, unique) of one array.
    pub fn drop_rows(&mut self, name: &str, rows: &[i64]) -> Result<()> {
        self.write(|s| {
            let view = s.view(name)?;
            view.check_rows(rows)?;
            if rows.is_empty() {
                return Ok(()); // nothing dropped, nothing to commit (as the python backend)
            }
            let deleted = view.physical(rows);
            drop(view); // its reference to the dropped rows would make `push` copy them
            s.push(Op::Update(Update {
                name: name.to_owned(),
                modified_us: now_us(),
                deleted,
                ..Default::default()
            }))
        })
    }

    /// Rewrites arrays with dropped rows to hold only their live rows; with `None`, every
    /// array (but those whose compression this version cannot read), and files no metadata
    /// references are deleted.
    pub fn compact(&mut self, names: Option<&[&str]>) -> Result<()> {
        self.write(|s| {
            if let Some(names) = names {
                for name in names {
                    s.entry(name)?;
                }
            }
            let todo: Vec<Entry> = s
                .meta
                .arrays
                .iter()
                .filter(|e| names.is_none_or(|n| n.contains(&e.name.as_str())))
                .cloned()
                .collect();
            for e in todo {
                if names.is_none() && e.compressed().is_err() {
                    continue; // what cannot be read cannot be rewritten; it stays as it is
                }
                if !s.wasteful(&e)? {
                    continue;
                }
                let view = s.view(&e.name)?;
                let compressed = e.compressed()?;
                let id = s.take_file_id(&e.name)?;
                // The values do not change, so neither does modified_us.
                let mut fresh = Entry::new(&e.name, &e.dtype, e.logical_shape(), id, e.modified_us);
                s.created(&fresh.file);
                let path = s.dir.join(&fresh.file);
                match compressed {
                    Some(index) => {
                        let records = files::create_with(&path, |f| view.recompress(f, &index))?;
                        fresh.set_compressed(Compressed::new(
                            index.level,
                            index.block_rows,
                            records,
                        ));
                    }
                    None => files::create_with(&path, |f| {
                        let mut out = std::io::BufWriter::with_capacity(1 << 22, f);
                        for (_, first, n) in view.rows.runs(0, view.shape[0]) {
                            let (a, b) =
                                (first as usize * view.row, (first + n) as usize * view.row);
                            std::io::Write::write_all(&mut out, &view.src()[a..b])?;
                        }
                        Ok(std::io::Write::flush(&mut out)?)
                    })?,
                }
                s.push(Op::Put(fresh))?;
            }
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

    /// Deletes data and temporary files that no metadata references (left by crashes); files
    /// this transaction retires stay until it commits.
    fn sweep(&mut self) -> Result<()> {
        let mut keep: HashSet<String> = self.meta.arrays.iter().map(|e| e.file.clone()).collect();
        keep.extend(self.txn().retired.iter().cloned());
        for entry in fs::read_dir(&self.dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if (name.ends_with(".npkd") && !keep.contains(&name)) || name.ends_with(".tmp") {
                let _ = fs::remove_file(self.dir.join(&name));
            }
        }
        Ok(())
    }

    pub fn reset(&mut self) -> Result<()> {
        self.write(|s| {
            let names: Vec<String> = s.meta.arrays.iter().map(|e| e.name.clone()).collect();
            for name in names {
                s.push(Op::Drop(name))?;
            }
            Ok(())
        })
    }
}

impl Drop for Store {
    /// A transaction still open when the store goes away is undone, as an exception would.
    fn drop(&mut self) {
        let _ = self.abort();
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

/// Appends `item`'s rows to compressed array `e` (of data file `path`) and returns the block
/// records to set. The partial last block an append leaves is stored raw, so that the next
/// append only writes its rows: a raw last block that ends the file grows in place until full,
/// then it is encoded as any block (FORMAT.md 7). Re-encoding the last block on every append
/// cost a decode and an encode of up to a block, and left a superseded copy behind each time.
fn append_blocks(
    path: &Path,
    file: &File,
    e: &Entry,
    index: &Compressed,
    item: &Item,
) -> Result<Vec<(u64, compress::Record)>> {
    if item.shape[0] == 0 {
        return Ok(Vec::new());
    }
    let (layout, rows, br) = (e.layout(), e.shape[0] + item.shape[0], index.block_rows);
    let full = (e.shape[0] / br) as usize;
    let tail_rows = rows - full as u64 * br;
    let last = index.blocks.get(full);
    let raw_len = (e.shape[0] - full as u64 * br) as usize * layout.row_bytes;
    if let Some(old) = last.filter(|old| old.codec == compress::STORED_RAW && tail_rows < br) {
        // A size that is not the rows' is damage, which `decode` below reports.
        if old.size == raw_len as u64 && old.end() == file.metadata()?.len() {
            // Past the block's end only: a reader of the shorter record reads what it did.
            OpenOptions::new()
                .write(true)
                .open(path)?
                .write_all_at(item.data, old.end())?;
            let mut crc = crc32fast::Hasher::new_with_initial(old.crc32);
            crc.update(item.data);
            let size = old.size + item.data.len() as u64;
            let crc32 = crc.finalize();
            return Ok(vec![(
                full as u64,
                compress::Record {
                    size,
                    crc32,
                    ..*old
                },
            )]);
        }
    }
    let (mut raw, mut keep) = (Vec::new(), None);
    if let Some(old) = last {
        let what = format!("{} (array {:?})", path.display(), e.name);
        // `data_file` checked that the file holds every block, and the index was checked
        // when it was read (FORMAT.md 7): the size is bounded by the file's, the frame is
        // checked by `decode`.
        let mut stored = vec![0u8; old.size as usize];
        file.read_exact_at(&mut stored, old.offset)?;
        raw = compress::decode(&stored, old, layout, raw_len, &what)?;
        // The refilled block keeps its filter, as a replaced one does; one that was stored
        // raw takes its group's, from the block before it (FORMAT.md 7).
        let group = compress::filter_group((br as usize).saturating_mul(layout.row_bytes)) as u64;
        let before = full
            .checked_sub(1)
            .filter(|&k| !(k as u64 + 1).is_multiple_of(group));
        keep = [Some(old), before.and_then(|k| index.blocks.get(k))]
            .into_iter()
            .flatten()
            .find(|r| r.codec == compress::ZSTD)
            .map(|r| r.filter);
    }
    raw.extend_from_slice(item.data);
    let whole_rows = tail_rows / br * br;
    let rest = raw.split_off(whole_rows as usize * layout.row_bytes);
    let level_rows = (index.level, br);
    let mut encoded = blocks::encode_rows(&raw, whole_rows, layout, level_rows, full, keep)?;
    if tail_rows > whole_rows {
        let crc32 = crc32fast::hash(&rest);
        encoded.push(compress::stored_raw(rest, crc32));
    }
    let records = append_to(path, encoded)?;
    Ok(numbered(full, records))
}

/// The bytes of `file` from `offset` to its end.
fn read_from(file: &File, offset: u64) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut f = file;
    f.seek(std::io::SeekFrom::Start(offset))?;
    f.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Records of consecutive blocks from block `first` on.
fn numbered(first: usize, records: Vec<compress::Record>) -> Vec<(u64, compress::Record)> {
    (first as u64..).zip(records).collect()
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
    rows: Arc<RowMap>,
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

    /// Writes `data` into physical rows of a compressed array by appending new versions of the
    /// blocks they touch. Returns the block records to set.
    fn replace_blocks(
        &self,
        path: &Path,
        physical: &[u64],
        data: &[u8],
    ) -> Result<Vec<(u64, compress::Record)>> {
        let index = self.index.as_deref().expect("a compressed array");
        let br = index.block_rows;
        let mut touched: Vec<usize> = physical.iter().map(|&p| (p / br) as usize).collect();
        touched.sort_unstable();
        touched.dedup();
        let reader = self.reader(index);
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
                // The block keeps its filter: sampling again would cost more than the rows.
                let old = index.blocks[k];
                let filter = (old.codec == compress::ZSTD).then_some(old.filter);
                compress::encode_as(raw, self.layout, index.level, filter)
            })
            .collect::<Result<Vec<_>>>()?;
        let records = append_to(path, encoded)?;
        Ok(touched.iter().map(|&k| k as u64).zip(records).collect())
    }

    /// Writes this array's live rows as fresh blocks into `file`, a chunk of blocks at a time.
    fn recompress(&self, file: &mut File, index: &Compressed) -> Result<Vec<compress::Record>> {
        // Whole filter groups (so chunks do not change which filter a block gets), 64 of them;
        // saturating: a huge block_rows must not wrap to 0 (no progress: a hang).
        let block_bytes = (index.block_rows as usize).saturating_mul(self.row);
        let groups = 64 * compress::filter_group(block_bytes) as u64;
        let chunk_rows = index.block_rows.saturating_mul(groups);
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
            let first = (start / index.block_rows) as usize;
            let encoded = blocks::encode_rows(
                &raw,
                stop - start,
                self.layout,
                (index.level, index.block_rows),
                first,
                None,
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
