"""The store's write lock: an exclusive `flock` on `numpack.lock`, polled until a timeout."""

from __future__ import annotations

import fcntl
import os
import time
import weakref

from .._errors import StoreLockedError

_POLL_S = 0.005


class WriteLock:
    """Opens the lock file once; each `with` block holds the lock for one call.

    flock belongs to the open file, so two stores on one directory exclude each other even
    inside one process.
    """

    def __init__(self, lock_path: str, store_path: str, timeout: float):
        self._store_path, self._timeout = store_path, timeout
        # Read-only is enough for flock, and lets a store on a read-only medium be read.
        self._fd = os.open(lock_path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
        # A store never closed must not leak its descriptor (and finalize warns about nothing).
        self._release = weakref.finalize(self, os.close, self._fd)

    def __enter__(self) -> WriteLock:
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                raise StoreLockedError(
                    f"{self._store_path}: another process holds the write lock "
                    f"(waited {self._timeout} s)"
                )
            time.sleep(min(_POLL_S, left))

    def __exit__(self, *exc) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self._release()
