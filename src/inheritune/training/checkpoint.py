"""Atomic checkpoints (temp file + rename) with a sha256 written beside each, keep-last-K, and the lock that keeps
two runs out of one dir."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from inheritune.utils.errors import UserError, process_alive, writing
from inheritune.utils.hashing import sha256_file
from inheritune.utils.memory import payload_bytes


def checkpoints(out: Path) -> list[Path]:
    """Finished checkpoints, oldest first."""
    return sorted(out.glob("ckpt-*.pt"))


def checksum_file(path: Path) -> Path:
    """Where the sha256 of a checkpoint is kept: ``ckpt-N.pt.sha256``, written with it and moved with it."""
    return path.with_name(path.name + ".sha256")


def remove_checkpoint(path: Path) -> None:
    path.unlink(missing_ok=True)
    checksum_file(path).unlink(missing_ok=True)


def move_checkpoint(path: Path, folder: Path) -> None:
    os.replace(path, folder / path.name)
    if checksum_file(path).is_file():
        os.replace(checksum_file(path), folder / checksum_file(path).name)


def save_checkpoint(out: Path, step: int, payload: dict, keep: int) -> Path:
    path = out / f"ckpt-{step:07d}.pt"
    tmp = path.with_suffix(".pt.tmp")
    earlier = checkpoints(out)
    fallback = (f"The last good checkpoint is {earlier[-1]}: free space, then run the same command again (it "
                "resumes from there)" if earlier else "No checkpoint of this run was written yet: free space, then run the "
                "same command again (train: with --resume, which starts it over)")
    try:
        with writing("the checkpoint", path, payload_bytes(payload), fallback):
            torch.save(payload, tmp)
            with open(tmp, "rb+") as handle:  # a delayed allocation fails here, not in torch.save
                os.fsync(handle.fileno())
            digest = sha256_file(tmp)
            with open(checksum_file(tmp), "w") as handle:
                handle.write(f"{digest}  {path.name}\n")
                handle.flush()
                os.fsync(handle.fileno())
    except BaseException:
        remove_checkpoint(tmp)  # a partial file would only take the space the next try needs
        raise
    os.replace(checksum_file(tmp), checksum_file(path))
    os.replace(tmp, path)  # a checkpoint is either whole or absent
    for old in checkpoints(out)[:-keep] if keep > 0 else []:
        remove_checkpoint(old)
    return path


def verify_checkpoint(path: Path) -> None:
    """Compare a checkpoint with the sha256 written beside it: bit rot is caught like truncation. A checkpoint
    written before checksums were kept has none and is only checked by loading it."""
    recorded = checksum_file(path)
    if not recorded.is_file():
        return
    expected = recorded.read_text().split()[0] if recorded.read_text().split() else ""
    if sha256_file(path) != expected:
        raise UserError(_damaged(path, "its sha256 does not match the one written with it"))


def load_checkpoint(path: Path) -> dict:
    verify_checkpoint(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or damaged file: say which, offer the one before
        raise UserError(_damaged(path, type(exc).__name__)) from None


def _damaged(path: Path, why: str) -> str:
    """One line for a damaged checkpoint, with the way back that works for both train and run: move the damaged
    file aside, and the same command resumes from the newest checkpoint left."""
    older = [p for p in checkpoints(path.parent) if p < path]
    if not older:
        return (f"checkpoint {path} is damaged ({why}) and no older one is left: delete it and start that training "
                "over (train: --overwrite; run: the same command)")
    return (f"checkpoint {path} is damaged ({why}); the older checkpoint {older[-1]} is available: move {path.name} "
            f"aside (e.g. mv {path} {path}.damaged) and run the same command again: it resumes from {older[-1].name} "
            f"(train --resume-from {older[-1]} does the same)")


def drop_checkpoints(key: str, out: Path, kept: str = "final") -> None:
    """A finished stage's checkpoints (its model is in ``out/kept`` and recorded): only the space they take is
    left."""
    found = checkpoints(out)
    freed = sum(path.stat().st_size for path in found)
    for path in found:
        remove_checkpoint(path)
    if found:
        print(f"{key}: deleted its {len(found)} checkpoint(s), {freed / 2**30:.2f} GiB, now that its model is in "
              f"{out / kept} (--keep-stage-checkpoints true keeps them)", flush=True)


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
