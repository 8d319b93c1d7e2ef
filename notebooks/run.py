"""Execute the notebooks in this folder, or check / strip their outputs.

    python notebooks/run.py                    # run every notebook, once per backend, small data
    python notebooks/run.py quickstart.ipynb   # only these (names or paths)
    python notebooks/run.py --check-stripped   # fail, naming them, if any notebook has outputs
    python notebooks/run.py --strip            # remove outputs and execution counts in place

Execution uses nbclient with the `python3` kernel, a timeout per cell, and a temporary working
directory, so no file lands in the repository; executed notebooks are never written back
(`--output-dir DIR` keeps executed copies in DIR to look at). The data size is the environment
variable NUMPACK_NOTEBOOK_ROWS (`--rows` sets it; default 20,000); each run sets NUMPACK_BACKEND.
Checking and stripping need only the standard library; execution needs the `notebook` extra
(nbclient, nbformat, ipykernel, matplotlib).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_ROWS = 20_000
# Executed once, not once per backend: benchmarks.ipynb runs both backends itself, and NPYT/NPY8
# (market_data.ipynb) are one implementation shared by both.
RUN_ONCE = {"benchmarks.ipynb", "market_data.ipynb"}


def notebooks(names: list[str]) -> list[Path]:
    if not names:
        return sorted(HERE.glob("*.ipynb"))
    out = []
    for n in names:
        p = Path(n)
        if not p.exists():
            p = HERE / n
        if not p.exists():
            sys.exit(f"no such notebook: {n}")
        out.append(p.resolve())
    return out


def shown(p: Path) -> str:
    """`p` relative to the repository when inside it."""
    return str(p.relative_to(REPO)) if REPO in p.parents else str(p)


def dirty_cells(nb: dict) -> list[int]:
    """Indexes of the code cells that carry outputs or an execution count."""
    return [
        i
        for i, c in enumerate(nb.get("cells", []))
        if c.get("cell_type") == "code"
        and (c.get("outputs") or c.get("execution_count") is not None)
    ]


def check_stripped(paths: list[Path]) -> int:
    bad = []
    for p in paths:
        cells = dirty_cells(json.loads(p.read_text(encoding="utf-8")))
        if cells:
            bad.append(p)
            print(f"{shown(p)}: outputs in cells {cells}", file=sys.stderr)
    if bad:
        hint = "run: python notebooks/run.py --strip"
        print(f"{len(bad)} notebook(s) not stripped; {hint}", file=sys.stderr)
        return 1
    print(f"{len(paths)} notebook(s) stripped")
    return 0


def strip(paths: list[Path]) -> int:
    for p in paths:
        nb = json.loads(p.read_text(encoding="utf-8"))
        for c in nb.get("cells", []):
            if c.get("cell_type") == "code":
                c["outputs"] = []
                c["execution_count"] = None
            for key in ("execution", "collapsed", "scrolled"):
                c.get("metadata", {}).pop(key, None)
        nb.get("metadata", {}).pop("widgets", None)
        # nbformat's own layout (indent 1, sorted keys), so a stripped file diffs cleanly.
        text = json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
        if text != p.read_text(encoding="utf-8"):
            p.write_text(text, encoding="utf-8")
            print(f"stripped {shown(p)}")
    return 0


def available_backends() -> list[str]:
    """Both backends, or python alone when the extension is not built (an error instead when
    NUMPACK_REQUIRE_RUST=1, as in CI)."""
    try:
        from numpack import _core  # noqa: F401
    except ImportError as e:
        if os.environ.get("NUMPACK_REQUIRE_RUST") == "1":
            sys.exit(f"NUMPACK_REQUIRE_RUST=1 but numpack._core does not import: {e}")
        print("note: numpack._core does not import; running the python backend only")
        return ["python"]
    return ["rust", "python"]


def execute(paths: list[Path], backends: list[str], timeout: int, output_dir: Path | None) -> int:
    import nbformat
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    failed = []
    for p in paths:
        for backend in [None] if p.name in RUN_ONCE else backends:
            label = p.name + ("" if backend is None else f" [{backend}]")
            nb = nbformat.read(p, as_version=4)
            run = Path(tempfile.mkdtemp(prefix="numpack-nb-"))
            work = run / "work"  # the kernel's working directory and TMPDIR
            work.mkdir()
            env = dict(os.environ, TMPDIR=str(work), NUMPACK_REPO=str(REPO))
            if backend is not None:
                env["NUMPACK_BACKEND"] = backend
            # On POSIX the kernel talks over IPC sockets in `run`: no TCP port is opened.
            ipc = {"transport": "ipc", "ip": str(run / "kernel")} if os.name == "posix" else {}
            client = NotebookClient(
                nb,
                km=KernelManager(kernel_name="python3", **ipc),
                timeout=timeout,
                kernel_name="python3",
                resources={"metadata": {"path": str(work)}},
            )
            t0 = time.perf_counter()
            try:
                client.execute(env=env, cleanup_kc=True)  # shut the kernel down after
            except Exception as e:  # a cell's error, a timeout, a dead kernel: all fail the run
                failed.append(label)
                print(f"FAILED {label} after {time.perf_counter() - t0:.1f} s\n{e}", flush=True)
            else:
                print(f"ok     {label} in {time.perf_counter() - t0:.1f} s", flush=True)
            finally:
                shutil.rmtree(run, ignore_errors=True)
            if output_dir is not None:
                suffix = "" if backend is None else f".{backend}"
                nbformat.write(nb, output_dir / f"{p.stem}{suffix}.ipynb")
    if failed:
        print(f"{len(failed)} notebook run(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("notebooks", nargs="*", help="default: every *.ipynb in notebooks/")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check-stripped", action="store_true", help="fail if any has outputs")
    mode.add_argument("--strip", action="store_true", help="remove outputs in place")
    p.add_argument("--rows", type=int, default=None, help="NUMPACK_NOTEBOOK_ROWS (default 20000)")
    p.add_argument("--backends", nargs="+", choices=["rust", "python"], default=None)
    p.add_argument("--timeout", type=int, default=300, help="seconds per cell")
    p.add_argument("--output-dir", type=Path, default=None, help="keep executed copies here")
    args = p.parse_args(argv)
    paths = notebooks(args.notebooks)
    if args.check_stripped:
        return check_stripped(paths)
    if args.strip:
        return strip(paths)
    if args.rows is not None:
        os.environ["NUMPACK_NOTEBOOK_ROWS"] = str(args.rows)
    os.environ.setdefault("NUMPACK_NOTEBOOK_ROWS", str(DEFAULT_ROWS))
    out = args.output_dir
    if out is not None:
        out = out.resolve()
        if out == REPO or REPO in out.parents:
            sys.exit("--output-dir must be outside the repository: executed copies stay out of it")
        out.mkdir(parents=True, exist_ok=True)
    return execute(paths, args.backends or available_backends(), args.timeout, out)


if __name__ == "__main__":
    sys.exit(main())
