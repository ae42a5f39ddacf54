"""The KD teacher's forward pass paid once per batch for every student that trains on that batch.

Candidates of one search (or any trainings with the same data, seed, order, batch and windows) read the same
micro-batch at the same step, so the teacher's final hidden states there are the same for all of them. The
first training to reach a micro-batch computes them and stores them (``--teacher-cache DIR``); the others read
them back bit for bit, so every loss is what it would have been. What is kept is the residual stream the
teacher's head reads (rows x T x d, e.g. 4 x 128 x 576 x 4 bytes = 1.2 MB a micro-batch for SmolLM2), not the
logits (40 MB at its 49,152-token vocabulary): the head's matmul, about a fifth of SmolLM2's forward FLOPs, is
still paid by each student, chunk by chunk as the loss needs it.

A cache is a folder per setting that shapes the batches and the teacher (its hash names the folder), one
``.npy`` per micro-batch, written under a temporary name and renamed, so a kill never leaves half an entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from inheritune.utils.errors import UserError, atomic_write, staging_name, writing

KEYS = ("teacher", "teacher_fingerprint", "data", "data_fingerprint", "seq_len", "micro_batch_size", "seed",
        "data_order", "data_offset", "bos_windows", "dtype", "tf32", "device_type", "tokens_per_step")


def files_fingerprint(model: str) -> str:
    """Names, sizes and modification times of a model folder's files (or a file's): a teacher whose weights were
    replaced under the same path gets a cache of its own, without hashing gigabytes."""
    path = Path(model)
    files = sorted(path.rglob("*")) if path.is_dir() else [path] if path.exists() else []
    listing = [(str(f.relative_to(path) if path.is_dir() else f.name), f.stat().st_size, f.stat().st_mtime_ns)
               for f in files if f.is_file()]
    return hashlib.sha256(json.dumps([str(model), listing]).encode()).hexdigest()


class TeacherCache:
    def __init__(self, root: str | Path, setting: dict):
        identity = json.dumps({k: setting.get(k) for k in KEYS}, sort_keys=True, default=str)
        self.folder = Path(root) / hashlib.sha256(identity.encode()).hexdigest()[:16]
        self.hits = self.misses = 0
        self.off = False
        try:
            with writing("the teacher cache", self.folder):
                self.folder.mkdir(parents=True, exist_ok=True)
            if not (self.folder / "setting.json").is_file():
                atomic_write(self.folder / "setting.json", identity, "the teacher cache's setting")
        except UserError as exc:  # entries already there are still read; nothing new is stored
            self._turn_off(exc)

    def _turn_off(self, exc: UserError) -> None:
        """The cache only saves time: a full disk (or an unwritable folder) turns it off, the training goes on."""
        self.off = True
        print(f"{exc}; the teacher cache is off for this training (each batch pays the teacher)", flush=True)

    def _path(self, step: int, offset: int, bf16: bool) -> Path:
        return self.folder / f"step-{step:07d}-row-{offset:05d}{'-bf16' if bf16 else ''}.npy"

    def hidden(self, step: int, offset: int, device: torch.device, compute) -> torch.Tensor:
        """The teacher's final hidden states for this micro-batch: read back (bit for bit, in their own dtype),
        or ``compute()``d and stored."""
        for bf16 in (False, True):
            path = self._path(step, offset, bf16)
            if path.is_file():
                try:
                    stored = torch.from_numpy(np.load(path, allow_pickle=False))
                except (OSError, ValueError):  # damaged: computed again below and replaced
                    break
                self.hits += 1
                return (stored.view(torch.bfloat16) if bf16 else stored).to(device)
        hidden = compute()
        self.misses += 1
        if self.off:
            return hidden
        bf16 = hidden.dtype == torch.bfloat16
        path = self._path(step, offset, bf16)
        tmp = staging_name(path)
        try:
            with writing("the teacher cache", path, hidden.numel() * hidden.element_size()):
                with open(tmp, "wb") as handle:  # bfloat16 has no numpy type: its bits are kept as int16
                    np.save(handle, (hidden.view(torch.int16) if bf16 else hidden).detach().cpu().numpy(),
                            allow_pickle=False)
                os.replace(tmp, path)
        except UserError as exc:
            self._turn_off(exc)
        finally:
            tmp.unlink(missing_ok=True)
        return hidden


def prune(root: str | Path, before_step: int) -> int:
    """Remove the entries of steps before ``before_step`` (a search's later rungs train later steps only, so a
    finished rung's entries are never read again); returns how many went."""
    gone = 0
    for entry in Path(root).glob("*/step-*.npy"):
        if int(entry.name.split("-")[1]) < before_step:
            entry.unlink(missing_ok=True)
            gone += 1
    return gone
