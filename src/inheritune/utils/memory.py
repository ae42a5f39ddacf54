"""A process's peak memory over a stretch of work: the CUDA allocator's peak on a GPU, else the resident-set
high-water mark (VmHWM) that Linux resets on request, so that each training in one process is measured alone;
and the bytes a set of tensors takes when written (each storage once)."""

from __future__ import annotations

import ctypes
import gc
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
    # The high-water mark restarts from the current RSS, which also holds memory that earlier work of the process
    # freed but the allocator kept (a reference model scored before, an analysis): collected and handed back to
    # the system first, so the peak is closer to this training's own.
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_mb(device: torch.device) -> float | None:
    """MB at the peak since ``reset_peak`` (None where the system does not say)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return _status_mb("VmHWM")


def payload_bytes(payload, seen: set | None = None) -> int:
    """The tensor bytes of a payload (a state dict, a checkpoint: what torch.save or safetensors writes, less a
    little metadata). A tensor that shares its storage with another (a head tied to the embeddings) is written
    once, and counted once."""
    seen = set() if seen is None else seen
    if isinstance(payload, torch.Tensor):
        storage = payload.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        if key in seen:
            return 0
        seen.add(key)
        return storage.nbytes()
    if isinstance(payload, dict):
        return sum(payload_bytes(v, seen) for v in payload.values())
    if isinstance(payload, (list, tuple)):
        return sum(payload_bytes(v, seen) for v in payload)
    return 0
