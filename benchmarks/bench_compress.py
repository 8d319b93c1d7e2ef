"""Compressed arrays (`save(compress=True)`) against npz and against plain zstd.

Per dataset, timed in the same run on the same array, medians of interleaved rounds:

- npz: `np.savez_compressed` (zipfile's deflate, zlib level 6) and `np.load`; a gather has to
  load the whole array, then index it;
- plain zstd: the `zstandard` package at the same level as numpack (default 3), one thread,
  the whole buffer as one frame written to one file; a load reads the file and decompresses it
  (the result is a read-only view over the decompressed bytes, not copied); a gather has to
  decompress everything, then index;
- numpack, each backend: `save({name: arr}, compress=True)` into a store already open, `load`,
  and `getitem` of the rows (which decompresses only the blocks they fall in). The store is
  reopened, untimed, before each load and gather, so that no call finds a block an earlier
  call decoded (the python backend keeps a view's last block, which made whole loads of
  one-block arrays look ten times faster than any decoding).

Ratio = raw bytes / stored bytes (npz and zstd: the file's size; numpack: the compressed blocks'
bytes from `get_metadata()`, the block index excluded). MB/s = raw MB / median time.
"vs npz" = numpack or zstd over npz: ratio of ratios, and speed-ups npz time / other time (above
1: better than npz). Filters are the ones numpack chose, as block counts. No call fsyncs; files
stay in the page cache (the machine has the memory).

Two more tables: the incompressible embeddings saved compressed against the same backend's
uncompressed save, and a gather of 100 random rows from a compressed 1,000,000-row array
against the same backend's uncompressed array. A last table checks issue 4's targets.

The synthetic datasets have `--elements` elements each (4,000,000 by default, fixed seed). The
real ones ship inside scikit-learn (and its photos need pillow) and are used at their own size,
not tiled: tiled copies would let whole-buffer zstd match one copy against the previous one
and report a ratio the data does not have. Without scikit-learn they are skipped with a note.

    python benchmarks/bench_compress.py            # the issue's run: 4,000,000 elements a dataset
    python benchmarks/bench_compress.py --quick    # 200,000 elements, 3 rounds: a quick look
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import fmt_time, machine, medians, print_table  # noqa: E402
from bench_store import BACKENDS, available_backends  # noqa: E402

from numpack import NumPack  # noqa: E402

try:
    import zstandard
except ImportError:  # pragma: no cover - the bench extra installs it
    zstandard = None

K_GATHER = 100


# -- datasets: name -> (description, builder(n, rng) -> array or None with a note) -------------


def timestamps(n, rng):
    gaps = rng.exponential(1e6, n).astype(np.int64) + 1
    return np.int64(1_700_000_000_000_000_000) + np.cumsum(gaps)


def tick_prices(n, rng):
    steps = rng.choice(np.array([-1, 0, 1], dtype=np.int64), size=n, p=[0.25, 0.5, 0.25])
    return np.round((10_000 + np.cumsum(steps)) * 0.01, 2)


def volumes(n, rng):
    return rng.poisson(3.0, n).astype(np.int32) * 100


def embeddings(n, rng):
    return rng.standard_normal((n // 128, 128), dtype=np.float32)


def smooth_field(n, rng):
    side = math.isqrt(n)
    y, x = np.meshgrid(np.linspace(0, 1, side), np.linspace(0, 1, side), indexing="ij")
    f = (
        np.sin(2 * np.pi * 3 * x) * np.cos(2 * np.pi * 2 * y)
        + 0.5 * np.sin(2 * np.pi * (5 * x + 7 * y))
        + 0.001 * rng.standard_normal((side, side))
    )
    return f.astype(np.float32)


def ohlc_bars(n, rng):
    """Open, high, low, close of each run of 4 ticks: one row a bar."""
    w = tick_prices(4 * (n // 4), rng).reshape(-1, 4)
    return np.stack([w[:, 0], w.max(axis=1), w.min(axis=1), w[:, 3]], axis=1)


def sklearn_photos(n, rng):
    from sklearn.datasets import load_sample_images  # needs pillow to decode the JPEGs

    return np.concatenate(load_sample_images().images)


def sklearn_digits(n, rng):
    from sklearn.datasets import load_digits

    return load_digits().data


SYNTHETIC = {
    "timestamps": ("int64 ns timestamps, increasing, exponential gaps of mean 1 ms", timestamps),
    "ticks": ("float64 tick prices: random walk of -1/0/+1 cents from 100.00", tick_prices),
    "volumes": ("int32 volumes: Poisson(3) x 100", volumes),
    "embeddings": ("float32 N(0,1) embeddings, 128 a row: incompressible", embeddings),
    "field": ("float32 smooth 2-D field (sines) + N(0, 0.001) noise, square", smooth_field),
    "bars": ("float64 OHLC bars of 4 ticks each (the ticks' walk), 4 a row", ohlc_bars),
}
REAL = {
    "photos": (
        "REAL: scikit-learn's sample photos china.jpg + flower.jpg, decoded RGB uint8, stacked "
        "(native size, not tiled)",
        sklearn_photos,
    ),
    "digits": (
        "REAL: scikit-learn's load_digits().data, 8x8 images of 0-16 as float64 "
        "(native size, not tiled)",
        sklearn_digits,
    ),
}
DATASETS = {**SYNTHETIC, **REAL}


def build(name: str, n: int):
    """The dataset's array (fixed seed), or None with a printed note if it can't be had."""
    desc, fn = DATASETS[name]
    try:
        return np.ascontiguousarray(fn(n, np.random.default_rng(0)))
    except ImportError as e:
        print(f"\nnote: dataset {name!r} skipped ({desc}): {e}")
        return None


# -- helpers -----------------------------------------------------------------------------------


def ready_backends(backends: list[str], explicit: bool) -> list[str]:
    """The backends that can save compressed arrays; the others are skipped with a note."""
    ok = []
    for b in backends:
        tmp = tempfile.mkdtemp(prefix="npk-bench-")
        try:
            npk = NumPack(tmp, backend=b)
            a = np.arange(10)
            npk.save({"a": a}, compress=True)
            if npk.get_metadata()["arrays"]["a"]["compression"] is None:
                raise RuntimeError("get_metadata() reports no compression")
            if not np.array_equal(npk.load("a"), a):
                raise RuntimeError("load() returned other values")
            npk.close()
            ok.append(b)
        except Exception as e:  # noqa: BLE001 - any failure means "not ready"
            if explicit:
                raise
            print(f"note: backend {b!r} skipped, it cannot save compressed arrays yet: {e!r}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return ok


def describe_filters(comp: dict) -> str:
    f = comp["filters"]
    return ", ".join(f"{k} {v}" for k, v in sorted(f.items(), key=lambda kv: -kv[1]) if v)


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def x(a: float, b: float) -> str:
    return f"{a / b:.2f}x"


def mbs(nbytes: int, t: float) -> str:
    return f"{nbytes / 1e6 / t:,.0f}"


def shape_str(a: np.ndarray) -> str:
    return "(" + ", ".join(f"{d:,}" for d in a.shape) + ")"


# -- the per-dataset table ---------------------------------------------------------------------

INCLUDES = {
    "npz": "np.savez_compressed / np.load; gather: load all, then index",
    "zstd": "zstandard, 1 thread, one frame, file written / read + decompress (no copy); "
    "gather: decompress all, then index",
    "numpack": "save(compress=True) into an open store / load() / getitem(), which decodes the "
    "blocks hit; store reopened (untimed) before each load and gather: no block kept decoded",
}


class Stores:
    """Open stores by key; `reopen()` closes and opens them again, so that a timed read finds
    no block decoded by an earlier call (the python backend keeps a view's last block)."""

    def __init__(self, paths: dict):
        self.paths = paths
        self.open = {k: NumPack(path, backend=b) for k, (path, b) in paths.items()}

    def reopen(self) -> None:
        for k, (path, b) in self.paths.items():
            self.open[k].close()
            self.open[k] = NumPack(path, backend=b)

    def __getitem__(self, k):
        return self.open[k]

    def close(self) -> None:
        for s in self.open.values():
            s.close()


def dataset_table(name: str, arr: np.ndarray, backends, level, repeat, tmp) -> tuple[list, dict]:
    """Rows for npz, plain zstd and each backend on one array; also the raw numbers."""
    raw = arr.nbytes
    rows = arr.shape[0]
    rng = np.random.default_rng(1)
    npz = os.path.join(tmp, "a.npz")
    zpath = os.path.join(tmp, "a.zst")
    cctx = zstandard.ZstdCompressor(level=level)
    dctx = zstandard.ZstdDecompressor()
    stores = Stores({b: (os.path.join(tmp, b), b) for b in backends})

    def zstd_save():
        with open(zpath, "wb") as f:
            f.write(cctx.compress(arr))

    def zstd_load():
        with open(zpath, "rb") as f:
            data = f.read()
        return np.frombuffer(dctx.decompress(data), dtype=arr.dtype).reshape(arr.shape)

    def npz_load():
        with np.load(npz) as f:
            return f["a"]

    saves = {"npz": lambda: np.savez_compressed(npz, a=arr), "zstd": zstd_save}
    loads = {"npz": npz_load, "zstd": zstd_load}
    cur = {}
    gathers = {"npz": lambda: npz_load()[cur["i"]], "zstd": lambda: zstd_load()[cur["i"]]}
    for b in backends:
        saves[b] = lambda b=b: stores[b].save({"a": arr}, compress=True, compression_level=level)
        loads[b] = lambda b=b: stores[b].load("a")
        gathers[b] = lambda b=b: stores[b].getitem("a", cur["i"])

    def draw():
        stores.reopen()
        cur["i"] = rng.integers(0, rows, size=min(K_GATHER, rows))

    t_save = medians(saves, repeat)
    t_load = medians(loads, repeat, stores.reopen)
    t_gather = medians(gathers, repeat, draw)

    # Untimed checks: every method gives the array back, and the same gathered rows.
    draw()
    for k in loads:
        if not np.array_equal(loads[k](), arr):
            raise AssertionError(f"{name}: {k} load returned other values")
        if not np.array_equal(gathers[k](), arr[cur["i"]]):
            raise AssertionError(f"{name}: {k} gather returned other rows")

    stored = {"npz": os.path.getsize(npz), "zstd": os.path.getsize(zpath)}
    comps = {}
    for b in backends:
        comp = stores[b].get_metadata()["arrays"]["a"]["compression"]
        if comp is None or comp["raw_bytes"] != raw:
            raise AssertionError(f"{name}: {b} reports compression {comp!r} for {raw} raw bytes")
        comps[b] = comp
        stored[b] = comp["stored_bytes"]
    stores.close()

    table = []
    for k in ["npz", "zstd", *backends]:
        is_npk = k in backends
        row = {
            "method": f"numpack {k}" if is_npk else k,
            "ratio": f"{raw / stored[k]:.2f}",
            "save MB/s": mbs(raw, t_save[k]),
            "load MB/s": mbs(raw, t_load[k]),
            f"gather {K_GATHER} rows": fmt_time(t_gather[k]),
            "filters (blocks)": describe_filters(comps[k]) if is_npk else "",
            "includes": INCLUDES["numpack" if is_npk else k],
        }
        if k != "npz":
            row["ratio vs npz"] = x(stored["npz"], stored[k])
            row["save vs npz"] = x(t_save["npz"], t_save[k])
            row["load vs npz"] = x(t_load["npz"], t_load[k])
            row["gather vs npz"] = x(t_gather["npz"], t_gather[k])
        table.append(row)
    numbers = {"stored": stored, "save": t_save, "load": t_load, "gather": t_gather, "rows": rows}
    return table, numbers


DATASET_COLUMNS = [
    "method",
    "ratio",
    "ratio vs npz",
    "save MB/s",
    "save vs npz",
    "load MB/s",
    "load vs npz",
    f"gather {K_GATHER} rows",
    "gather vs npz",
    "filters (blocks)",
    "includes",
]


# -- incompressible save and 1,000,000-row gather, each against the backend uncompressed -------


def raw_vs_compressed(arr, backends, level, repeat, tmp, op):
    """Per backend: the same op on an uncompressed and a compressed copy, interleaved.

    Gathers run on stores reopened before each call ("raw", "zstd") and, to show what the
    blocks a store keeps decoded are worth, on a compressed store kept open ("zstd open")."""
    paths = {}
    for b in backends:
        for kind in ("raw", "zstd"):
            paths[f"{b} {kind}"] = (os.path.join(tmp, f"{b}-{kind}"), b)
    stores = Stores(paths)
    for b in backends:
        stores[f"{b} raw"].save({"a": arr})
        stores[f"{b} zstd"].save({"a": arr}, compress=True, compression_level=level)
    kept = {b: NumPack(paths[f"{b} zstd"][0], backend=b) for b in backends}
    rng = np.random.default_rng(2)
    cur = {}
    fns = {}
    for b in backends:
        raw_s, z_s = f"{b} raw", f"{b} zstd"
        if op == "save":
            fns[raw_s] = lambda k=raw_s: stores[k].save({"a": arr})
            fns[z_s] = lambda k=z_s: stores[k].save(
                {"a": arr}, compress=True, compression_level=level
            )
        else:
            fns[raw_s] = lambda k=raw_s: stores[k].getitem("a", cur["i"])
            fns[z_s] = lambda k=z_s: stores[k].getitem("a", cur["i"])
            fns[f"{b} zstd open"] = lambda s=kept[b]: s.getitem("a", cur["i"])

    def draw():
        stores.reopen()
        cur["i"] = rng.integers(0, arr.shape[0], size=K_GATHER)

    t = medians(fns, repeat, None if op == "save" else draw)
    comps = {b: stores[f"{b} zstd"].get_metadata()["arrays"]["a"]["compression"] for b in backends}
    stores.close()
    for s in kept.values():
        s.close()
    return t, comps


# -- main --------------------------------------------------------------------------------------


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="200,000 elements, 3 rounds")
    p.add_argument("--elements", type=int, default=None, help="per synthetic dataset")
    p.add_argument("--repeat", type=int, default=None, help="rounds per timing (default 5)")
    p.add_argument("--level", type=int, default=3, help="zstd level, numpack and plain zstd")
    p.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    p.add_argument("--backends", nargs="+", choices=BACKENDS, default=None)
    args = p.parse_args(argv)
    n = args.elements or (200_000 if args.quick else 4_000_000)
    repeat = args.repeat or (3 if args.quick else 5)
    gather_repeat = 10 if args.quick else 50
    if zstandard is None:
        sys.exit("bench_compress needs the zstandard package (pip install zstandard)")
    backends = ready_backends(args.backends or available_backends(), args.backends is not None)
    print(
        f"numpack compression benchmark: {machine()}; numpy {np.__version__}; "
        f"zstandard {zstandard.__version__}; backends {backends}; level {args.level}; "
        f"{repeat} rounds a timing"
    )
    results = {}
    for name in args.datasets:
        arr = build(name, n)
        if arr is None:
            continue
        tmp = tempfile.mkdtemp(prefix="npk-bench-")
        try:
            table, results[name] = dataset_table(name, arr, backends, args.level, repeat, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        title = (
            f"{name}: {DATASETS[name][0]}; {arr.dtype} {shape_str(arr)}, "
            f"{arr.size:,} elements, {arr.nbytes / 1e6:,.1f} MB"
        )
        print_table(title, table, DATASET_COLUMNS)

    if not backends:
        return
    pair_cols = ["operation", "backend", "uncompressed", "compressed", "compressed / uncompressed"]
    pair_cols += ["issue 4's target", "blocks", "includes"]
    if "embeddings" in args.datasets:
        arr = build("embeddings", n)
        tmp = tempfile.mkdtemp(prefix="npk-bench-")
        try:
            t, comps = raw_vs_compressed(arr, backends, args.level, repeat, tmp, "save")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        rows = []
        for b in backends:
            raw_t, z_t = t[f"{b} raw"], t[f"{b} zstd"]
            rows.append(
                {
                    "operation": f"save {shape_str(arr)} float32 embeddings",
                    "backend": b,
                    "uncompressed": f"{fmt_time(raw_t)} ({mbs(arr.nbytes, raw_t)} MB/s)",
                    "compressed": f"{fmt_time(z_t)} ({mbs(arr.nbytes, z_t)} MB/s)",
                    "compressed / uncompressed": f"{raw_t / z_t:.2f}x the speed",
                    "issue 4's target": "at least 0.5x: " + verdict(raw_t / z_t >= 0.5),
                    "blocks": describe_filters(comps[b]),
                    "includes": f"save() into an open store, overwrites; no fsync; {repeat} rounds",
                }
            )
        print_table("Incompressible data: compressed against uncompressed save", rows, pair_cols)

    if "bars" in args.datasets:
        arr = build("bars", n)
        tmp = tempfile.mkdtemp(prefix="npk-bench-")
        try:
            t, comps = raw_vs_compressed(arr, backends, args.level, gather_repeat, tmp, "gather")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        rows = []
        for b in backends:
            raw_t, z_t = t[f"{b} raw"], t[f"{b} zstd"]
            target = "under 5 ms at 1,000,000 rows: "
            if arr.shape[0] == 1_000_000:
                target += verdict(z_t < 5e-3)
            else:
                target += "n/a, other row count"
            c = comps[b]
            rows.append(
                {
                    "operation": f"getitem {K_GATHER} random rows of {shape_str(arr)} float64 bars",
                    "backend": b,
                    "uncompressed": fmt_time(raw_t),
                    "compressed": fmt_time(z_t),
                    "compressed / uncompressed": f"{z_t / raw_t:.1f}x the time",
                    "compressed, store kept open": fmt_time(t[f"{b} zstd open"]),
                    "issue 4's target": target,
                    "blocks": f"{c['blocks']} of {c['block_rows']:,} rows; {describe_filters(c)}",
                    "includes": "unsorted, repeats allowed, new rows each call; store "
                    f"reopened before each call (untimed) but the last column's; {gather_repeat} "
                    "rounds",
                }
            )
        cols = pair_cols[:5] + ["compressed, store kept open"] + pair_cols[5:]
        print_table(f"Gather from a compressed {arr.shape[0]:,}-row array", rows, cols)

    # The targets on every dataset, from the tables above.
    rows = []
    for name, r in results.items():
        for b in backends:
            ratio = r["stored"]["npz"] / r["stored"][b]
            save = r["save"]["npz"] / r["save"][b]
            load = r["load"]["npz"] / r["load"][b]
            rows.append(
                {
                    "dataset": name,
                    "backend": b,
                    "ratio vs npz (at least 1x)": f"{ratio:.2f}x {verdict(ratio >= 1)}",
                    "save vs npz (at least 10x)": f"{save:.2f}x {verdict(save >= 10)}",
                    "load vs npz (at least 3x)": f"{load:.2f}x {verdict(load >= 3)}",
                }
            )
    cols = ["dataset", "backend", "ratio vs npz (at least 1x)", "save vs npz (at least 10x)"]
    cols.append("load vs npz (at least 3x)")
    title = "Issue 4's targets per dataset (they apply to rust at level 3)"
    if args.level != 3:
        title += f": this run used level {args.level}"
    print_table(title, rows, cols)


if __name__ == "__main__":
    main()
