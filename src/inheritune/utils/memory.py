"""A process's peak memory over a stretch of work: the CUDA allocator's peak on a GPU, else the resident-set
high-water mark (VmHWM) that Linux resets on request, so that each training in one process is measured alone."""

from __future__ import annotations

from pathlib import Path

import torch


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")  # the high-water mark restarts from the current RSS
    except OSError:
        pass


def peak_mb(device: torch.device) -> float | None:
    """MB at the peak since ``reset_peak`` (None where the system does not say)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return _status_mb("VmHWM")
