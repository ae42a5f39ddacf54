"""Training throughput (tokens/s, MFU) of `inheritune train` vs the Hugging Face `Trainer`, same model, data,
batch and precision, in the same run.

Run: .venv/bin/python benchmarks/train_throughput.py [--layers 10] [--steps 6] [--batch 8] [--seq-len 256]
The model is the first --layers blocks of SmolLM2-135M (an inherited child). Both trainers take the same
random windows of the default corpus, AdamW with the same settings, no evaluation, no checkpoints. The first
step of each is warm-up and is not counted. MFU is against the measured CPU matmul peak (180 GFLOP/s fp32,
400 GFLOP/s bf16 on the project's 2 cores). Target: >= 1.2x the Trainer in fp32; report bf16's gain.
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
from inheritune.optim import default_peak_flops, flops_per_token  # noqa: E402
from inheritune.train import TrainConfig, train  # noqa: E402


def ours(child, data, out, args, dtype) -> float:
    train(TrainConfig(model=str(child), data=str(data), out=str(out), max_steps=args.steps, seq_len=args.seq_len,
                      micro_batch_size=args.batch, eval_interval=0, eval_windows=1, checkpoint_interval=0,
                      dtype=dtype, progress=False, device="cpu", warmup_steps=1))
    lines = [json.loads(line) for line in open(f"{out}/metrics.jsonl")]
    steps = [line for line in lines if line["step"] > 1]
    return sum(line["tokens_per_s"] for line in steps) / len(steps)


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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = prepare(PrepareConfig(input=[str(asset_path("corpus"))], out=f"{tmp}/data", tokenizer="smollm2"),
                       progress=False)
        child = inherit(InheritConfig(reference="smollm2", layers=str(args.layers), out=f"{tmp}/child"))
        from transformers import AutoModelForCausalLM

        flops = flops_per_token(AutoModelForCausalLM.from_pretrained(child), args.seq_len)
        rows = []
        for dtype in args.dtypes:
            peak = default_peak_flops(torch.device("cpu"), torch.bfloat16 if dtype == "bfloat16" else torch.float32)
            mine = ours(child, data, f"{tmp}/ours-{dtype}", args, dtype)
            theirs = hf_trainer(child, data, f"{tmp}/hf-{dtype}", args, dtype)
            rows.append((dtype, mine, theirs, peak))
    print(f"model: first {args.layers} blocks of SmolLM2-135M; batch {args.batch} x {args.seq_len} tokens; "
          f"{args.steps - 1} timed steps; {torch.get_num_threads()} threads; {flops / 1e6:.0f} MFLOP/token")
    for dtype, mine, theirs, peak in rows:
        print(f"{dtype:9s} inheritune {mine:7.0f} tok/s (MFU {flops * mine / peak:.1%})   HF Trainer {theirs:7.0f} tok/s "
              f"(MFU {flops * theirs / peak:.1%})   ratio {mine / theirs:.2f}x")
    if len(rows) == 2:
        print(f"bf16 autocast vs fp32 (inheritune): {rows[1][1] / rows[0][1]:.2f}x")


if __name__ == "__main__":
    main()
