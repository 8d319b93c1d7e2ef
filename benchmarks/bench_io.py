"""numpack.io: memory and speed of each conversion against the library's own naive way, and a
dask.distributed reduction against np.load + reduce in one process.

Conversions: one float32 array of `--mb` megabytes (32 columns), several times the 32 MiB batch
a converter holds. Each run is a fresh subprocess that imports everything first, then times the
conversion and records its memory: peak anonymous memory (RssAnon, sampled every millisecond:
the memory the conversion allocates) and peak total RSS (VmHWM, which also counts file pages
mapped for reading: clean page cache the kernel can drop). "naive" is what a user writes
without numpack.io: read the whole array with the library, then `NumPack.save` it (imports), or
`NumPack.load` it whole and hand it to the library (exports). Speed-up: naive time / numpack.io
time (above 1: numpack.io is faster). Files stay in the page cache.

Packages: a `--package-mb` store of 8 float32 arrays (128 columns) packed into one file, raw
(`compression=False`) and compressed; reading it in place (`NumPack(package)`) against what a
package that must be extracted costs: `unpack` to a directory, then the same read there.

dask: a `--dask-gb` store (float32, 128 columns), raw and compressed, summed by a LocalCluster
of 2 worker processes (1 thread each) through `numpack.io.to_dask`, against `np.load` of the
same array from a .npy + `.sum()` in this process.

    python benchmarks/bench_io.py       # 256 MB conversions, a 256 MB package, 2 GB dask store
    python benchmarks/bench_io.py --mb 64 --package-mb 64 --dask-gb 0.25 --repeat 1   # a look
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import fmt_time, machine, medians, print_table  # noqa: E402

COLS = 32


def _conversions(d: str) -> dict:
    """{name: (numpack.io way, naive way)}: functions of no argument, for the files in `d`."""
    import h5py
    import pyarrow as pa
    import pyarrow.feather as feather
    import pyarrow.parquet as pq
    import safetensors.numpy as st
    import zarr

    import numpack.io as nio
    from numpack import NumPack

    store, out = os.path.join(d, "store"), os.path.join(d, "out")

    def save(arr):
        with NumPack(out) as npk:
            npk.save({"a": arr})

    def load():
        with NumPack(store) as npk:
            return npk.load("a")

    def table(arr):
        return pa.table({f"col{i}": arr[:, i] for i in range(arr.shape[1])})

    def f(name):
        return os.path.join(d, name)

    def h5_read():
        with h5py.File(f("a.h5"), "r") as h5:
            save(h5["a"][:])

    def h5_write():  # as to_hdf5 writes: gzip level 4, chunks of whole rows (about 1 MiB)
        with h5py.File(f("o.h5"), "w") as h5:
            h5.create_dataset(
                "a", data=load(), chunks=(8192, COLS), compression="gzip", compression_opts=4
            )

    return {
        "from_npy": (lambda: nio.from_npy(f("a.npy"), out), lambda: save(np.load(f("a.npy")))),
        "to_npy (.npz)": (
            lambda: nio.to_npy(store, f("o.npz")),
            lambda: np.savez(f("o.npz"), a=load()),
        ),
        "from_zarr": (
            lambda: nio.from_zarr(f("a.zarr"), out),
            lambda: save(zarr.open_group(f("a.zarr"), mode="r")["a"][:]),
        ),
        "to_zarr": (
            lambda: nio.to_zarr(store, f("o.zarr")),
            lambda: zarr.open_group(f("o.zarr"), mode="w").create_array("a", data=load()),
        ),
        "from_hdf5": (lambda: nio.from_hdf5(f("a.h5"), out), h5_read),
        "to_hdf5": (lambda: nio.to_hdf5(store, f("o.h5")), h5_write),
        "from_parquet": (
            lambda: nio.from_parquet(f("a.parquet"), out),
            lambda: save(pq.read_table(f("a.parquet")).to_pandas().to_numpy()),
        ),
        "to_parquet": (
            lambda: nio.to_parquet(store, f("o.parquet")),
            lambda: pq.write_table(table(load()), f("o.parquet"), row_group_size=100_000),
        ),
        "from_feather": (
            lambda: nio.from_feather(f("a.feather"), out),
            lambda: save(feather.read_table(f("a.feather")).to_pandas().to_numpy()),
        ),
        "to_feather": (
            lambda: nio.to_feather(store, f("o.feather")),
            lambda: feather.write_feather(table(load()), f("o.feather"), compression="zstd"),
        ),
        "from_safetensors_file": (
            lambda: nio.from_safetensors_file(f("a.safetensors"), out),
            lambda: save(st.load_file(f("a.safetensors"))["a"]),
        ),
        "to_safetensors_file": (
            lambda: nio.to_safetensors_file(store, f("o.safetensors")),
            lambda: st.save_file({"a": load()}, f("o.safetensors")),
        ),
    }


def _prepare(d: str, mb: float) -> int:
    """The input files of every conversion, written by numpack.io; returns the array's bytes."""
    import numpack.io as nio
    from numpack import NumPack

    rows = int(mb * 1e6) // (4 * COLS)
    arr = np.random.default_rng(0).standard_normal((rows, COLS), dtype=np.float32)
    np.save(os.path.join(d, "a.npy"), arr)
    with NumPack(os.path.join(d, "store")) as npk:
        npk.save({"a": arr})
    store = os.path.join(d, "store")
    nio.to_zarr(store, os.path.join(d, "a.zarr"))
    nio.to_hdf5(store, os.path.join(d, "a.h5"))
    nio.to_parquet(store, os.path.join(d, "a.parquet"))
    nio.to_feather(store, os.path.join(d, "a.feather"))
    nio.to_safetensors_file(store, os.path.join(d, "a.safetensors"))
    return arr.nbytes


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))


def _child(name: str, way: int, d: str) -> None:
    """Run one conversion in this fresh process; print its time and peak memory as JSON."""
    import threading

    fn = _conversions(d)[name][way]
    anon0, rss0 = _status("RssAnon:"), _status("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current RSS
        f.write("5")
    peak, done = [anon0], threading.Event()

    def sample() -> None:
        while not done.wait(0.001):
            peak[0] = max(peak[0], _status("RssAnon:"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    peak[0] = max(peak[0], _status("RssAnon:"))
    print(json.dumps({"s": seconds, "anon": peak[0] - anon0, "hwm": _status("VmHWM:") - rss0}))


def _run(name: str, way: int, d: str) -> dict:
    for path in ("out", "o.npz", "o.zarr", "o.h5", "o.parquet", "o.feather", "o.safetensors"):
        p = os.path.join(d, path)
        if os.path.isdir(p):
            shutil.rmtree(p)
        elif os.path.exists(p):
            os.unlink(p)
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", name, str(way), d],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.splitlines()[-1])


def conversions(mb: float, repeat: int) -> list[dict]:
    d = tempfile.mkdtemp(prefix="npk-bench-io-")
    try:
        nbytes = _prepare(d, mb)
        rows = []
        for name in _conversions(d):
            runs = [[_run(name, way, d) for way in (0, 1)] for _ in range(repeat)]
            npk = {k: statistics.median(r[0][k] for r in runs) for k in ("s", "anon", "hwm")}
            naive = {k: statistics.median(r[1][k] for r in runs) for k in ("s", "anon", "hwm")}
            rows.append(
                {
                    "conversion": name,
                    "numpack.io": fmt_time(npk["s"]),
                    "naive": fmt_time(naive["s"]),
                    "speed-up": f"{naive['s'] / npk['s']:.2f}x",
                    "numpack.io peak anon": _mb(npk["anon"], nbytes),
                    "naive peak anon": _mb(naive["anon"], nbytes),
                    "numpack.io peak RSS": _mb(npk["hwm"], nbytes),
                    "naive peak RSS": _mb(naive["hwm"], nbytes),
                }
            )
        return rows
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _mb(n: float, nbytes: int) -> str:
    return f"{n / 1e6:,.0f} MB ({n / nbytes:.2f}x)"


def dask_reduction(gb: float, repeat: int) -> list[dict]:
    from distributed import Client, LocalCluster

    import numpack.io as nio
    from numpack import NumPack

    d = tempfile.mkdtemp(prefix="npk-bench-dask-")
    try:
        rows = int(gb * 1e9) // (4 * 128)
        arr = np.random.default_rng(0).standard_normal((rows, 128), dtype=np.float32)
        npy = os.path.join(d, "a.npy")
        np.save(npy, arr)
        with NumPack(os.path.join(d, "store")) as npk:
            npk.save({"raw": arr})
            npk.save({"compressed": arr}, compress=True)
        expected = float(arr.sum(dtype=np.float64))
        del arr
        table = []
        with (
            LocalCluster(
                n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
            ) as cluster,
            Client(cluster) as client,
        ):
            for name in ("raw", "compressed"):
                darr = nio.to_dask(os.path.join(d, "store"), name)

                def npk_load(name: str = name) -> float:
                    with NumPack(os.path.join(d, "store")) as npk:
                        return npk.load(name).sum(dtype=np.float64)

                ways = {
                    "cluster": lambda x=darr: client.compute(x.sum(dtype=np.float64)).result(),
                    "np.load": lambda: np.load(npy).sum(dtype=np.float64),
                    "npk.load": npk_load,
                }
                times: dict[str, list[float]] = {way: [] for way in ways}
                for _ in range(repeat):
                    for way, fn in ways.items():
                        t0 = time.perf_counter()
                        assert np.isclose(fn(), expected)
                        times[way].append(time.perf_counter() - t0)
                t = {k: statistics.median(v) for k, v in times.items()}
                table.append(
                    {
                        "reduction": f"sum of a {gb:g} GB {name} array ({len(darr.chunks[0])} "
                        f"chunks of {darr.chunks[0][0]:,} rows)",
                        "np.load + sum, one process": fmt_time(t["np.load"]),
                        "NumPack.load + sum, one process": fmt_time(t["npk.load"]),
                        "to_dask + sum on the cluster": fmt_time(t["cluster"]),
                        "speed-up vs np.load": f"{t['np.load'] / t['cluster']:.2f}x",
                    }
                )
        return table
    finally:
        shutil.rmtree(d, ignore_errors=True)


def packages(mb: float, repeat: int) -> list[dict]:
    """Rows: reading a package in place against unpacking it first, for a raw and a compressed
    package of the same store."""
    import numpack
    from numpack import NumPack

    d = tempfile.mkdtemp(prefix="npk-bench-pkg-")
    try:
        rng = np.random.default_rng(0)
        rows = max(1000, int(mb * 1e6) // (8 * 4 * 128))
        store = os.path.join(d, "store")
        with NumPack(store) as npk:
            for i in range(8):
                npk.save({f"emb{i}": rng.standard_normal((rows, 128), dtype=np.float32)})
        picks = np.sort(rng.choice(rows, 1000, replace=False))

        def gather(path: str) -> None:
            with NumPack(path) as npk:
                for name in npk.get_member_list():
                    npk.load(name, lazy=True)[picks]

        def full(path: str) -> None:
            with NumPack(path) as npk:
                npk.load("emb0").sum()

        pkg, out, ready = (os.path.join(d, f) for f in ("p.npkg", "unpacked", "ready"))

        def unpacked(read):
            def run() -> None:
                numpack.unpack(pkg, out)
                read(out)

            return run

        def clean() -> None:
            shutil.rmtree(out, ignore_errors=True)

        table = []
        for compression in (False, True):
            numpack.pack(store, pkg, compression, overwrite=True)
            numpack.unpack(pkg, ready, overwrite=True)
            kind = "compressed" if compression else "raw"
            size = f"{os.path.getsize(pkg) / 1e6:,.0f} MB {kind} package"
            for what, read in (
                ("open, gather 1,000 rows of each of 8 arrays", gather),
                ("open, load one array whole and sum it", full),
            ):
                fns = {
                    "in place": lambda r=read: r(pkg),
                    "unpack": unpacked(read),
                    "directory": lambda r=read: r(ready),
                }
                t = medians(fns, repeat, setup=clean)
                table.append(
                    {
                        "package": size,
                        "read": what,
                        "unpack, then read": fmt_time(t["unpack"]),
                        "read in place": fmt_time(t["in place"]),
                        "speed-up": f"{t['unpack'] / t['in place']:.1f}x",
                        "read of the unpacked directory": fmt_time(t["directory"]),
                        "in place vs directory": f"{t['directory'] / t['in place']:.2f}x",
                    }
                )
            clean()
        return table
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main(argv=None) -> None:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--mb", type=float, default=256, help="size of the converted array; 0: skip")
    p.add_argument("--package-mb", type=float, default=256, help="size of the packaged store")
    p.add_argument("--dask-gb", type=float, default=2, help="size of the dask store; 0: skip")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    print(f"numpack.io benchmark: {machine()}; numpy {np.__version__}")
    if args.mb:
        table = conversions(args.mb, args.repeat)
        print_table(
            f"Conversions of {args.mb:g} MB (float32, {COLS} columns; batches of 32 MiB)",
            table,
            list(table[0]),
        )
    if args.package_mb:
        table = packages(args.package_mb, max(args.repeat, 5))
        print_table("Packages: read in place vs unpacked first", table, list(table[0]))
    if args.dask_gb:
        table = dask_reduction(args.dask_gb, args.repeat)
        print_table("dask.distributed: 2 worker processes, 1 thread each", table, list(table[0]))


if __name__ == "__main__":
    main()
