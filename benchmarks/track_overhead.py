"""What `train --track-attention` costs: the share of training time spent measuring attention, at the interval
the emergence search uses (every twelfth of the run) and at a denser one, on the search's reference shape.

Run: .venv/bin/python benchmarks/track_overhead.py [--steps 120] [--data DIR]
Each run's summary reports ``track_seconds`` (time inside the tracker) and ``train_seconds`` (the whole loop),
measured in the same run, so the share does not depend on how fast the shared machine is that minute; the same
training without tracking is also run, alternated with the tracked ones, and its time printed beside them.
Target (issue 21): at most 5% of training at the default interval.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from inheritune.data.dataset import PrepareConfig, prepare
from inheritune.train import train
from inheritune.training.recipe import TrainConfig

SHAPE = "scratch:gpt2:layers=16,hidden=64,heads=2,scale_attn_by_inverse_layer_idx=false"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--data", default=None, help="a prepared dataset (default: the corpus with a 2K BPE)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="track-overhead-"))
    data = args.data
    if data is None:
        from inheritune.assets.catalog import fetch

        corpus = str(fetch(["corpus"], verbose=False)["corpus"])
        data = str(prepare(PrepareConfig(input=[corpus], out=str(work / "data"), train_tokenizer=2048), progress=False))
    intervals = {"off": 0, "every twelfth (search default)": max(1, args.steps // 12),
                 "every 5 steps": 5}
    rows = {name: [] for name in intervals}
    for repeat in range(args.repeats):
        for name, every in intervals.items():  # alternated, so that a slow minute hits every side
            summary = train(TrainConfig(model=SHAPE, data=data, out=str(work / f"{repeat}-{every}"),
                                        max_steps=args.steps, seq_len=256, micro_batch_size=16, lr=3e-3,
                                        bos_windows=True, track_attention=every, track_windows=8, eval_interval=0,
                                        eval_windows=8, checkpoint_interval=0, progress=False))
            rows[name].append((summary["train_seconds"], summary["track_seconds"]))
    print(f"{args.steps} steps of {SHAPE}, 16 x 256 tokens a step, 8 tracking windows")
    print("| tracking | train s (each repeat) | tracker s | tracker share of training |")
    print("|---|---|---|---|")
    for name, values in rows.items():
        train_s = " / ".join(f"{t:.1f}" for t, _ in values)
        track_s = " / ".join(f"{k:.1f}" for _, k in values)
        share = sum(k for _, k in values) / sum(t for t, _ in values)
        print(f"| {name} | {train_s} | {track_s} | {share:.1%} |")


if __name__ == "__main__":
    main()
