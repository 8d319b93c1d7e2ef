"""Packages: a store in one file, read in place (spec/FORMAT.md 10). The python backend reads
them with `Package`; `write` makes one of a store directory's files (for `numpack.io.pack`)."""

from __future__ import annotations

import mmap
import os
import stat
import struct
import zlib
from collections.abc import Callable, Iterable

import msgpack

from ._errors import CorruptStoreError
from ._python.naming import is_data_file

MAGIC = b"NPKPKG01"
HEADER = struct.Struct("<8sQQII")  # magic, directory offset, directory length, CRC-32, 0
ALIGN = 4096
# Members this large start on a huge-page boundary, as a file's own data does: the kernel
# then maps its pages around a fault in whole folios, which halved the page faults of
# scattered reads in bench_io; the padding costs at most an eighth of the member.
BIG, BIG_ALIGN = 16 << 20, 2 << 20
METADATA = "metadata.npkm"
_CHUNK = 8 << 20


def is_package(path: str) -> bool:
    """Whether `path` is a regular file that starts with a package's magic."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


class Package:
    """An open package: its file and its members' places `{name: (offset, length, crc)}`."""

    def __init__(self, path: str):
        self.path = path
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            self.members = _directory(fd, path)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def what(self, name: str) -> str:
        """Names a member in error messages."""
        return f"{self.path}:{name}"

    def read(self, name: str) -> bytes:
        """Member `name`'s bytes, their CRC checked (the metadata; data members are mapped)."""
        offset, length, crc = self.members[name]
        data = os.pread(self._fd, length, offset)
        if len(data) != length or zlib.crc32(data) != crc:
            raise CorruptStoreError(f"{self.what(name)}: the CRC does not match")
        return data

    def length(self, name: str, array: str) -> int:
        """The length of the data member `name` of array `array`, which must exist."""
        if name not in self.members:
            raise CorruptStoreError(f"{self.what(name)}: data file of array {array!r} is missing")
        return self.members[name][1]

    def extract(self, name: str, path: str, verify: bool) -> None:
        """Writes member `name` to a new file `path`, checking its CRC when `verify`."""
        offset, length, crc = self.members[name]
        done = actual = 0
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            while done < length:
                chunk = os.pread(self._fd, min(_CHUNK, length - done), offset + done)
                if not chunk:
                    raise CorruptStoreError(f"{self.what(name)}: the package ends inside it")
                if verify:
                    actual = zlib.crc32(chunk, actual)
                _pwrite_all(fd, chunk, done)
                done += len(chunk)
        finally:
            os.close(fd)
        if verify and actual != crc:
            raise CorruptStoreError(f"{self.what(name)}: the CRC does not match")

    def map(self, name: str, length: int) -> mmap.mmap:
        """A read-only mapping of the first `length` (> 0) bytes of member `name`; offsets are
        multiples of 4096, which mmap takes where its granularity divides that (Linux, macOS)."""
        return mmap.mmap(self._fd, length, access=mmap.ACCESS_READ, offset=self.members[name][0])


def _directory(fd: int, path: str) -> dict[str, tuple[int, int, int]]:
    """Reads and validates a package's header and directory (FORMAT.md 10)."""

    def bad(why: str) -> CorruptStoreError:
        return CorruptStoreError(f"{path}: not a valid numpack package ({why})")

    size = os.fstat(fd).st_size
    head = os.pread(fd, HEADER.size, 0)
    if len(head) < HEADER.size:
        raise bad("shorter than its header")
    magic, at, length, crc, zero = HEADER.unpack(head)
    if magic != MAGIC:
        raise bad("wrong magic")
    if zero:
        raise bad("the header's last field is not 0")
    if at < HEADER.size or length > size or at > size - length:
        raise bad("the directory lies outside the file")
    raw = os.pread(fd, length, at)
    if zlib.crc32(raw) != crc:
        raise bad("the directory's CRC does not match")
    try:
        entries = msgpack.unpackb(raw, raw=False, strict_map_key=True)
        if not isinstance(entries, list):
            raise ValueError("not an array")
        members: dict[str, tuple[int, int, int]] = {}
        spans = []
        for entry in entries:
            name, offset, length, crc = entry
            if (
                not isinstance(name, str)
                or not all(type(x) is int and 0 <= x < 2**64 for x in (offset, length))
                or type(crc) is not int
                or not 0 <= crc < 2**32
            ):
                raise ValueError(f"bad member {entry!r}")
            # Names become file names when unpacked: only those a store directory holds.
            if name != METADATA and not is_data_file(name):
                raise bad(f"member {name!r} is not a store's file")
            if offset < HEADER.size or offset % ALIGN or offset + length > at:
                raise bad(f"member {name!r} is misplaced")
            if name in members:
                raise bad(f"member {name!r} appears twice")
            members[name] = (offset, length, crc)
            spans.append((offset, offset + length))
    except CorruptStoreError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise bad(f"directory: {e}") from None
    spans.sort()
    if any(a[1] > b[0] for a, b in zip(spans, spans[1:])):
        raise bad("members overlap")
    if METADATA not in members:
        raise bad("no metadata member")
    return members


def write(
    path: str,
    snapshot: bytes,
    files: Iterable[tuple[str, str]],
    advance: Callable[[int], object] = lambda n: None,
) -> None:
    """Writes a package of the metadata `snapshot` and the data `files` (`(member name,
    path)` pairs) to the new file `path`. `advance(n)` is told of each n bytes copied."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        at = ALIGN
        _pwrite_all(fd, snapshot, at)
        directory = [[METADATA, at, len(snapshot), zlib.crc32(snapshot)]]
        at += len(snapshot)
        for name, src in files:
            align = BIG_ALIGN if os.path.getsize(src) >= BIG else ALIGN
            at = -(-at // align) * align
            length, crc = _copy(src, fd, at, advance)
            directory.append([name, at, length, crc])
            at += length
        raw = msgpack.packb(directory, use_bin_type=True)
        _pwrite_all(fd, raw, at)
        _pwrite_all(fd, HEADER.pack(MAGIC, at, len(raw), zlib.crc32(raw), 0), 0)
    finally:
        os.close(fd)


def _copy(path: str, dst: int, at: int, advance: Callable[[int], object]) -> tuple[int, int]:
    """Copies file `path` into descriptor `dst` at offset `at`; returns its length and CRC."""
    crc = length = 0
    with open(path, "rb", buffering=0) as src:
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        while n := src.readinto(buf):
            chunk = view[:n]
            crc = zlib.crc32(chunk, crc)
            _pwrite_all(dst, chunk, at + length)
            length += n
            advance(n)
    return length, crc


def _pwrite_all(fd: int, data, at: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.pwrite(fd, view, at)
        view, at = view[n:], at + n
