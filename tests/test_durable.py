"""durable=True: data, journal, metadata and the directory are fsynced, in an order that keeps
the store whole after a power loss; without it nothing is fsynced (as np.save)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from helpers import subprocess_env

CALLS = r"""
import sys, numpy as np
from numpack import NumPack
npk = NumPack(sys.argv[1], backend=sys.argv[2], durable=sys.argv[3] == "1")
npk.save({"a": np.ones((100, 4))})
npk.append({"a": np.ones((5, 4))})
npk.replace({"a": np.zeros((1, 4))}, [3])
npk.save({"c": np.arange(1000.0)}, compress=True)
npk.replace({"c": np.zeros(1)}, [7])
"""


def _trace(tmp_path, backend: str, durable: bool) -> list[str]:
    if shutil.which("strace") is None:
        if os.environ.get("NUMPACK_REQUIRE_STRACE") == "1":
            pytest.fail("strace is not installed")
        pytest.skip("strace is not installed")
    out = tmp_path / "trace"
    subprocess.run(
        ["strace", "-f", "-qq", "-e", "trace=fsync,fdatasync,rename,renameat,renameat2",
         "-o", str(out), sys.executable, "-c", CALLS, str(tmp_path / "s"), backend,
         "1" if durable else "0"],
        check=True, env=subprocess_env(),
    )  # fmt: skip
    return [line.split(None, 1)[1] for line in out.read_text().splitlines() if "(" in line]


def test_not_durable_never_fsyncs(backend, tmp_path):
    calls = _trace(tmp_path, backend, durable=False)
    assert not [c for c in calls if c.startswith(("fsync", "fdatasync"))]


def test_durable_fsyncs_before_and_after_each_commit(backend, tmp_path):
    calls = _trace(tmp_path, backend, durable=True)
    commits = [i for i, c in enumerate(calls) if "metadata.npkm" in c and "rename" in c]
    assert len(commits) >= 5  # one per call (and the new store's first metadata)
    for i in commits[1:]:
        before = [c for c in calls[:i][-3:] if c.startswith("fsync")]
        assert len(before) >= 2, calls[max(0, i - 4) : i + 2]  # the data, then the metadata
        assert calls[i + 1].startswith("fsync"), calls[i : i + 2]  # then the directory
    journals = [i for i, c in enumerate(calls) if "numpack.undo" in c and "rename" in c]
    assert journals, "the raw replace writes an undo journal"
    for i in journals:
        assert calls[i - 1].startswith("fsync") and calls[i + 1].startswith("fsync")
