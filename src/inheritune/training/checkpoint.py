"""Atomic checkpoints (temp file + rename), keep-last-K, and the lock that keeps two runs out of one dir."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from inheritune.utils.errors import UserError, process_alive, writing


def checkpoints(out: Path) -> list[Path]:
    """Finished checkpoints, oldest first."""
    return sorted(out.glob("ckpt-*.pt"))


def save_checkpoint(out: Path, step: int, payload: dict, keep: int) -> Path:
    path = out / f"ckpt-{step:07d}.pt"
    tmp = path.with_suffix(".pt.tmp")
    earlier = checkpoints(out)
    fallback = (f"The last good checkpoint is {earlier[-1]}: free space, then run the same command again (train: "
                f"with --resume-from {earlier[-1]})" if earlier else "No checkpoint of this run was written yet")
    try:
        with writing("the checkpoint", path, payload_bytes(payload), fallback):
            torch.save(payload, tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a partial file would only take the space the next try needs
        raise
    os.replace(tmp, path)  # a checkpoint is either whole or absent
    for old in checkpoints(out)[:-keep] if keep > 0 else []:
        old.unlink()
    return path


def payload_bytes(payload) -> int:
    """The tensor bytes of a checkpoint's payload (what torch.save writes, less a little metadata)."""
    if isinstance(payload, torch.Tensor):
        return payload.numel() * payload.element_size()
    if isinstance(payload, dict):
        return sum(payload_bytes(v) for v in payload.values())
    if isinstance(payload, (list, tuple)):
        return sum(payload_bytes(v) for v in payload)
    return 0


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or damaged file: say which, offer the one before
        older = [p for p in checkpoints(path.parent) if p < path]
        hint = f"; the older checkpoint {older[-1]} is available: pass --resume-from {older[-1]}" if older else ""
        raise UserError(f"checkpoint {path} is corrupt ({type(exc).__name__}){hint}") from None


class RunLock:
    """An exclusive lock file holding the owner's pid; a lock whose process is gone is taken over."""

    def __init__(self, out: Path):
        self.path = out / ".lock"
        self.held = False

    def __enter__(self):
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    pid = int(self.path.read_text().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid and process_alive(pid):
                    raise UserError(f"another run (pid {pid}) is writing {self.path.parent}") from None
                self.path.unlink(missing_ok=True)  # stale: its owner died
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(str(os.getpid()))
            self.held = True
            return self
        raise UserError(f"cannot lock {self.path}")

    def __exit__(self, *exc):
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
