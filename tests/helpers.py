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


def read_metadata(directory) -> dict:
    import msgpack

    with open(Path(directory) / "metadata.npkm", "rb") as f:
        return msgpack.unpackb(f.read(), raw=False)


def write_metadata(directory, meta: dict) -> None:
    """Replace metadata.npkm as a writer would (new file, then rename)."""
    import msgpack

    tmp = Path(directory) / "metadata.npkm.test.tmp"
    tmp.write_bytes(msgpack.packb(meta, use_bin_type=True))
    os.replace(tmp, Path(directory) / "metadata.npkm")
