"""NPY8: a folder of NPYT files that rolls over forever (the `npyt` package's endless mode).

Layout (spec/NPYT.md section 6): files `<t>.npy`, `t` a time in ns since the epoch, strictly
increasing; `.lock`, a raw little-endian uint64 array listing the newest files in order, 0 for
an empty slot. The writer holds an exclusive flock on `.lock` (handed to a newer writer object
of the folder in this process, as NPYT's is) and NPYT's lock on the newest file. Pure Python,
whatever the backend setting, as NPYT.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from pathlib import Path

import numpy as np

from ._errors import CorruptStoreError, InvalidArgumentError, StoreIOError, StoreLockedError
from ._npyt import (
    NPYT,
    Fd,
    as_rows,
    count_arg,
    file_dtype,
    lock,
    map_file,
    pread,
    public_os_errors,
    pwrite,
    superseded,
    take_write_lock,
    try_lock,
    unlock,
)

_INIT_WAIT_S = 2.0  # how long a reader waits for another process to create `.lock`


@public_os_errors
class NPY8:
    """A folder of NPYT files of `capacity_per_file` rows each, newest `query_size` listed.

    Same methods as `npyt.NPY8` (0.4.x)::

        w = NPY8("ticks", capacity_per_file=100_000, dtype=tick).load()
        w.append(rows)               # rolls to a new file when the current one is full
        r = NPY8("ticks").load()     # in another process
        rows = r.read(1024)          # continues into the next file when one is used up

    A batch of rows is never split across files. Files that fall off the list stay on disk
    (shrunk to their data); `merge()` combines them.

    The first append() takes the folder's write lock. A newer object of the same folder in
    this process that appends takes it over (a notebook cell run again); the older object's
    append() then raises WriterSupersededError, and its reads go on. Another process's
    appender gets StoreLockedError.
    """

    def __init__(self, name, capacity_per_file: int = 1024, query_size: int = 8, dtype=None):
        self._path = Path(os.fspath(name))
        self._cpf = max(count_arg(capacity_per_file, "capacity_per_file"), 1)
        self._size = max(count_arg(query_size, "query_size"), 2)  # as npyt: at least 2
        self._dt, self._rs = None, None
        if dtype is not None:
            self._dt, extra = file_dtype(dtype)
            self._rs = extra or None
        self._path.mkdir(parents=True, exist_ok=True)
        self._list_path = self._path / ".lock"
        self._fd = None  # Fd on `.lock`, for pread (everyone) and list repairs
        self._lock = None  # the writer's WriteLock on `.lock`, and `_ticket`, its turn in it
        self._ticket = None
        self._superseded = False  # a newer appender in this process took the folder over
        self._list = None  # the writer's mapped view of `.lock`
        self._writer = None  # NPYT on the newest file (writer only)
        self._reader = None  # NPYT on the file read() is in
        self._reader_ts = 0  # that file's time; load() sets where reading starts
        self._views = {}  # ts -> NPYT opened read-only for head() and tail()
        self._behind = []  # files on disk, for a reader behind the list

    # -- the list ----------------------------------------------------------------------------

    def load(self) -> NPY8:
        """Open (creating if needed) the folder's list; resets the read position."""
        self.close()
        try:
            self._fd = Fd(self._list_path, os.O_RDWR | os.O_CREAT)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            self._fd = Fd(self._list_path, os.O_RDONLY)  # a read-only folder can be read
        fd = self._fd.fd
        if os.fstat(fd).st_size == 0:  # a new folder: one process sizes the list
            if try_lock(fd):
                try:
                    if os.fstat(fd).st_size == 0:
                        os.ftruncate(fd, 8 * self._size)
                finally:
                    unlock(fd)
            deadline = time.monotonic() + _INIT_WAIT_S
            while os.fstat(fd).st_size == 0 and time.monotonic() < deadline:
                time.sleep(0.001)
        size = os.fstat(fd).st_size
        if size == 0 or size % 8:
            raise CorruptStoreError(f"{self._list_path}: {size} bytes is not a list of uint64")
        self._size = size // 8  # the folder's list length wins over query_size
        if try_lock(fd):  # no writer: repair a stale list as npyt's load() does
            try:
                self._rebuild_if_stale()
            except OSError as e:  # a read-only folder is read as it is
                if e.errno not in (errno.EBADF, errno.EACCES, errno.EPERM, errno.EROFS):
                    raise
            finally:
                unlock(fd)
        # read() starts at the oldest file listed now, even if it leaves the list before the
        # first read(); in an empty folder, at the first file to come.
        listed = self._listed()
        self._reader_ts = listed[0] - 1 if listed else 0
        return self

    def _need_loaded(self) -> None:
        if self._fd is None:
            self.load()

    def _slots(self) -> list[int]:
        """The list as stored, read twice until two reads agree (the writer may be shifting)."""
        fd, n = self._fd.fd, 8 * self._size
        a = pread(fd, n, 0)
        while True:
            b = pread(fd, n, 0)
            if a == b:
                return np.frombuffer(a, "<u8").tolist()
            a = b

    def _listed(self) -> list[int]:
        """Listed files, oldest first. While the writer shifts the list a value may show up
        twice; it is still the same file."""
        return sorted(set(self._slots()) - {0})

    def _disk(self) -> list[int]:
        """Every `<t>.npy` in the folder, oldest first."""
        out = []
        for entry in os.scandir(self._path):
            stem, dot, ext = entry.name.partition(".")
            if dot and ext == "npy" and stem.isdigit():
                out.append(int(stem))
        return sorted(out)

    def _file(self, ts: int) -> Path:
        return self._path / f"{ts}.npy"

    def _rebuild_if_stale(self) -> None:
        """List the newest files again when the first listed one is gone (npyt's rule)."""
        slots = self._slots()
        if slots[0] and self._file(slots[0]).exists():
            return
        files = self._disk()[-self._size :]
        want = files + [0] * (self._size - len(files))
        if want != slots:
            pwrite(self._fd.fd, np.array(want, "<u8").tobytes(), 0)

    # -- writing -----------------------------------------------------------------------------

    def _writing(self) -> bool:
        """True while this object is the folder's writer. A superseded writer lets go of its
        files here (the lock and the newest file are the newer object's now)."""
        if self._list is None:
            return False
        if self._lock.holds(self._ticket):
            return True
        self._superseded = True
        self._list = self._lock = self._ticket = None
        if self._writer is not None:
            self._writer.close()  # its lock was handed on as well, or goes now
            self._writer = None
        return False

    def _become_writer(self) -> None:
        if self._writing():
            return
        if self._superseded:
            raise superseded(self._path, "folder", "load() then append()")
        self._lock, self._ticket = take_write_lock(self._list_path, self)
        try:
            self._rebuild_if_stale()
            mm = map_file(self._list_path, self._lock.fd.fd, 8 * self._size, writable=True)
            self._list = np.ndarray((self._size,), "<u8", buffer=mm)
            listed = self._listed()
            if listed and self._file(listed[-1]).exists():
                # Takes the newest file over from an older writer of the folder in this process.
                self._writer = NPYT(self._file(listed[-1]), self._dtype_arg()).load("r+")
                self._dt, self._rs = self._writer._dt, self._writer._rs
        except BaseException:
            self._list = None
            self._lock.give_back(self._ticket)  # to an older writer of the folder, if any
            self._lock = self._ticket = None
            raise

    def _dtype_arg(self):
        if self._dt is None:
            return None
        return self._dt if not self._rs else np.dtype((self._dt, self._rs))

    def append(self, data) -> int:
        """Append rows, in a new file when they do not fit the current one. Returns 0."""
        self._need_loaded()
        self._become_writer()
        if self._dt is None:
            arr = np.asarray(data)
            if arr.ndim == 0:
                raise InvalidArgumentError("append() needs an array with at least 1 dimension")
            self._dt, self._rs = file_dtype(arr.dtype)[0], arr.shape[1:]
        if self._rs is None:
            self._rs = np.asarray(data, dtype=self._dt).shape[1:]
        rows = as_rows(data, self._dt, self._rs, self._path)
        if len(rows) == 0:
            return 0
        if self._writer is not None and self._writer.append(rows) == 0:
            return 0
        self._roll(rows)
        return 0

    def _roll(self, rows) -> None:
        """Start a new file with `rows` and list it, dropping the oldest listed file if the
        list is full. The new file is complete (written, then renamed into place) before it
        is listed, and the dropped file is shrunk before it leaves the list, so merge() never
        meets a file this writer is still changing."""
        listed = self._listed()
        ts = max(time.time_ns(), listed[-1] + 1 if listed else 0)
        while self._file(ts).exists():
            ts += 1
        NPYT(self._file(ts), self._dtype_arg()).save(rows, capacity=max(self._cpf, len(rows)))
        if len(listed) == self._size:
            try:
                with NPYT(self._file(listed[0]))._open("r+", take_over=False) as old:
                    old.resize()
            except (StoreLockedError, StoreIOError, CorruptStoreError):
                pass  # shrinking only saves disk space; a file someone holds keeps its room
            listed = listed[1:]
        # Slot by slot with aligned 8-byte stores, so readers never see a torn value.
        slots = self._list
        for i, t in enumerate([*listed, ts]):
            if slots[i] != t:
                slots[i] = t
        for i in range(len(listed) + 1, self._size):
            slots[i] = 0
        if self._writer is not None:
            self._writer.close()
        self._writer = NPYT(self._file(ts), self._dtype_arg()).load("r+")

    # -- reading -------------------------------------------------------------------------------

    def _empty(self) -> np.ndarray:
        if self._dt is None:
            return np.empty(0)  # as npyt, before any file told the dtype
        return np.empty((0, *(self._rs or ())), self._dt)

    def _next_ts(self) -> int | None:
        """The file after the one read() is in: the next listed one, or, when the reader fell
        behind the list, the next one on disk (dropped files are kept)."""
        listed, cur = self._listed(), self._reader_ts
        if cur in listed:
            i = listed.index(cur)
            return listed[i + 1] if i + 1 < len(listed) else None
        later = [t for t in self._behind if t > cur]
        if not later:  # one scan serves a reader that is many files behind
            self._behind = self._disk()
            later = [t for t in self._behind if t > cur]
        later += [t for t in listed if t > cur]
        return min(later) if later else None

    def read(self, n: int = 1024, prefetch: int = 0) -> np.ndarray:
        """Up to `n` new rows from one file (plus up to `prefetch` rows already read from it);
        when that file is used up and a newer one exists, read() goes on in the newer one."""
        n, prefetch = count_arg(n, "n"), count_arg(prefetch, "prefetch")
        self._need_loaded()
        arr = None
        while True:
            if self._reader is not None:
                arr, new = self._reader._read(n, prefetch)
                if new:
                    return arr
            nxt = self._next_ts()
            if nxt is None:
                return self._empty() if arr is None else arr
            if self._reader is not None:
                # A newer file exists, so the writer is done with this one; rows it published
                # just before rolling over are read now, before moving on.
                arr, new = self._reader._read(n, prefetch)
                if new:
                    return arr
            try:
                reader = NPYT(self._file(nxt), self._dtype_arg()).load("r")
            except (StoreIOError, CorruptStoreError):
                if nxt >= max(self._listed() or [nxt]):
                    return self._empty() if arr is None else arr  # still being created
                if self._file(nxt).exists():
                    raise
                reader = None  # deleted: skip it
            if self._reader is not None:
                self._reader.close()
            self._reader, self._reader_ts, arr = reader, nxt, None
            if reader is not None and self._dt is None:
                self._dt, self._rs = reader._dt, reader._rs

    def _view(self, ts: int) -> NPYT | None:
        """A read-only NPYT on file `ts`, kept while the file is listed."""
        v = self._views.get(ts)
        if v is None:
            try:
                v = NPYT(self._file(ts), self._dtype_arg()).load("r")
            except StoreIOError:
                return None  # removed by hand; head() and tail() skip it
            self._views[ts] = v
            if self._dt is None:
                self._dt, self._rs = v._dt, v._rs
        return v

    def _views_of(self, listed) -> None:
        for ts in set(self._views) - set(listed):
            self._views.pop(ts).close()

    def head(self, n: int = 5) -> list[np.ndarray]:
        """The first `n` rows of the listed files, one array per file, oldest first."""
        n = count_arg(n, "n")
        self._need_loaded()
        listed = self._listed()
        self._views_of(listed)
        out = []
        for ts in listed:
            if n <= 0:
                break
            v = self._view(ts)
            if v is not None and len(arr := v.head(n)):
                out.append(arr)
                n -= len(arr)
        return out

    def tail(self, n: int = 5) -> list[np.ndarray]:
        """The last `n` rows of the listed files, one array per file, oldest first."""
        n = count_arg(n, "n")
        self._need_loaded()
        listed = self._listed()
        self._views_of(listed)
        out = []
        for ts in reversed(listed):
            if n <= 0:
                break
            v = self._view(ts)
            if v is not None and len(arr := v.tail(n)):
                out.insert(0, arr)
                n -= len(arr)
        return out

    def start(self) -> int:
        return 0

    def end(self) -> int:
        """Rows in the newest file; 0 when there is none."""
        self._need_loaded()
        listed = self._listed()
        if self._writing() and self._writer is not None:
            return self._writer.end()
        for ts in reversed(listed):
            v = self._view(ts)
            if v is not None:
                return v.end()
        return 0

    def capacity(self) -> int:
        """capacity_per_file times the list length (as npyt)."""
        return self._cpf * self._size

    def dtype(self) -> np.dtype | None:
        return self._dt

    # -- maintenance -----------------------------------------------------------------------

    def merge(self, batch_size: int = 4) -> bool:
        """Merge files that left the list, `batch_size` at a time, into one file each, named
        `<t>.npy_` after the batch's first (so a later merge leaves them alone).

        Only files older than every listed file and than the newest `query_size + 1` files
        on disk are touched: those the writer no longer changes. Readers must be past them.
        Incomplete batches wait for the next merge. Returns True."""
        batch_size = max(count_arg(batch_size, "batch_size"), 2)
        self._need_loaded()
        listed = self._listed()
        oldest = listed[0] if listed else float("inf")
        files = [t for t in self._disk()[: -(self._size + 1)] if t < oldest]
        for i in range(0, len(files) - batch_size + 1, batch_size):
            batch = files[i : i + batch_size]
            with NPYT(self._file(batch[0]))._open("r+", take_over=False) as first:
                for ts in batch[1:]:
                    first.merge(self._file(ts))
                first.resize()
                first.rename(self._file(batch[0]).with_suffix(".npy_"))
        return True

    def remove(self) -> None:
        """Delete the folder (refused while another process, or another object in this one,
        appends to it)."""
        self._need_loaded()
        if not self._writing():
            if self._superseded:
                raise superseded(self._path, "folder", "load() then append()")
            lock(self._fd.fd, str(self._path))
        self._close_files()
        shutil.rmtree(self._path)
        self.close()

    def _close_files(self) -> None:
        for v in self._views.values():
            v.close()
        self._views.clear()
        for f in (self._writer, self._reader):
            if f is not None:
                f.close()
        self._writer = self._reader = None

    def close(self) -> None:
        """Close every file and give up the writer's lock (unless a newer object took it)."""
        self._close_files()
        self._list = None
        if self._lock is not None:
            self._lock.release(self._ticket)  # nothing, if it was handed on
        self._lock = self._ticket = None
        self._superseded = False
        if self._fd is not None:
            self._fd.close()
            self._fd = None

    def __enter__(self) -> NPY8:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"NPY8({str(self._path)!r}, capacity_per_file={self._cpf}, "
            f"query_size={self._size}, dtype={self._dt})"
        )
