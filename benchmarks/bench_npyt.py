"""NPYT/NPY8 appends and reader latency, against np.save and a plain np.memmap.

Market ticks (timestamp int64, price float64, volume int32, side int8; align=True: 24 bytes)
are appended one row at a time and in 1,000-row batches. Baselines, timed in the same run:

- np.save of a growing array: concatenate the new rows, rewrite the whole .npy each append
  (quadratic, so that table grows the file to a few thousand rows only);
- np.memmap with the write pointer in a side file: rows copied into a preallocated np.memmap,
  then the row count stored in a 1-element uint64 np.memmap (no checks, no header, no lock).

Reader latency: a second process polls for new rows; each row's delay from `append` returning
(and from the call starting) to the reader holding it, from one system-wide clock.
NPYT is one pure-Python implementation shared by both backends, so it is timed once.
No call fsyncs. Speed-up = baseline time / NPYT time (above 1: NPYT is faster).

    python benchmarks/bench_npyt.py            # the full run
    python benchmarks/bench_npyt.py --quick    # a small one
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import fmt_time, machine, print_table  # noqa: E402

from numpack import NPY8, NPYT  # noqa: E402

TICK = np.dtype(
    [("timestamp", "<i8"), ("price", "<f8"), ("volume", "<i4"), ("side", "i1")], align=True
)


def ticks(first: int, n: int) -> np.ndarray:
    rows = np.zeros(n, TICK)
    rows["timestamp"] = np.arange(first, first + n)
    rows["price"] = 100 + np.arange(n) * 0.01
    rows["volume"] = 7
    rows["side"] = 1
    return rows


# -- appenders: setup(dir, batches) -> state (untimed); run(state, batches) (timed) ----------


class NpSave:
    name = "np.save, growing array"
    includes = "concatenate, then rewrite the whole .npy, every append"

    def setup(self, d, batches):
        return {"path": os.path.join(d, "save.npy"), "arr": np.empty(0, TICK)}

    def run(self, s, batches):
        arr, path = s["arr"], s["path"]
        for b in batches:
            arr = np.concatenate([arr, b])
            np.save(path, arr)


class Memmap:
    name = "np.memmap + pointer file"
    includes = "copy into a preallocated np.memmap, store the count in a 1-element np.memmap"

    def setup(self, d, batches):
        total = sum(len(b) for b in batches)
        data = np.memmap(os.path.join(d, "mm.bin"), TICK, "w+", shape=(total,))
        ptr = np.memmap(os.path.join(d, "mm.ptr"), "<u8", "w+", shape=(1,))
        return data, ptr

    def run(self, s, batches):
        data, ptr = s
        end = 0
        for b in batches:
            data[end : end + len(b)] = b
            end += len(b)
            ptr[0] = end


class NpytAppend:
    name = "NPYT.append, pre-sized"
    includes = "dtype/shape checks, copy into the mapped file, publish end + timestamp"

    def setup(self, d, batches):
        total = sum(len(b) for b in batches)
        return NPYT(os.path.join(d, "t.npy"), dtype=TICK).save(capacity=total).load("r+")

    def run(self, w, batches):
        for b in batches:
            w.append(b)


class NpytExpend:
    name = "NPYT.expend, from capacity 1"
    includes = "as append, plus growing the file (doubling: header, tail, ftruncate, remap)"

    def setup(self, d, batches):
        return NPYT(os.path.join(d, "e.npy"), dtype=TICK).save(capacity=1).load("r+")

    def run(self, w, batches):
        for b in batches:
            w.expend(b)


class Npy8Append:
    name = "NPY8.append, 10 files"
    includes = "as append, plus rolling over to a new file at each tenth of the rows"

    def setup(self, d, batches):
        per_file = max(sum(len(b) for b in batches) // 10, max(len(b) for b in batches))
        return NPY8(os.path.join(d, "folder"), capacity_per_file=per_file, dtype=TICK).load()

    def run(self, w, batches):
        for b in batches:
            w.append(b)


def time_appends(methods, batches, repeat: int) -> dict:
    """Median seconds of appending all `batches`, per method, round-robin in a rotating order."""
    times = {m.name: [] for m in methods}
    for r in range(repeat):
        order = methods[r % len(methods) :] + methods[: r % len(methods)]
        for m in order:
            d = tempfile.mkdtemp(prefix="npyt-bench-")
            try:
                state = m.setup(d, batches)
                gc.collect()
                gc.disable()
                t0 = time.perf_counter()
                m.run(state, batches)
                times[m.name].append(time.perf_counter() - t0)
                gc.enable()
                del state
            finally:
                gc.enable()
                shutil.rmtree(d)
    return {name: statistics.median(t) for name, t in times.items()}


def append_table(title: str, methods, batches, repeat: int, has_save: bool) -> None:
    t = time_appends(methods, batches, repeat)
    n, rows = len(batches), sum(len(b) for b in batches)
    table = []
    for m in methods:
        row = {
            "method": m.name,
            "per append": fmt_time(t[m.name] / n),
            "rows/s": f"{rows / t[m.name]:,.0f}",
            "vs np.memmap": f"{t[Memmap.name] / t[m.name]:.2f}x",
            "includes": m.includes,
        }
        if has_save:
            row["vs np.save"] = f"{t[NpSave.name] / t[m.name]:.2f}x"
        table.append(row)
    cols = ["method", "per append", "rows/s"] + (["vs np.save"] if has_save else [])
    print_table(title, table, cols + ["vs np.memmap", "includes"])


# -- reader latency ----------------------------------------------------------------------------

_READER = """
import sys, time
import numpy as np
kind, path, n, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
seen = np.zeros(n, np.int64)
got = 0
if kind == "npyt":
    from numpack import NPYT
    r = NPYT(path).load("r")
    print("ready", flush=True)
    while got < n:
        rows = r.read(1024)
        if len(rows):
            now = time.monotonic_ns()
            seen[rows["timestamp"]] = now
            got += len(rows)
else:
    tick = np.dtype([("timestamp", "<i8"), ("price", "<f8"), ("volume", "<i4"), ("side", "i1")],
                    align=True)
    ptr = np.memmap(path + ".ptr", "<u8", "r", shape=(1,))
    data = np.memmap(path, tick, "r")
    print("ready", flush=True)
    while got < n:
        end = int(ptr[0])
        if end > got:
            now = time.monotonic_ns()
            seen[data[got:end]["timestamp"]] = now
            got = end
np.save(out, seen)
"""


def latency(kind: str, n: int, gap_s: float) -> dict:
    """Delays of `n` one-row appends, `gap_s` apart, seen by a polling reader process."""
    d = tempfile.mkdtemp(prefix="npyt-lat-")
    try:
        path, out = os.path.join(d, "lat.npy"), os.path.join(d, "seen.npy")
        if kind == "npyt":
            w = NPYT(path, dtype=TICK).save(capacity=n).load("r+")
            append = w.append
        else:
            data = np.memmap(path, TICK, "w+", shape=(n,))
            ptr = np.memmap(path + ".ptr", "<u8", "w+", shape=(1,))
            end = 0

            def append(rows):
                nonlocal end
                data[end : end + len(rows)] = rows
                end += len(rows)
                ptr[0] = end

        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        p = subprocess.Popen(
            [sys.executable, "-c", _READER, kind, path, str(n), out],
            stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        assert p.stdout.readline().strip() == "ready"
        rows = ticks(0, n)
        called, returned = np.zeros(n, np.int64), np.zeros(n, np.int64)
        for k in range(n):
            deadline = time.perf_counter() + gap_s
            while time.perf_counter() < deadline:  # spin: sleep() would add its own jitter
                pass
            called[k] = time.monotonic_ns()
            append(rows[k : k + 1])
            returned[k] = time.monotonic_ns()
        assert p.wait(timeout=120) == 0
        seen = np.load(out)
        p.stdout.close()
    finally:
        shutil.rmtree(d)
    from_return, from_call = (seen - returned) / 1e9, (seen - called) / 1e9
    return {
        "from return, median": statistics.median(from_return),
        "from return, p99": float(np.percentile(from_return, 99)),
        "from call, median": statistics.median(from_call),
        "from call, p99": float(np.percentile(from_call, 99)),
    }


def latency_table(n: int, gap_s: float) -> None:
    res = {
        "np.memmap + pointer file": latency("memmap", n, gap_s),
        "NPYT": latency("npyt", n, gap_s),
    }
    base = res["np.memmap + pointer file"]
    table = []
    for name, r in res.items():
        row = {"method": name, **{k: fmt_signed(v) for k, v in r.items()}}
        ratio = base["from call, median"] / r["from call, median"]
        row["median from call vs np.memmap"] = f"{ratio:.2f}x"
        table.append(row)
    cols = ["method", *next(iter(res.values())), "median from call vs np.memmap"]
    print_table(
        f"reader latency: {n:,} one-row appends {gap_s * 1e6:.0f} us apart, reader polling "
        "(includes the reader's poll loop; a negative time: seen before append returned)",
        table,
        cols,
    )


def fmt_signed(t: float) -> str:
    return ("-" if t < 0 else "") + fmt_time(abs(t))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a small run (seconds)")
    args = p.parse_args(argv)
    q = args.quick
    repeat = 3 if q else 7
    print(f"NPYT benchmark: {machine()}; numpy {np.__version__}; tick row {TICK.itemsize} bytes")

    vs_save = [NpSave(), Memmap(), NpytAppend(), NpytExpend(), Npy8Append()]
    long_run = [Memmap(), NpytAppend(), NpytExpend(), Npy8Append()]
    n1 = 300 if q else 2_000
    append_table(f"{n1:,} appends of 1 row (np.save grows the file to {n1:,} rows)",
                 vs_save, [ticks(i, 1) for i in range(n1)], repeat, True)  # fmt: skip
    nb = 5 if q else 20
    append_table(f"{nb} appends of 1,000 rows (np.save grows the file to {nb * 1000:,} rows)",
                 vs_save, [ticks(i * 1000, 1000) for i in range(nb)], repeat, True)  # fmt: skip
    n1 = 10_000 if q else 100_000
    append_table(f"{n1:,} appends of 1 row (no np.save: quadratic)",
                 long_run, [ticks(i, 1) for i in range(n1)], repeat, False)  # fmt: skip
    nb = 100 if q else 1_000
    append_table(f"{nb:,} appends of 1,000 rows (no np.save: quadratic)",
                 long_run, [ticks(i * 1000, 1000) for i in range(nb)], repeat, False)  # fmt: skip
    latency_table(300 if q else 3_000, 200e-6)


if __name__ == "__main__":
    main()
