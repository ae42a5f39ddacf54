"""Training throughput (tokens/s, MFU) of `inheritune train` vs the Hugging Face `Trainer`, same model, data,
batch and precision, in the same run.

Run: .venv/bin/python benchmarks/train_throughput.py [--layers 10] [--steps 6] [--batch 8] [--seq-len 256]
The model is the first --layers blocks of SmolLM2-135M (an inherited child). Both trainers take the same
random windows of the default corpus, AdamW with the same settings, no evaluation, no checkpoints. The first
step of each (two for torch.compile) is warm-up and is not counted. MFU is against the matmul peak measured in
the same run (2048 x 2048, per dtype). Target: >= 1.2x the Trainer in fp32; report bf16's gain.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from inheritune.assets import asset_path  # noqa: E402
from inheritune.data import PrepareConfig, RandomWindows, TokenData, prepare  # noqa: E402
from inheritune.inherit import InheritConfig, inherit  # noqa: E402
from inheritune.optim import flops_per_token, measure_matmul_flops  # noqa: E402
from inheritune.train import TrainConfig, train  # noqa: E402


def ours(child, data, out, args, dtype, compile=False) -> float:
    warm = 2 if compile else 1  # compilation happens in the first steps
    train(TrainConfig(model=str(child), data=str(data), out=str(out), max_steps=args.steps + warm - 1,
                      seq_len=args.seq_len, micro_batch_size=args.batch, eval_interval=0, eval_windows=1,
                      checkpoint_interval=0, dtype=dtype, progress=False, device="cpu", warmup_steps=1,
                      compile=compile))
    lines = [json.loads(line) for line in open(f"{out}/metrics.jsonl")]
    steps = [line for line in lines if line["step"] > warm]
    return len(steps) / sum(1 / line["tokens_per_s"] for line in steps)  # tokens / total time


def hf_trainer(child, data, out, args, dtype) -> float:
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    windows = RandomWindows(TokenData(data).split("train"), args.seq_len, args.batch, seed=1337)

    class Windows(torch.utils.data.Dataset):
        def __len__(self):
            return args.steps * args.batch

        def __getitem__(self, index):
            x, _ = windows.batch(index // args.batch, index % args.batch, 1)
            return {"input_ids": x[0], "labels": x[0]}

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter())

    timer = StepTimes()
    model = AutoModelForCausalLM.from_pretrained(child, attn_implementation="sdpa")
    training_args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=args.batch, max_steps=args.steps,
                                      learning_rate=3e-4, weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.95,
                                      max_grad_norm=1.0, lr_scheduler_type="cosine", warmup_steps=1,
                                      bf16=dtype == "bfloat16", report_to=[], save_strategy="no", logging_steps=1000,
                                      dataloader_num_workers=0, use_cpu=True, disable_tqdm=True)
    Trainer(model=model, args=training_args, train_dataset=Windows(), callbacks=[timer]).train()
    seconds = timer.times[-1] - timer.times[0]
    return (len(timer.times) - 1) * args.batch * args.seq_len / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=10)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile runs")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each eager trainer (best kept)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = prepare(PrepareConfig(input=[str(asset_path("corpus"))], out=f"{tmp}/data", tokenizer="smollm2"),
                       progress=False)
        child = inherit(InheritConfig(reference="smollm2", layers=str(args.layers), out=f"{tmp}/child"))
        from transformers import AutoModelForCausalLM

        flops = flops_per_token(AutoModelForCausalLM.from_pretrained(child), args.seq_len)
        rows = []
        for dtype in args.dtypes:
            peak = measure_matmul_flops(torch.bfloat16 if dtype == "bfloat16" else torch.float32)
            # Alternate the two eager trainers and keep each one's best run: a shared 2-core machine is noisy.
            mine, theirs = 0.0, 0.0
            for attempt in range(args.repeats):
                mine = max(mine, ours(child, data, f"{tmp}/ours-{dtype}-{attempt}", args, dtype))
                theirs = max(theirs, hf_trainer(child, data, f"{tmp}/hf-{dtype}-{attempt}", args, dtype))
            compiled = None if args.no_compile else ours(child, data, f"{tmp}/compiled-{dtype}", args, dtype, True)
            rows.append((dtype, mine, compiled, theirs, peak))
    print(f"model: first {args.layers} blocks of SmolLM2-135M; batch {args.batch} x {args.seq_len} tokens; "
          f"{args.steps - 1} timed steps, best of {args.repeats} alternating runs (compile: one run); "
          f"{torch.get_num_threads()} threads; {flops / 1e6:.0f} MFLOP/token")
    for dtype, mine, compiled, theirs, peak in rows:
        print(f"{dtype}: measured matmul peak {peak / 1e9:.0f} GFLOP/s")
        for name, rate in (("HF Trainer", theirs), ("inheritune train", mine), ("inheritune train --compile", compiled)):
            if rate is not None:
                print(f"  {name:28s} {rate:7.0f} tok/s  MFU {flops * rate / peak:6.1%}  ratio vs HF {rate / theirs:.2f}x")
    if len(rows) == 2:
        print(f"bf16 autocast vs fp32, inheritune train: {rows[1][1] / rows[0][1]:.2f}x"
              + (f", with --compile: {rows[1][2] / rows[0][2]:.2f}x" if rows[0][2] else ""))


if __name__ == "__main__":
    main()
