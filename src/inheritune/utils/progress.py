"""Progress bars: lively on a terminal, a line every 15 s when output goes to a log or a pipe; and how a measured
time is recorded."""

from __future__ import annotations

import sys


def progress_bar(iterable=None, **kwargs):
    from tqdm import tqdm

    kwargs.setdefault("mininterval", 0.1 if sys.stderr.isatty() else 15.0)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)


def recorded_seconds(t: float) -> float:
    """A measured time as records keep it: two decimals, or three significant digits where two decimals would say
    0.0 (a tiny model on a fast machine measures in milliseconds, and 0.0 reads as "not timed")."""
    return round(t, 2) or float(f"{t:.3g}")
