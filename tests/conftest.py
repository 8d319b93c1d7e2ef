"""Shared fixtures: the `backend` parametrisation, stores, and the hypothesis profiles.

Every test that takes `backend` (or `store`) runs once per backend. The rust backend is skipped
when `numpack._core` does not import, unless NUMPACK_REQUIRE_RUST=1 (CI), which turns the skip
into a failure. Hypothesis profile "ci" is the default (derandomised: the same examples each run);
HYPOTHESIS_PROFILE=dev runs ten times as many, randomised (the long opt-in run).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import BACKENDS, require_backend
from hypothesis import HealthCheck, settings

from numpack import NumPack

# "ci" (the default) is derandomised: the same examples every run, so a red CI run is a
# regression, not luck, and reruns reproduce it. "dev" is the long randomised run (opt-in).
settings.register_profile(
    "ci",
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev",
    max_examples=300,
    deadline=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    require_backend(request.param)
    return request.param


@pytest.fixture
def store_path(tmp_path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def store(backend, store_path):
    npk = NumPack(store_path, backend=backend)
    yield npk
    npk.close()
