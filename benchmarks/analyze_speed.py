"""How close `analyze` is to its floor, one eager forward pass with attention probabilities, and how fast its
energy-rank stage is against a per-matrix SVD loop and batched `torch.linalg.svdvals`, on SmolLM2-135M.

Run: .venv/bin/python benchmarks/analyze_speed.py [--n 100] [--t 100] [--repeats 3] [--scaling]

Every comparison alternates its sides (A B A B ...), the same number of runs each, after a warm-up of each,
and prints the median with the spread (min-max) of each side. The model is loaded once, before any timing.
- floor: the bare eager forward over the same N x T tokens, same batches, attention probabilities computed
  (eager attention) but not read; analyze: measure + summary + recommendation, no files (``--with-files``
  adds report.json, CSVs and six plots).
- rank stage: the energy ranks of the attention matrices of every layer and batch of the analysis (captured
  once), each side called on the same per-layer batches as `analyze` makes them; the ranks of the fast path
  are asserted identical to the SVD definition on every matrix.
- --scaling: analyze / forward for N in {50, 100, 200} at T = 100 and T in {100, 200, 400} at N = 100.
Targets (issue 13): analyze <= 1.5x the forward; ranks >= 10x the loop and >= 1.0x svdvals.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
import time

import numpy as np
import torch

from inheritune.analysis import metrics
from inheritune.analysis.attention import AnalyzeConfig, load_tokens, sample_sequences
from inheritune.analyze import analyze
from inheritune.assets.catalog import asset_path
from inheritune.data.dataset import PrepareConfig, prepare
from inheritune.models.loading import load_model


def energy_rank_loop(attn: torch.Tensor, tau: float = 0.9) -> torch.Tensor:
    """The energy rank by its SVD definition, one matrix at a time with numpy: the baseline of this benchmark."""
    flat = attn.reshape(-1, *attn.shape[-2:]).double().cpu().numpy()
    out = np.empty(len(flat), dtype=np.int64)
    for i, matrix in enumerate(flat):
        s2 = np.linalg.svd(matrix, compute_uv=False) ** 2
        out[i] = int(np.searchsorted(np.cumsum(s2) / s2.sum(), tau - 1e-6) + 1)
    return torch.from_numpy(out.reshape(attn.shape[:-2]))


def energy_rank_svdvals(attn: torch.Tensor, tau: float = 0.9) -> torch.Tensor:
    """The same definition with batched torch.linalg.svdvals (float32, one call per batch)."""
    s2 = torch.linalg.svdvals(attn).double() ** 2
    energy = s2.cumsum(-1) / s2.sum(-1, keepdim=True)
    return (energy < tau - 1e-6).sum(-1) + 1


def alternate(sides: dict, repeats: int, warm_up: bool = True) -> dict[str, list[float]]:
    """Seconds of each side, run A B A B ... after one warm-up run of each."""
    for function in sides.values() if warm_up else ():
        function()
    times = {name: [] for name in sides}
    for _ in range(repeats):
        for name, function in sides.items():
            started = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - started)
    return times


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):7.2f} s  [{min(values):.2f}-{max(values):.2f}]"


@torch.inference_mode()
def forward_only(model, sequences: torch.Tensor, batch: int) -> None:
    for first in range(0, len(sequences), batch):
        model(sequences[first:first + batch], logits_to_keep=1)


def capture(model, sequences: torch.Tensor, batch: int) -> list[torch.Tensor]:
    """The attention probabilities of every layer for each batch, as analyze's hooks see them."""
    captured = []
    hooks = [layer.self_attn.register_forward_hook(lambda m, a, out: captured.append(out[1].detach().float()))
             for layer in model.model.layers]
    try:
        forward_only(model, sequences, batch)
    finally:
        for hook in hooks:
            hook.remove()
    return captured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--t", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rank-sequences", type=int, default=20, help="sequences whose attention the rank stage uses")
    parser.add_argument("--with-files", action="store_true", help="analyze also writes its report, CSVs and plots")
    parser.add_argument("--scaling", action="store_true", help="also the N and T scaling table")
    parser.add_argument("--scaling-only", action="store_true", help="only the scaling table")
    args = parser.parse_args()
    model, tokenizer = load_model("smollm2", attn_implementation="eager")
    with tempfile.TemporaryDirectory() as tmp:
        data = prepare(PrepareConfig(input=[str(asset_path("corpus"))], out=f"{tmp}/data", tokenizer="smollm2",
                                     progress=False))
        tokens = load_tokens(str(data), tokenizer)[0]

        def analysis(n, t, out=""):
            def run():
                with contextlib.redirect_stdout(io.StringIO()):  # its tables, once per run
                    analyze(AnalyzeConfig(data=str(data), n=n, t=t, out=out, overwrite=True, progress=False),
                            model=model, tokenizer=tokenizer)
            return run

        if args.scaling_only:
            return scaling(model, tokens, analysis, args)
        sequences = sample_sequences(tokens, args.n, args.t, 0)
        times = alternate({"forward": lambda: forward_only(model, sequences, 10),
                           "analyze": analysis(args.n, args.t, f"{tmp}/a" if args.with_files else "")}, args.repeats)
        print(f"SmolLM2-135M, N = {args.n}, T = {args.t}, {torch.get_num_threads()} threads, {args.repeats} alternating "
              f"runs each, median [min-max]:")
        print(f"  bare eager forward (floor)  {spread(times['forward'])}")
        print(f"  analyze{' (with files)' if args.with_files else ' (no files)':21s}{spread(times['analyze'])}")
        print(f"  ratio analyze / forward: {statistics.median(times['analyze']) / statistics.median(times['forward']):.2f}x "
              f"(target <= 1.5x)")

        batches = capture(model, sample_sequences(tokens, args.rank_sequences, args.t, 0), 10)
        matrices = sum(b.shape[0] * b.shape[1] for b in batches)
        fast = [metrics.energy_rank(b, 0.9) for b in batches]
        exact = [energy_rank_loop(b, 0.9) for b in batches]
        same = sum(int((f == e).sum()) for f, e in zip(fast, exact))
        assert same == matrices, f"fast ranks differ from the SVD definition on {matrices - same} matrices"
        certified = sum(int(metrics._bounded_ranks(b.reshape(-1, args.t, args.t), torch.tensor([0.9], dtype=torch.float64))[1].sum())
                        for b in batches)
        ranks = alternate({"loop": lambda: [energy_rank_loop(b) for b in batches],
                           "svdvals": lambda: [energy_rank_svdvals(b) for b in batches],
                           "inheritune": lambda: [metrics.energy_rank(b, 0.9) for b in batches],
                           "inheritune, full eigenvalues": lambda: [metrics.energy_rank(b, 0.9, fast=False)
                                                                   for b in batches]}, args.repeats)
        print(f"energy rank of {matrices} real attention matrices ({args.t}x{args.t}, {len(batches)} per-layer batches); "
              f"identical to the SVD definition on all {matrices}; {certified} ({100 * certified / matrices:.0f}%) "
              "settled by the projection bounds:")
        for name, values in ranks.items():
            print(f"  {name:30s} {spread(values)}  loop/this {statistics.median(ranks['loop']) / statistics.median(values):5.1f}x  "
                  f"svdvals/this {statistics.median(ranks['svdvals']) / statistics.median(values):5.2f}x")

        if args.scaling:
            scaling(model, tokens, analysis, args)


def scaling(model, tokens, analysis, args) -> None:
    """analyze / forward as N and T grow: one run of each after the main measurements warmed everything up
    (a warm-up run of the largest cases would double a long benchmark)."""
    print(f"scaling (analyze, no files / bare forward; {args.repeats - 1 or 1} alternating run(s) each, median):")
    print("| N | T | forward s | analyze s | ratio |")
    print("|---|---|---|---|---|")
    for n, t in ((50, 100), (100, 100), (200, 100), (100, 200), (100, 400)):
        chosen = sample_sequences(tokens, n, t, 0)
        runs = alternate({"forward": lambda: forward_only(model, chosen, 10), "analyze": analysis(n, t)},
                         max(1, args.repeats - 1), warm_up=False)
        f, a = statistics.median(runs["forward"]), statistics.median(runs["analyze"])
        print(f"| {n} | {t} | {f:.1f} | {a:.1f} | {a / f:.2f}x |", flush=True)

if __name__ == "__main__":
    main()
