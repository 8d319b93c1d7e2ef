"""Packages written by the public NumPack 0.7 (`.npkg`, its `numpack.pack`): extracting one
into the 0.7 store directory it holds, which `import_numpack07` then converts.

The layout, from 0.7's numpack/io/package_io.py (every integer little-endian): the magic
b"NPKG", version u32 (1 or 2), compression u8 (0: none, 1: zstd), file count u32, then per
file: path (u32 length, UTF-8, relative to the store), original size u64, stored size u64 (0:
stored as it is), and the bytes: a zstd stream (or a zlib one, which 0.7 writes under the same
code when zstandard is missing). After the last file, a CRC-32: in version 2 of the CRC-32s of
the files' contents, each as 4 bytes; in version 1 of the contents themselves.
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import BinaryIO

import zstandard

from ._errors import CorruptStoreError

MAGIC = b"NPKG"
_CHUNK = 8 << 20
_ZSTD = b"\x28\xb5\x2f\xfd"


def is_package07(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


def extract(path: str, out: str, verify: bool) -> None:
    """Writes the files of the 0.7 package `path` into the new directory `out`; with `verify`,
    checks the package's CRC. CorruptStoreError when the package is damaged."""

    def bad(why: str) -> CorruptStoreError:
        return CorruptStoreError(f"{path}: not a valid NumPack 0.7 package ({why})")

    os.mkdir(out)
    with open(path, "rb") as f:
        head = f.read(13)
        if len(head) < 13 or head[:4] != MAGIC:
            raise bad("no header")
        version, compression, count = struct.unpack("<IBI", head[4:])
        if version not in (1, 2) or compression not in (0, 1):
            raise bad(f"version {version}, compression {compression}")
        crc = 0
        for _ in range(count):
            (n,) = struct.unpack("<I", _exactly(f, 4, bad))
            rel = _exactly(f, n, bad).decode("utf-8", "replace")
            # A plain file name: 0.7 writes no others, and nothing may land outside `out`.
            if not rel or rel in (".", "..") or "/" in rel or "\\" in rel or "\0" in rel:
                raise bad(f"file name {rel!r}")
            size, stored = struct.unpack("<QQ", _exactly(f, 16, bad))
            with open(os.path.join(out, rel), "xb") as dst:
                file_crc = _write(f, dst, size, stored, bad)
            if version == 2:
                crc = zlib.crc32(file_crc.to_bytes(4, "little"), crc)
            else:  # version 1's CRC runs over the contents themselves: read them again
                with open(os.path.join(out, rel), "rb") as src:
                    while chunk := src.read(_CHUNK):
                        crc = zlib.crc32(chunk, crc)
        tail = f.read(4)
        if verify and (len(tail) < 4 or struct.unpack("<I", tail)[0] != crc):
            raise bad("the CRC does not match")


def _exactly(f: BinaryIO, n: int, bad) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise bad("it ends early")
    return data


def _write(f: BinaryIO, dst: BinaryIO, size: int, stored: int, bad) -> int:
    """Copies one file's `stored` bytes (0: `size` bytes as they are), decompressed, to `dst`;
    returns the CRC-32 of what it wrote, which must be `size` bytes."""
    crc = written = 0
    if stored == 0:
        while written < size:
            chunk = _exactly(f, min(_CHUNK, size - written), bad)
            crc, written = zlib.crc32(chunk, crc), written + dst.write(chunk)
        return crc
    start = f.tell()
    zstd = f.read(4) == _ZSTD
    f.seek(start)
    try:
        if zstd:
            reader = zstandard.ZstdDecompressor().stream_reader(
                _Limited(f, stored), read_size=_CHUNK, closefd=False
            )
            while chunk := reader.read(_CHUNK):
                if written + len(chunk) > size:
                    raise bad("a file is longer than its size")
                crc, written = zlib.crc32(chunk, crc), written + dst.write(chunk)
        else:
            z, left = zlib.decompressobj(), stored
            while left:
                piece = _exactly(f, min(_CHUNK, left), bad)
                left -= len(piece)
                chunk = z.decompress(piece, size - written + 1)
                if written + len(chunk) > size or z.unconsumed_tail:
                    raise bad("a file is longer than its size")
                crc, written = zlib.crc32(chunk, crc), written + dst.write(chunk)
    except (zstandard.ZstdError, zlib.error) as e:
        raise bad(f"a file does not decompress: {e}") from None
    f.seek(start + stored)
    if written != size:
        raise bad("a file is shorter than its size")
    return crc


class _Limited:
    """Reads at most `limit` bytes of `f`."""

    def __init__(self, f: BinaryIO, limit: int):
        self.f, self.left = f, limit

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.f.read(n)
        self.left -= len(data)
        return data
