"""Single-file packages (spec/FORMAT.md 10): pack / unpack / get_package_info, NumPack opening a
package in place read-only with either backend, the file read with neither backend, and
damaged or forged packages, which must end in CorruptStoreError, never in wrong values."""

from __future__ import annotations

import errno
import os
import pickle
import struct
import zlib
from pathlib import Path

import msgpack
import numpy as np
import pytest
from helpers import (
    BACKENDS,
    assert_same_array,
    make_array,
    read_metadata,
    require_backend,
    snapshot,
)

import numpack
from numpack import (
    CorruptStoreError,
    InvalidArgumentError,
    NumPack,
    ReadOnlyStoreError,
    StoreIOError,
)
from numpack.io import get_package_info, pack, to_npy, unpack

HEADER = struct.Struct("<8sQQII")
MAGIC = b"NPKPKG01"
META = "metadata.npkm"


def _make_store(path, backend) -> dict:
    """A store of every kind of array a package must carry; returns {name: live values}."""
    kinds = [("b", "bool", (40,)), ("i8", "i1", (40,)), ("u64", "u8", (40,)), ("f16", "f2", (40,)),
             ("c128", "c16", (40,)), ("f32", "f4", (40, 3, 2)), ("dropped", "i8", (30, 2)),
             ("grown", "f8", (20,)), ("empty", "i2", (0, 3))]  # fmt: skip
    want = {n: make_array(dt, shape, seed) for seed, (n, dt, shape) in enumerate(kinds)}
    comp = make_array(np.int32, (300, 4), 7) // 1000
    more, extra = make_array(np.int32, (10, 4), 10), make_array(np.float64, (7,), 11)
    with NumPack(path, backend=backend) as npk:
        npk.save(want)
        npk.save({"comp": comp}, compress=True, block_rows=64)
        npk.append({"comp": more, "grown": extra})
        npk.drop("dropped", [0, 5, 29])
    want["comp"] = np.concatenate([comp, more])
    want["grown"] = np.concatenate([want["grown"], extra])
    want["dropped"] = np.delete(want["dropped"], [0, 5, 29], axis=0)
    return want


def _package(tmp_path, compression=False, backend=None):
    want = _make_store(tmp_path / "store", backend)
    return pack(tmp_path / "store", tmp_path / "p.npkg", compression=compression), want


def _check_reads(npk: NumPack, want: dict) -> None:
    """Every read call gives `want`'s values."""
    assert sorted(npk.get_member_list()) == sorted(want)
    assert npk.get_shape() == {n: a.shape for n, a in want.items()}
    for name, a in want.items():
        assert npk.get_shape(name) == a.shape
        assert_same_array(npk.load(name), a)
        lazy = npk.load(name, lazy=True)
        assert_same_array(lazy[2:9], a[2:9])
        assert_same_array(lazy[::-3], a[::-3])
        assert_same_array(np.asarray(lazy), a)
        rows = [3, 0, 3, len(a) - 1] if len(a) else []
        assert_same_array(npk.getitem(name, rows), a[rows])
        batches = list(npk.stream_load(name, 7))
        assert all(len(b) <= 7 for b in batches)
        got = np.concatenate(batches) if batches else np.empty_like(a)
        assert_same_array(got, a)


def _read_all(path, backend) -> dict:
    with NumPack(path, backend=backend) as npk:
        return {name: npk.load(name) for name in npk.get_member_list()}


def _directory(data: bytes) -> tuple[int, list]:
    magic, at, length, crc, zero = HEADER.unpack_from(data)
    return at, msgpack.unpackb(data[at : at + length], raw=False)


def _member(data: bytes, name: str, entries=None) -> list:
    """The directory entry `[name, offset, length, crc]` of the metadata (META) or of the data
    member of array `name`, in `entries` (default: the package's directory)."""
    entries = _directory(data)[1] if entries is None else entries
    if name != META:
        _, off, length, _ = _member(data, META)
        arrays = msgpack.unpackb(data[off : off + length], raw=False)["arrays"]
        [name] = [e["file"] for e in arrays if e["name"] == name]
    [entry] = [e for e in entries if e[0] == name]
    return entry


def _bytes_of(data: bytes, name: str) -> bytes:
    _, offset, length, _ = _member(data, name)
    return data[offset : offset + length]


# -- round trip -----------------------------------------------------------------------------


@pytest.mark.parametrize("compression", [False, True])
@pytest.mark.parametrize("writer", BACKENDS)
def test_round_trip(tmp_path, backend, writer, compression):
    """A package of a store (written by either backend) holds every array's live rows: each
    read call on it, with either backend, gives the store's values; compression=True
    compresses every non-empty array, False only those the store had compressed."""
    require_backend(writer)
    want = _make_store(tmp_path / "store", writer)
    pkg = pack(tmp_path / "store", compression=compression)
    assert pkg == tmp_path / "store.npkg" and pkg.is_file()
    with NumPack(pkg, backend=backend) as npk:
        _check_reads(npk, want)
    flags = {n: a["compressed"] for n, a in get_package_info(pkg)["arrays"].items()}
    if compression:
        assert all(flags[n] for n, a in want.items() if len(a))
    else:
        assert flags == {n: n == "comp" for n in want}


def test_raw_lazy_load_maps_the_package(tmp_path, backend):
    """In a compression=False package a raw array's lazy load is zero-copy: a read-only view
    of a mapping of the package file, at the array's member."""
    pkg, want = _package(tmp_path)
    offset = _member(pkg.read_bytes(), "f32")[1]
    with NumPack(pkg, backend=backend) as npk:
        arr = np.asarray(npk.load("f32", lazy=True))
        assert_same_array(arr, want["f32"])
        assert not arr.flags.owndata and not arr.flags.writeable
        with pytest.raises(ValueError):
            arr[0, 0, 0] = 1
        if not os.path.exists("/proc/self/maps"):
            return
        address = arr.ctypes.data
        for line in Path("/proc/self/maps").read_text().splitlines():
            span, _, file_offset, _, _, *where = line.split(maxsplit=5)
            start, end = (int(x, 16) for x in span.split("-"))
            if start <= address < end:
                assert where and where[0] == str(pkg)
                assert int(file_offset, 16) + address - start == offset
                break
        else:
            pytest.fail("the array's memory is in no mapping")


# -- read-only ------------------------------------------------------------------------------


def _transaction(npk):
    with npk.transaction():
        pass


WRITES = {
    "save": lambda n: n.save({"new": np.ones(3)}),
    "save_over": lambda n: n.save({"f32": np.zeros((2, 3, 2), np.float32)}),
    "save_compressed": lambda n: n.save({"new": np.ones(3)}, compress=True),
    "append": lambda n: n.append({"grown": np.ones(2)}),
    "replace": lambda n: n.replace({"grown": np.zeros(1)}, [0]),
    "drop_array": lambda n: n.drop("b"),
    "drop_rows": lambda n: n.drop("grown", [1]),
    "compact": lambda n: n.compact(),
    "update": lambda n: n.update("grown"),
    "reset": lambda n: n.reset(),
    "clone": lambda n: n.clone("b", "b2"),
    "transaction": _transaction,
    "drop_if_exists": lambda n: NumPack(n.path, drop_if_exists=True, backend=n.backend),
}


@pytest.mark.parametrize("call", WRITES)
def test_every_write_is_refused(tmp_path, backend, call):
    """Every call that writes on a package (and opening it with drop_if_exists=True) raises
    ReadOnlyStoreError (an OSError, EROFS), changes no byte of it, adds no file beside it;
    the package still reads."""
    pkg, want = _package(tmp_path)
    before = snapshot(tmp_path)
    with NumPack(pkg, backend=backend) as npk:
        with pytest.raises(ReadOnlyStoreError, match="read-only") as info:
            WRITES[call](npk)
        assert isinstance(info.value, OSError) and info.value.errno == errno.EROFS
        assert_same_array(npk.load("grown"), want["grown"])
    assert snapshot(tmp_path) == before


# -- the file, read with neither backend ----------------------------------------------------


def test_format_read_with_neither_backend(tmp_path):
    """The header, the aligned members with their CRCs, zeros between them, the directory at
    the end; the members are the metadata and the data files it names, nothing else; a raw
    array's member is its bytes."""
    pkg, want = _package(tmp_path)
    data = pkg.read_bytes()
    magic, at, length, crc, zero = HEADER.unpack_from(data)
    assert (magic, zero) == (MAGIC, 0)
    assert at + length == len(data) and zlib.crc32(data[at:]) == crc
    _, entries = _directory(data)
    files = {e["file"] for e in msgpack.unpackb(_bytes_of(data, META), raw=False)["arrays"]}
    assert [e[0] for e in entries].count(META) == 1
    assert {e[0] for e in entries} == {META} | files and len(entries) == len(files) + 1
    end = HEADER.size
    for name, offset, size, member_crc in sorted(entries, key=lambda e: e[1]):
        assert offset % 4096 == 0 and offset >= end, name
        assert data[end:offset] == bytes(offset - end)
        assert zlib.crc32(data[offset : offset + size]) == member_crc, name
        end = offset + size
    assert data[end:at] == bytes(at - end)
    raw = np.frombuffer(_bytes_of(data, "f32"), "<f4").reshape(want["f32"].shape)
    assert_same_array(raw, want["f32"])


def test_big_members_start_on_huge_page_boundaries(tmp_path):
    """Members of 16 MiB or more start at a multiple of 2 MiB (FORMAT.md 10: a writer's habit
    that halves the page faults of scattered reads); small ones at a multiple of 4096."""
    with NumPack(tmp_path / "s") as npk:
        npk.save({"small": np.arange(10), "big": np.zeros((16 << 20) // 8, np.int64)})
    data = pack(tmp_path / "s", tmp_path / "p.npkg", compression=False).read_bytes()
    offsets = {n: o for n, o, size, _ in _directory(data)[1]}
    big, small = _member(data, "big")[1], _member(data, "small")[1]
    assert big % (2 << 20) == 0 and small % 4096 == 0 and small % (2 << 20) != 0
    assert offsets[META] == 4096


# -- damaged and forged packages ------------------------------------------------------------


def _forge(data: bytes, entries=None, raw=None) -> bytes:
    """`data` with its directory replaced by `entries` (or the bytes `raw`), its CRC right."""
    at, _ = _directory(data)
    raw = msgpack.packb(entries, use_bin_type=True) if raw is None else raw
    return HEADER.pack(MAGIC, at, len(raw), zlib.crc32(raw), 0) + data[HEADER.size : at] + raw


def _set(member, field, value, fix_crc=False):
    """A forgery setting `field` (1 offset, 2 length, 3 CRC) of `member` (META, or an array's
    name for its data member) to `value(old)`; `fix_crc` makes its CRC right for its bytes."""

    def forge(data):
        entries = _directory(data)[1]
        e = _member(data, member, entries)
        e[field] = value(e[field])
        if fix_crc:
            e[3] = zlib.crc32(data[e[1] : e[1] + e[2]])
        return _forge(data, entries)

    return forge


def _dir(change):
    """A forgery of the directory `change(data, entries)` returns, its CRC right."""
    return lambda data: _forge(data, change(data, _directory(data)[1]))


def _at(i, value):
    """A damage writing the bytes `value` at `i`."""
    return lambda d: d[:i] + value + d[i + len(value) :]


def _flip(name, at):
    """A damage flipping byte `at` of array `name`'s data member."""

    def forge(d):
        i = _member(d, name)[1] + at
        return d[:i] + bytes([d[i] ^ 255]) + d[i + 1 :]

    return forge


HOSTILE = {
    "truncated_header": (lambda d: d[:20], "header"),
    "truncated_tail": (lambda d: d[:-1], "outside"),
    "truncated_half": (lambda d: d[: len(d) // 2], "outside"),
    "directory_crc": (_at(24, b"\0\0\0\0"), "CRC"),
    "header_not_zero": (_at(28, b"\1"), "last field"),
    "directory_offset": (_at(8, b"\xff" * 8), "outside"),
    "directory_in_header": (_at(8, struct.pack("<Q", 4)), "outside"),
    "directory_length": (_at(16, struct.pack("<Q", 2**63)), "outside"),
    "not_msgpack": (lambda d: _forge(d, raw=b"\xc1"), "directory"),
    "not_an_array": (lambda d: _forge(d, raw=msgpack.packb({"a": 1})), "directory"),
    "bytes_after": (lambda d: _forge(d, raw=msgpack.packb(_directory(d)[1]) + b"\x90"), "dir"),
    "short_entry": (_dir(lambda d, es: [es[0][:3]] + es[1:]), "directory"),
    "negative_offset": (_set(META, 1, lambda o: -4096), "directory|misplaced"),
    "metadata_crc": (_set(META, 3, lambda c: c ^ 1), "CRC"),
    "unaligned": (_set("f32", 1, lambda o: o + 8), "misplaced"),
    "in_header": (_set("f32", 1, lambda o: 0), "misplaced"),
    "overlap": (_set("f32", 1, lambda o: 4096), "overlap"),
    "into_directory": (_set("f32", 2, lambda n: n + 10**6), "misplaced"),
    "past_the_end": (_set("f32", 2, lambda n: 2**64 - 1), "misplaced"),
    "twice": (_dir(lambda d, es: es + [es[1]]), "twice"),
    "dotdot": (_dir(lambda d, es: es + [["../evil", 4096, 0, 0]]), "store's file"),
    "txt": (_dir(lambda d, es: es + [["x.txt", 4096, 0, 0]]), "store's file"),
    "no_metadata": (_dir(lambda d, es: [e for e in es if e[0] != META]), "no metadata"),
    "data_missing": (_dir(lambda d, es: [e for e in es if e != _member(d, "f32")]), "missing"),
    "data_short": (_set("f32", 2, lambda n: n - 1, fix_crc=True), "holds"),
    "compressed_short": (_set("comp", 2, lambda n: n - 1, fix_crc=True), "holds"),
    "compressed_block": (_flip("comp", 5), "CRC|block"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_package_is_corrupt(tmp_path, backend, case):
    """Each damage or forgery FORMAT.md 10 names raises CorruptStoreError (a damaged block when
    its array is read)."""
    pkg, want = _package(tmp_path)
    data = pkg.read_bytes()
    pkg.write_bytes(_forge(data, _directory(data)[1]))  # the control: this forgery is valid
    assert _read_all(pkg, backend).keys() == want.keys()
    damage, why = HOSTILE[case]
    pkg.write_bytes(damage(data))
    with pytest.raises(CorruptStoreError, match=why):
        _read_all(pkg, backend)


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_package_unpack(tmp_path, case):
    """unpack raises CorruptStoreError on each hostile package and leaves no target and no
    temporary files."""
    pkg, _ = _package(tmp_path)
    pkg.write_bytes(HOSTILE[case][0](pkg.read_bytes()))
    before = snapshot(tmp_path)
    with pytest.raises(CorruptStoreError):
        unpack(pkg, tmp_path / "out")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "case", [c for c in HOSTILE if c not in ("data_short", "compressed_short", "compressed_block")]
)
def test_hostile_package_info(tmp_path, case):
    """get_package_info raises CorruptStoreError for each hostile package but those whose
    data only is damaged (it reads no data: that damage is found when read)."""
    pkg, _ = _package(tmp_path)
    damage, why = HOSTILE[case]
    pkg.write_bytes(damage(pkg.read_bytes()))
    with pytest.raises(CorruptStoreError, match=why):
        get_package_info(pkg)


def test_wrong_magic_is_no_package(tmp_path, backend):
    """A file whose magic is wrong is not a package: InvalidArgumentError, as any file."""
    pkg, _ = _package(tmp_path)
    data = pkg.read_bytes()
    pkg.write_bytes(b"NPKPKG02" + data[8:])
    with pytest.raises(InvalidArgumentError, match="neither a directory nor a numpack package"):
        NumPack(pkg, backend=backend)
    with pytest.raises(InvalidArgumentError, match="not a numpack package"):
        get_package_info(pkg)


def test_byte_flips_in_header_directory_and_metadata(tmp_path, backend):
    """A flipped bit anywhere after the magic in the header, the directory, the metadata
    member or the padding either raises CorruptStoreError or changes nothing read."""
    pkg, want = _package(tmp_path)
    data = pkg.read_bytes()
    at, _ = _directory(data)
    _, meta_at, meta_len, _ = _member(data, META)
    positions = [
        *range(8, HEADER.size),
        *range(HEADER.size, meta_at, 97),
        *range(meta_at, meta_at + meta_len),
        *range(meta_at + meta_len, meta_at + 4096, 211),
        *range(at, len(data)),
    ]
    outcomes = set()
    for i in positions:
        damaged = bytearray(data)
        damaged[i] ^= 1 << (i % 8)
        pkg.write_bytes(damaged)
        try:
            got = _read_all(pkg, backend)
        except CorruptStoreError:
            outcomes.add("corrupt")
            continue
        outcomes.add("same")
        assert got.keys() == want.keys(), i
        for name, a in want.items():
            assert_same_array(got[name], a)
    assert outcomes == {"corrupt", "same"}


# -- unpack ---------------------------------------------------------------------------------


def test_unpack_makes_a_writable_store(tmp_path):
    """unpack writes, at the package's path without ".npkg", a store of the members and no
    log, which either backend opens, reads and writes."""
    pkg, want = _package(tmp_path, compression=True)
    out = unpack(pkg)
    assert out == tmp_path / "p" and out.is_dir()
    _, entries = _directory(pkg.read_bytes())
    assert sorted(os.listdir(out)) == sorted(e[0] for e in entries)
    for b in BACKENDS:
        require_backend(b)
        with NumPack(out, backend=b) as npk:
            _check_reads(npk, want)
    with NumPack(out) as npk:
        npk.append({"grown": np.ones(2)})
        want["grown"] = np.concatenate([want["grown"], np.ones(2)])
        npk.drop("b")
        del want["b"]
    for b in BACKENDS:
        with NumPack(out, backend=b) as npk:
            _check_reads(npk, want)


def test_unpack_verifies_data_members(tmp_path):
    """With verify=True a flipped byte inside a data member raises CorruptStoreError and
    leaves no target and no temporary files; verify=False unpacks it as it is."""
    pkg, want = _package(tmp_path)
    data = bytearray(pkg.read_bytes())
    data[_member(bytes(data), "f32")[1]] ^= 0x40
    pkg.write_bytes(data)
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(CorruptStoreError, match="CRC"):
        unpack(pkg)
    assert sorted(os.listdir(tmp_path)) == before
    out = unpack(pkg, verify=False)
    got = _read_all(out, None)["f32"]
    flipped = bytearray(want["f32"].tobytes())
    flipped[0] ^= 0x40
    assert got.shape == want["f32"].shape and got.tobytes() == bytes(flipped)


def test_unpack_target_rules(tmp_path):
    """An existing target raises StoreIOError (EEXIST) and is left as it was, unless
    overwrite=True, which replaces it; a source not ending in .npkg needs a target."""
    pkg, want = _package(tmp_path)
    target = tmp_path / "p"
    target.mkdir()
    (target / "mine.txt").write_text("keep")
    before = snapshot(target)
    with pytest.raises(StoreIOError, match="target exists") as info:
        unpack(pkg)
    assert info.value.errno == errno.EEXIST
    assert snapshot(target) == before
    assert unpack(pkg, overwrite=True) == target
    assert not (target / "mine.txt").exists()
    assert _read_all(target, None).keys() == want.keys()
    other = pkg.rename(tmp_path / "p.bin")
    with pytest.raises(InvalidArgumentError, match="pass the target"):
        unpack(other)
    assert unpack(other, tmp_path / "q") == tmp_path / "q"


# -- pack -----------------------------------------------------------------------------------


def test_pack_target_rules(tmp_path):
    """A missing source raises StoreIOError (ENOENT); an existing target raises it (EEXIST)
    and is left as it was, unless overwrite=True; a target under a file, or in a directory
    that cannot be written, raises it; none leaves files behind. Missing directories are made
    (as NumPack() makes a store's). The read-only directory is skipped as root."""
    with pytest.raises(StoreIOError) as info:
        pack(tmp_path / "nothing", tmp_path / "x.npkg")
    assert info.value.errno == errno.ENOENT and os.listdir(tmp_path) == []
    _make_store(tmp_path / "store", None)
    target = tmp_path / "store.npkg"
    target.write_bytes(b"mine")
    before = snapshot(tmp_path)
    with pytest.raises(StoreIOError, match="target exists") as info:
        pack(tmp_path / "store")
    assert info.value.errno == errno.EEXIST
    with pytest.raises(StoreIOError):
        pack(tmp_path / "store", target / "p.npkg")
    assert snapshot(tmp_path) == before
    assert pack(tmp_path / "store", overwrite=True) == target
    assert numpack._package.is_package(str(target))
    assert pack(tmp_path / "store", tmp_path / "a" / "b" / "p.npkg").is_file()
    if os.geteuid() == 0:
        pytest.skip("running as root: a 0o555 directory does not stop writes")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(StoreIOError):
            pack(tmp_path / "store", locked / "p.npkg")
        assert os.listdir(locked) == []
    finally:
        locked.chmod(0o755)


def test_failed_pack_leaves_nothing(tmp_path):
    """A pack that fails while copying (a damaged compressed block) raises CorruptStoreError,
    leaves no package and no temporary files, and changes nothing in the store."""
    _make_store(tmp_path / "store", None)
    [(file, index)] = [
        (e["file"], e["compression"]["blocks"])
        for e in read_metadata(tmp_path / "store")["arrays"]
        if e["name"] == "comp"
    ]
    at = int.from_bytes(index[24:32], "little") + 5  # inside the second block
    path = tmp_path / "store" / file
    damaged = bytearray(path.read_bytes())
    damaged[at] ^= 0xFF
    path.write_bytes(damaged)
    before = snapshot(tmp_path)
    with pytest.raises(CorruptStoreError):
        pack(tmp_path / "store", tmp_path / "p.npkg")
    assert snapshot(tmp_path) == before


def test_pack_a_package_and_an_open_store(tmp_path, backend):
    """pack works on a store another NumPack holds open (which still writes afterwards), and
    on a package, giving equal values; compression=False keeps compressed arrays compressed."""
    want = _make_store(tmp_path / "store", backend)
    with NumPack(tmp_path / "store", backend=backend) as npk:
        npk.load("b")
        first = pack(tmp_path / "store", tmp_path / "a.npkg", compression=False)
        npk.append({"grown": np.ones(1)})
    again = pack(first, tmp_path / "b.npkg", compression=True)
    raw = pack(again, tmp_path / "c.npkg", compression=False)
    for p in (first, again, raw):
        with NumPack(p, backend=backend) as npk:
            _check_reads(npk, want)
    info = get_package_info(raw)["arrays"]
    assert all(info[n]["compressed"] for n, a in want.items() if len(a))


# -- get_package_info, pickling, converters, other files ------------------------------------


def test_get_package_info(tmp_path):
    """NumPack 0.7's keys, describing the members, plus each array's shape, dtype and
    compression."""
    pkg, want = _package(tmp_path)
    info = get_package_info(pkg)
    assert info.keys() >= {"version", "compression", "file_count", "files", "arrays"}
    assert info["compression"] == 1
    _, entries = _directory(pkg.read_bytes())
    assert info["file_count"] == len(info["files"]) == len(entries)
    sizes = {e[0]: e[2] for e in entries}
    assert {f["name"]: f["original_size"] for f in info["files"]} == sizes
    assert all(f["compressed_size"] >= 0 for f in info["files"])
    assert info["total_compressed_size"] == pkg.stat().st_size
    assert info["total_original_size"] == sum(a.nbytes for a in want.values())
    ratio = info["total_compressed_size"] / info["total_original_size"]
    assert info["compression_ratio"] == pytest.approx(ratio)
    for name, a in want.items():
        got = info["arrays"][name]
        assert (got["shape"], got["dtype"]) == (a.shape, str(a.dtype))
        assert got["compressed"] == (name == "comp")
    assert numpack.get_package_info is get_package_info
    assert (numpack.pack, numpack.unpack) == (pack, unpack)


def test_lazy_array_of_a_package_pickles(tmp_path, backend):
    """A LazyArray of a package pickles, and unpickles by reopening the package."""
    pkg, want = _package(tmp_path)
    with NumPack(pkg, backend=backend) as npk:
        lazies = {n: npk.load(n, lazy=True) for n in ("f32", "comp", "empty")}
    for name, lazy in lazies.items():
        back = pickle.loads(pickle.dumps(lazy))
        assert_same_array(back[:], want[name])
        assert_same_array(np.asarray(back), want[name])


def test_converters_read_a_package(tmp_path):
    """numpack.io.to_npy takes a package path as its input."""
    pkg, want = _package(tmp_path, compression=True)
    to_npy(pkg, tmp_path / "f32.npy", array_names=["f32"])
    assert_same_array(np.load(tmp_path / "f32.npy"), want["f32"])
    to_npy(pkg, tmp_path / "all.npz")
    with np.load(tmp_path / "all.npz") as npz:
        for name, a in want.items():
            assert_same_array(npz[name], a)


@pytest.mark.parametrize("content", [b"", b"hello, not a package", MAGIC[:7]])
def test_other_file_is_refused(tmp_path, backend, content):
    """A regular file that is not a package raises InvalidArgumentError and is not touched."""
    path = tmp_path / "file"
    path.write_bytes(content)
    with pytest.raises(InvalidArgumentError, match="neither a directory nor a numpack package"):
        NumPack(path, backend=backend)
    assert path.read_bytes() == content and os.listdir(tmp_path) == ["file"]
