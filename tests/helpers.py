"""Helpers shared by the test modules (fixtures are in conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import numpack

BACKENDS = ("rust", "python")


# The 14 dtypes of the format, as NumPy dtypes (native byte order).
DTYPES = tuple(
    np.dtype(s)
    for s in (
        "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
        "float16", "float32", "float64", "complex64", "complex128",
    )
)  # fmt: skip

# Where the numpack package lives, so subprocesses import the same one.
PACKAGE_ROOT = str(Path(numpack.__file__).resolve().parent.parent)


def _require_rust_env() -> bool:
    value = os.environ.get("NUMPACK_REQUIRE_RUST", "").strip().lower()
    return value not in ("", "0", "false", "no")


def rust_import_error() -> str | None:
    """None if `numpack._core` imports, else why not."""
    try:
        import numpack._core  # noqa: F401
    except ImportError as e:
        return str(e) or type(e).__name__
    return None


def require_backend(name: str) -> None:
    """Skip (or, with NUMPACK_REQUIRE_RUST=1, fail) when backend `name` is not available."""
    if name == "rust":
        why = rust_import_error()
        if why is not None:
            msg = f"rust backend unavailable: numpack._core does not import ({why})"
            if _require_rust_env():
                pytest.fail(msg + "; NUMPACK_REQUIRE_RUST=1 requires it", pytrace=False)
            pytest.skip(msg)


def mount_refused(why: str) -> None:
    """Skip a test that needs `mount` (root, a kernel that allows it) where it is refused,
    or, with NUMPACK_REQUIRE_MOUNT=1 (CI, which runs as root on a VM), fail it."""
    msg = f"{why}; NUMPACK_REQUIRE_MOUNT=1 requires it"
    if os.environ.get("NUMPACK_REQUIRE_MOUNT", "").strip().lower() not in ("", "0", "false", "no"):
        pytest.fail(msg, pytrace=False)
    pytest.skip(why)


def bind_mount_read_only(src, dst) -> None:
    """Bind-mount directory `src` read-only at `dst` (an empty directory); where that is
    refused, `mount_refused`. Undo with `umount -l dst`."""
    for cmd in (["mount", "--bind", str(src), str(dst)],
                ["mount", "-o", "remount,ro,bind", str(dst)]):  # fmt: skip
        try:
            res = subprocess.run(cmd, capture_output=True, text=True)
        except FileNotFoundError:
            mount_refused("mount is not installed")
        if res.returncode:
            subprocess.run(["umount", str(dst)], capture_output=True)
            mount_refused(f"this machine refuses bind mounts: {res.stderr.strip()}")


# -- helpers ------------------------------------------------------------------------------


def snapshot(directory) -> dict:
    """{relative path: bytes} of every file under `directory` (to prove nothing changed)."""
    out = {}
    root = Path(directory)
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = p.read_bytes()
        elif p.is_dir():
            out[str(p.relative_to(root)) + "/"] = b"<dir>"
    return out


def assert_same_array(actual, expected) -> None:
    """Equal values (NaNs equal), and equal dtype and shape."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    np.testing.assert_array_equal(actual, expected)


def data_files(directory) -> list:
    return sorted(p.name for p in Path(directory).iterdir() if p.name.endswith(".npkd"))


def data_bytes(directory) -> int:
    return sum(p.stat().st_size for p in Path(directory).iterdir() if p.name.endswith(".npkd"))


def subprocess_env() -> dict:
    env = dict(os.environ)
    rest = env.get("PYTHONPATH")
    env["PYTHONPATH"] = PACKAGE_ROOT + (os.pathsep + rest if rest else "")
    return env


def run_python(code: str, *args, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter (for crashes or several processes)."""
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=subprocess_env(),
    )


def make_array(dtype, shape, seed: int = 0) -> np.ndarray:
    """A deterministic array of `dtype` and `shape` using the dtype's whole range (and NaN/inf)."""
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    if dtype.kind == "b":
        return rng.integers(0, 2, size=shape).astype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    if dtype.kind == "f":
        a = (rng.standard_normal(size=shape) * 100).astype(dtype)
    else:
        real = rng.standard_normal(size=shape) * 100
        imag = rng.standard_normal(size=shape) * 100
        a = (real + 1j * imag).astype(dtype)
    flat = a.reshape(-1)
    if flat.size >= 3:
        flat[0], flat[1], flat[2] = np.nan, np.inf, -np.inf
    return a


def file_stem(name: str) -> str:
    """The data-file stem FORMAT.md section 3 derives from an array name."""
    import hashlib

    prefix = "".join(c for c in name if c.isascii() and (c.isalnum() or c == "_")).lower()[:32]
    return prefix + "-" + hashlib.sha256(name.encode("utf-8")).hexdigest()[:16]


LOG_MAGIC = b"NPKLOG02"


def log_records(directory) -> tuple[int, list]:
    """The generation and the whole records of numpack.log, read as spec/FORMAT.md 6 says
    with neither backend: `[(payload dict, end offset)]`, stopping at a torn record."""
    import zlib

    import msgpack

    data = (Path(directory) / "numpack.log").read_bytes()
    assert data[:8] == LOG_MAGIC
    generation = int.from_bytes(data[8:16], "little")
    records, at = [], 16
    while at + 8 <= len(data):
        n = int.from_bytes(data[at : at + 4], "little")
        crc = int.from_bytes(data[at + 4 : at + 8], "little")
        payload = data[at + 8 : at + 8 + n]
        if len(payload) < n or zlib.crc32(payload) != crc:
            break
        at += 8 + n
        records.append((msgpack.unpackb(payload, raw=False), at))
    return generation, records


def _apply(meta: dict, op: dict) -> None:
    arrays = meta["arrays"]
    names = [a["name"] for a in arrays]
    if op["op"] == "put":
        e = op["entry"]
        if e["name"] in names:
            arrays[names.index(e["name"])] = e
        else:
            arrays.append(e)
    elif op["op"] == "drop":
        del arrays[names.index(op["name"])]
    else:
        e = arrays[names.index(op["name"])]
        e["modified_us"] = op["modified_us"]
        if "rows" in op:
            e["shape"][0] = op["rows"]
        if "blocks" in op:
            index = bytearray(e["compression"]["blocks"])
            for i in range(0, len(op["blocks"]), 32):
                k = int.from_bytes(op["blocks"][i : i + 8], "little")
                rec = op["blocks"][i + 8 : i + 32]
                if 24 * k == len(index):
                    index += rec
                else:
                    index[24 * k : 24 * k + 24] = rec
            e["compression"]["blocks"] = bytes(index)
        if "deleted" in op:
            old, new = np.frombuffer(e["deleted"], "<u8"), np.frombuffer(op["deleted"], "<u8")
            rows = np.union1d(old, new)
            e["deleted"] = rows.astype("<u8").tobytes()


def read_metadata(directory) -> dict:
    """The store's metadata: the snapshot with the log's commit records applied, read with
    neither backend (spec/FORMAT.md 2, 6)."""
    import msgpack

    with open(Path(directory) / "metadata.npkm", "rb") as f:
        meta = msgpack.unpackb(f.read(), raw=False)
    if (Path(directory) / "numpack.log").exists():
        generation, records = log_records(directory)
        if generation == meta.get("generation"):
            for rec, _ in records:
                if rec["t"] == "commit":
                    for op in rec["ops"]:
                        _apply(meta, op)
                    meta["next_file_id"] = rec["next_file_id"]
    return meta


def write_metadata(directory, meta: dict) -> None:
    """Make `meta` the whole metadata, as a fold would: the snapshot (new file, then rename),
    then an empty log of its generation (none for a version 1 snapshot)."""
    import msgpack

    tmp = Path(directory) / "metadata.npkm.test.tmp"
    tmp.write_bytes(msgpack.packb(meta, use_bin_type=True))
    os.replace(tmp, Path(directory) / "metadata.npkm")
    log = Path(directory) / "numpack.log"
    if meta.get("version") == 1:
        log.unlink(missing_ok=True)
        return
    generation = meta.get("generation", 1)
    if not isinstance(generation, int) or not 0 <= generation < 2**64:
        generation = 1
    tmp = Path(directory) / "numpack.log.test.tmp"
    tmp.write_bytes(LOG_MAGIC + generation.to_bytes(8, "little"))
    os.replace(tmp, log)


def fold(directory) -> None:
    """Fold the log into the snapshot (with neither backend), so the snapshot holds all."""
    write_metadata(directory, read_metadata(directory))
