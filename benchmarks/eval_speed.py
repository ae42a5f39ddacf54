"""Speed of the validation-loss pass of `inheritune evaluate` vs a plain `model(x, labels=x)` loop on the same
windows, and the wall time of the offline zero-shot tasks (cloze, word-order) on SmolLM2-135M through lm-eval.

Run: .venv/bin/python benchmarks/eval_speed.py [--windows 32] [--seq-len 512] [--task-limit 0] [--no-tasks]
Target: >= 1.0x the plain loop (inference mode, batching, no wasted logits).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from inheritune.analysis.scoring import validation_loss
from inheritune.assets.catalog import asset_path
from inheritune.data.dataset import PrepareConfig, TokenData, prepare
from inheritune.data.windows import fixed_windows
from inheritune.models.loading import load_model


def plain_loop(model, tokens, starts, seq_len) -> float:
    losses = []
    with torch.no_grad():
        for start in starts:
            x = torch.from_numpy(np.asarray(tokens[start:start + seq_len + 1], dtype=np.int64))[None]
            losses.append(model(x, labels=x).loss.item())  # HF shifts the labels itself
    return float(np.mean(losses))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--task-limit", type=int, default=0, help="items per offline task; 0 = all (500)")
    parser.add_argument("--no-tasks", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model, tokenizer = load_model("smollm2")
    tmp = tempfile.mkdtemp(prefix="eval-speed-")  # kept until the tasks are built from its val split
    data = TokenData(prepare(PrepareConfig(input=[str(asset_path("corpus"))], out=f"{tmp}/data",
                                           tokenizer="smollm2", progress=False)))
    tokens = data.split("val")
    starts = fixed_windows(tokens, args.seq_len, args.windows)  # the same windows evaluate uses
    sides = {"plain": lambda: plain_loop(model, tokens, starts, args.seq_len),
             "ours": lambda: validation_loss(model, data, args.seq_len, max_windows=args.windows,
                                             batch_size=8)["loss"]}
    losses = {name: side() for name, side in sides.items()}  # warm-up of each
    times = {name: [] for name in sides}
    for _ in range(args.repeats):  # alternated: plain, ours, plain, ours, ...
        for name, side in sides.items():
            started = time.perf_counter()
            side()
            times[name].append(time.perf_counter() - started)
    n = args.windows * args.seq_len
    print(f"validation loss on {args.windows} windows x {args.seq_len} tokens of SmolLM2-135M "
          f"({torch.get_num_threads()} threads), {args.repeats} alternating runs each, median [min-max]:")
    for name, label in (("plain", "plain model(x, labels=x) loop"), ("ours", "inheritune evaluate")):
        median = statistics.median(times[name])
        print(f"  {label:30s}: {median:6.1f} s [{min(times[name]):.1f}-{max(times[name]):.1f}]  "
              f"{n / median:7.0f} tokens/s  loss {losses[name]:.4f}")
    print(f"  ratio {statistics.median(times['plain']) / statistics.median(times['ours']):.2f}x (target >= 1.0x)")
    if not args.no_tasks:
        from inheritune.analysis.zeroshot import zero_shot

        tasks = ["cloze", "word-order"]
        started = time.perf_counter()
        result = zero_shot(model, tokenizer, tasks, batch_size=32, limit=args.task_limit or None, data=data)
        seconds = time.perf_counter() - started
        print(f"offline zero-shot tasks on SmolLM2-135M through lm-eval: {seconds:.0f} s wall")
        for task in tasks:
            r = result[task]
            print(f"  {task:12s} acc {100 * r['acc']:5.1f} [{100 * r['acc_ci'][0]:.1f}, {100 * r['acc_ci'][1]:.1f}]"
                  f"  (n = {r['n']}, chance {100 * r['chance']:.0f}%)")
    shutil.rmtree(tmp, ignore_errors=True)

if __name__ == "__main__":
    main()
