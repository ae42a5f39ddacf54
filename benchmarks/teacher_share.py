"""What sharing the KD teacher's forward pass saves in one rung of a search: K children of SmolLM2 distilled
from it on the same batches, trained one after another, each paying the teacher itself (separate) against
the first paying it and the others reading its hidden states back (shared, ``--teacher-cache``).

Run: .venv/bin/python benchmarks/teacher_share.py [--k 3] [--steps 4] [--repeats 2]

Both sides train the same children (first:15, spread:15, and first:13 ...; all of SmolLM2's vocabulary) for the
same steps from the same cut, alternating A B A B after one warm-up of each, and the final val losses of the
two sides are checked equal (the cache must change no loss). Printed: seconds per rung (median, min-max) of
each side, the ratio shared / separate, the disk the cache takes and each side's peak RSS. The cache holds
hidden states, so the teacher's head (a fifth of SmolLM2's forward FLOPs) is still paid by every student.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from inheritune.assets.catalog import asset_path
from inheritune.data.dataset import PrepareConfig, prepare
from inheritune.inherit import InheritConfig, inherit
from inheritune.train import TrainConfig, train
from inheritune.utils.memory import peak_mb, reset_peak

CHILDREN = ("first:15", "spread:15", "first:13", "spread:13", "first:11", "spread:11")


def rung(children: list[Path], data: Path, work: Path, steps: int, cache: Path | None) -> tuple[float, list[float]]:
    """Seconds to train every child of a rung one after another, and their final val losses."""
    shutil.rmtree(work, ignore_errors=True)
    losses, began = [], time.perf_counter()
    for i, child in enumerate(children):
        config = TrainConfig(model=str(child), data=str(data), out=str(work / f"c{i}"), max_steps=steps, seq_len=128,
                             micro_batch_size=4, eval_windows=8, eval_interval=0, lr=1e-3, teacher="smollm2",
                             checkpoint_interval=0, progress=False, device="cpu", compile="off",
                             teacher_cache=str(cache) if cache else "")
        with contextlib.redirect_stdout(io.StringIO()):
            losses.append(train(config)["final_val_loss"])
    return time.perf_counter() - began, losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=3, help="KD children in the rung")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--data", default="data/english", help="a dataset prepared with the smollm2 tokenizer "
                                                               "(prepared from the corpus when missing)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="teacher-share-"))
    try:
        data = Path(args.data)
        with contextlib.redirect_stdout(io.StringIO()):
            if not (data / "meta.json").is_file():
                data = root / "data"
                prepare(PrepareConfig(input=[str(asset_path("corpus"))], out=str(data), tokenizer="smollm2"),
                        progress=False)
            children = [inherit(InheritConfig(reference="smollm2", out=str(root / f"child-{i}"), select=spec))
                        for i, spec in enumerate(CHILDREN[:args.k])]
        import torch
        device = torch.device("cpu")
        times, peaks, cache_bytes = {"separate": [], "shared": []}, {"separate": 0.0, "shared": 0.0}, 0
        losses = {}
        for turn in range(args.repeats + 1):  # turn 0: the warm-up of each side, not counted
            for side in ("separate", "shared"):
                cache = root / "cache" if side == "shared" else None
                shutil.rmtree(root / "cache", ignore_errors=True)
                reset_peak(device)
                seconds, found = rung(children, data, root / "work", args.steps, cache)
                peaks[side] = max(peaks[side], peak_mb(device) or 0.0)
                if cache:
                    cache_bytes = sum(p.stat().st_size for p in cache.rglob("*.npy"))
                losses[side] = found
                if turn:
                    times[side].append(seconds)
        assert losses["shared"] == losses["separate"], losses  # the cache changes no loss
        tokens = args.steps * 4 * 128
        print(f"a rung of {args.k} KD children of SmolLM2, {args.steps} steps x {4 * 128} tokens each "
              f"({tokens:,} tokens a child), {args.repeats} runs a side after a warm-up:")
        for side, values in times.items():
            print(f"  {side:8s}: {statistics.median(values):7.1f} s per rung (min {min(values):.1f}, max "
                  f"{max(values):.1f}); peak RSS {peaks[side]:,.0f} MB")
        ratio = statistics.median(times["shared"]) / statistics.median(times["separate"])
        print(f"  shared / separate: {ratio:.3f} (the same final val losses on both sides: {losses['shared']})")
        print(f"  the cache: {cache_bytes / 2**20:.1f} MB on disk for {args.steps} micro-batches "
              f"({cache_bytes / max(1, args.steps) / 2**20:.2f} MB each); no memory beyond one micro-batch's")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
