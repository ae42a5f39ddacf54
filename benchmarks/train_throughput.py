"""Training throughput (tokens/s, MFU) of `inheritune train` vs the Hugging Face `Trainer`, same model, data,
batch, precision and optimizer, alternated in the same run.

Run: .venv/bin/python benchmarks/train_throughput.py [--layers 10] [--steps 8] [--repeats 3] [--compile]

The model is the first --layers blocks of SmolLM2-135M (an inherited child), batch 8 x 256. Both trainers
take the same random windows of the default corpus and AdamW with the same settings, fused on both sides
(the Trainer's optim="adamw_torch_fused"), no evaluation, no checkpoints. Both are timed the same way: the
wall time between the ends of consecutive optimizer steps (the Trainer's on_step_end, our metrics' step
end time), data loading and logging included; the first step of each run is warm-up and not counted. The
sides run A B C A B C ...; each prints its median and spread. MFU is against the fp32 matmul peak measured
in the same run (before and after). Target (issue 13): `inheritune train` eager >= 1.2x the Trainer, and
>= 60% MFU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from inheritune.assets.catalog import asset_path
from inheritune.data.dataset import PrepareConfig, TokenData, prepare
from inheritune.data.windows import RandomWindows
from inheritune.inherit import InheritConfig, inherit
from inheritune.train import TrainConfig, train
from inheritune.training.optim import _MEASURED, flops_per_token, measure_matmul_flops


def ours(child, data, out, args, chunked=True, compile="off") -> float:
    warm = 3 if compile == "on" else 1  # compilation happens in the first steps
    train(TrainConfig(model=str(child), data=str(data), out=str(out), max_steps=args.steps + warm,
                      seq_len=args.seq_len, micro_batch_size=args.batch, eval_interval=0, eval_windows=1,
                      checkpoint_interval=0, dtype=args.dtype, progress=False, device="cpu", warmup_steps=1,
                      compile=compile, chunked_loss=chunked, lr=3e-4))
    ends = [json.loads(line)["time"] for line in open(f"{out}/metrics.jsonl")][warm - 1:]
    return (len(ends) - 1) * args.batch * args.seq_len / (ends[-1] - ends[0])


def hf_trainer(child, data, out, args) -> float:
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    windows = RandomWindows(TokenData(data).split("train"), args.seq_len, args.batch, seed=1337)

    class Windows(torch.utils.data.Dataset):
        def __len__(self):
            return (args.steps + 1) * args.batch

        def __getitem__(self, index):
            x, _ = windows.batch(index // args.batch, index % args.batch, 1)
            return {"input_ids": x[0], "labels": x[0]}

    class StepEnds(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter())

    ends = StepEnds()
    model = AutoModelForCausalLM.from_pretrained(child, attn_implementation="sdpa")
    training_args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=args.batch,
                                      max_steps=args.steps + 1, learning_rate=3e-4, weight_decay=0.1, adam_beta1=0.9,
                                      adam_beta2=0.95, max_grad_norm=1.0, lr_scheduler_type="cosine", warmup_steps=1,
                                      optim="adamw_torch_fused", bf16=args.dtype == "bfloat16", report_to=[],
                                      save_strategy="no", logging_steps=1, dataloader_num_workers=0, use_cpu=True,
                                      disable_tqdm=True)
    Trainer(model=model, args=training_args, train_dataset=Windows(), callbacks=[ends]).train()
    return (len(ends.times) - 1) * args.batch * args.seq_len / (ends.times[-1] - ends.times[0])


def _peak() -> float:
    _MEASURED.clear()
    return measure_matmul_flops(torch.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=10)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per run (after one warm-up step)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each side")
    parser.add_argument("--compile", action="store_true", help="add one --compile on run of inheritune train")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = prepare(PrepareConfig(input=[str(asset_path("corpus"))], out=f"{tmp}/data", tokenizer="smollm2",
                                     progress=False))
        child = inherit(InheritConfig(reference="smollm2", layers=str(args.layers), out=f"{tmp}/child"))
        from transformers import AutoModelForCausalLM

        flops = flops_per_token(AutoModelForCausalLM.from_pretrained(child), args.seq_len)
        peaks = [_peak()]
        sides = {"HF Trainer (adamw_torch_fused)": lambda i: hf_trainer(child, data, f"{tmp}/hf-{i}", args),
                 "inheritune train (chunked loss)": lambda i: ours(child, data, f"{tmp}/ours-{i}", args),
                 "inheritune train (plain loss)": lambda i: ours(child, data, f"{tmp}/plain-{i}", args, chunked=False)}
        rates = {name: [] for name in sides}
        for attempt in range(args.repeats):
            for name, side in sides.items():
                rates[name].append(side(attempt))
        if args.compile:
            rates["inheritune train --compile on"] = [ours(child, data, f"{tmp}/compiled", args, compile="on")]
        peaks.append(_peak())
    peak = statistics.mean(peaks)
    hf = statistics.median(rates["HF Trainer (adamw_torch_fused)"])
    print(f"model: first {args.layers} blocks of SmolLM2-135M; batch {args.batch} x {args.seq_len}; {args.dtype}; "
          f"{args.steps} timed steps per run, {args.repeats} alternating runs per side; {torch.get_num_threads()} "
          f"threads; {flops / 1e6:.0f} MFLOP/token; fp32 matmul peak {peaks[0] / 1e9:.0f} then {peaks[1] / 1e9:.0f} "
          "GFLOP/s (MFU against their mean)")
    print("| trainer | tokens/s median [min-max] | MFU | ratio vs HF Trainer (medians) |")
    print("|---|---|---|---|")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.0f} [{min(values):.0f}-{max(values):.0f}] | {flops * median / peak:.1%} | "
              f"{median / hf:.2f}x |")


if __name__ == "__main__":
    main()
