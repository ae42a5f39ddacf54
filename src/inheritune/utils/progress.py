"""Progress bars: lively on a terminal, a line every 15 s when output goes to a log or a pipe."""

from __future__ import annotations

import sys


def progress_bar(iterable=None, **kwargs):
    from tqdm import tqdm

    kwargs.setdefault("mininterval", 0.1 if sys.stderr.isatty() else 15.0)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
