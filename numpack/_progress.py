"""Optional progress bars: tqdm when it imports, otherwise nothing (tqdm is not a dependency)."""

from __future__ import annotations

from ._errors import InvalidTypeError


class _NoBar:
    """Stands in for a tqdm bar when progress is off or tqdm is missing."""

    def update(self, n: int = 1) -> None:
        pass

    def set_description_str(self, desc: str) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check(progress) -> bool:
    if not isinstance(progress, bool):
        raise InvalidTypeError(f"progress must be True or False, got {progress!r}")
    return progress


def bar(progress: bool, total: int, desc: str, unit: str = "B"):
    """A tqdm bar (`tqdm.auto`, so a widget in Jupyter) when `progress` and tqdm imports, else a
    bar that does nothing. Use it as a context manager; `update(n)` advances it."""
    if not check(progress):
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar()
    scale = unit == "B"
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=scale,
        unit_divisor=1024 if scale else 1000,
    )
