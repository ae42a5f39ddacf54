"""Stopping a training run cleanly on SIGINT (Ctrl-C) or SIGTERM: from the moment ``train`` starts, a signal only
sets a flag. Before anything in the run directory is changed the flag means "stop: nothing was done"; during the
loop it means "checkpoint at the end of this step and exit". Either way the command exits 128 + the signal."""

from __future__ import annotations

import signal
import threading


class StopRequest:
    """SIGINT/SIGTERM set ``requested`` (and ``signal``) while the block runs; the previous handlers come back at
    its end. Outside the main thread (where Python cannot take signals) it only holds the flag."""

    def __init__(self):
        self.requested = False
        self.signal = 0
        self.previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True
        self.signal = signum

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}
