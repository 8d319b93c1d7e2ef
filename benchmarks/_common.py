"""Timing helpers shared by the benchmark scripts: medians, ratios, tables."""

from __future__ import annotations

import gc
import platform
import statistics
import time


def medians(fns: dict, repeat: int, setup=None, settle=None) -> dict:
    """Median wall time of each `fns[name]()` over `repeat` rounds.

    The functions run round-robin, one call each per round and in a rotating order, so drift
    in a shared machine's speed hits all of them alike. `setup()` runs untimed before each
    call, `settle()` untimed after it: writers pass `os.sync`, so the writeback and file-system
    journal work one call leaves behind is not billed to the next. The garbage collector is
    paused while timing.
    """
    times = {name: [] for name in fns}
    names = list(fns)
    gc.collect()
    gc.disable()
    try:
        for r in range(repeat):
            # Rotate who goes first: one call's after-effects (writeback it started, caches it
            # evicted) then land on each function alike.
            for name in names[r % len(names) :] + names[: r % len(names)]:
                fn = fns[name]
                if setup is not None:
                    setup()
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
                if settle is not None:
                    settle()
    finally:
        gc.enable()
    return {name: statistics.median(t) for name, t in times.items()}


def compare(
    op: str,
    baseline: str,
    base_fn,
    fns: dict,
    includes: str,
    repeat: int,
    setup=None,
    settle=None,
) -> dict:
    """One table row: the baseline and each of `fns` ({backend: fn}) timed round-robin."""
    t = medians({"baseline": base_fn, **fns}, repeat, setup, settle)
    row = {
        "operation": op,
        "baseline": baseline,
        "includes": includes,
        "baseline median": fmt_time(t["baseline"]),
    }
    for b in fns:
        row[f"{b} median"] = fmt_time(t[b])
        row[f"{b} speed-up"] = f"{t['baseline'] / t[b]:.2f}x"
    return row


def columns(backends: list[str]) -> list[str]:
    """The columns of a table with one median and one speed-up per backend."""
    cols = ["operation", "baseline", "baseline median"]
    for b in backends:
        cols += [f"{b} median", f"{b} speed-up"]
    return cols + ["includes"]


def fmt_time(t: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if t >= scale:
            return f"{t / scale:.3g} {unit}"
    return f"{t * 1e9:.3g} ns"


def machine() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or "unknown CPU"
    import os

    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    """Markdown table; each row maps column name to a printable value."""
    print(f"\n### {title}\n")
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" for _ in columns) + "|")
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "")) for c in columns) + " |")
