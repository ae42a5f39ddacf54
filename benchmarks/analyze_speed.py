"""Wall time of the full lazy-layer analysis of SmolLM2-135M (N = 100, T = 100), and the speed-up of the
batched energy-rank computation over a per-matrix numpy SVD loop on the same real attention tensors.

Run: .venv/bin/python benchmarks/analyze_speed.py [--n 100] [--t 100] [--rank-sequences 20]
Targets: the whole analysis in under 60 s on 2 cores; >= 10x over the loop.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from inheritune import metrics
from inheritune.analyze import AnalyzeConfig, analyze, load_tokens, sample_sequences
from inheritune.assets import asset_path
from inheritune.data import PrepareConfig, prepare
from inheritune.models import load_model


def energy_rank_loop(attn: torch.Tensor, tau: float = 0.9) -> torch.Tensor:
    """The energy rank by its SVD definition, one matrix at a time with numpy: the baseline of this benchmark."""
    flat = attn.reshape(-1, *attn.shape[-2:]).double().cpu().numpy()
    out = np.empty(len(flat), dtype=np.int64)
    for i, matrix in enumerate(flat):
        s2 = np.linalg.svd(matrix, compute_uv=False) ** 2
        out[i] = int(np.searchsorted(np.cumsum(s2) / s2.sum(), tau - 1e-6) + 1)
    return torch.from_numpy(out.reshape(attn.shape[:-2]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--t", type=int, default=100)
    parser.add_argument("--rank-sequences", type=int, default=20, help="sequences whose attention the rank timing uses")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data = prepare(PrepareConfig(input=[str(asset_path("corpus"))], out=f"{tmp}/data", tokenizer="smollm2"),
                       progress=False)
        started = time.perf_counter()
        report = analyze(AnalyzeConfig(model="smollm2", data=str(data), n=args.n, t=args.t, out=f"{tmp}/a"),
                         progress=False)
        whole = time.perf_counter() - started

        model, tokenizer = load_model("smollm2", attn_implementation="eager")
        sequences = sample_sequences(load_tokens(str(data), tokenizer)[0], args.rank_sequences, args.t, 0)
        captured = []
        hooks = [layer.self_attn.register_forward_hook(lambda m, a, out: captured.append(out[1].detach()))
                 for layer in model.model.layers]
        with torch.inference_mode():
            model(sequences, logits_to_keep=1)
        for hook in hooks:
            hook.remove()
    attention = torch.stack(captured)  # [L, N, H, T, T]
    started = time.perf_counter()
    batched = metrics.energy_rank(attention, 0.9)
    batched_s = time.perf_counter() - started
    started = time.perf_counter()
    looped = energy_rank_loop(attention, 0.9)
    loop_s = time.perf_counter() - started
    matrices = attention.shape[:3].numel()
    agree = (batched == looped).float().mean().item()
    print(f"full analysis of SmolLM2-135M, N={args.n}, T={args.t}: {whole:.1f} s wall (model load, forward with "
          f"hooks, metrics, report, plots; {torch.get_num_threads()} threads); target < 60 s")
    print(f"recommended k = {report['recommendation']['k']}")
    print(f"energy rank of {matrices} real attention matrices ({args.t}x{args.t}):")
    print(f"  per-matrix numpy SVD loop : {loop_s:6.2f} s")
    print(f"  batched (inheritune)      : {batched_s:6.2f} s")
    print(f"  speed-up {loop_s / batched_s:.1f}x (target >= 10x); identical ranks on {100 * agree:.2f}% of matrices")


if __name__ == "__main__":
    main()
