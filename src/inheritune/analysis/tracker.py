"""Watching attention form during training (``train --track-attention N``).

Every N steps and at the end, on a fixed seeded set of validation windows (the same rows the run's validation
reads, BOS-first under --bos-windows), each layer is measured by analyze's own definitions: MaxRank (energy
rank at tau = 0.9, the largest over heads), normalised entropy, the state (uniform / lazy / attentive) against
the uniform causal matrix, plus the mass on position 0 among queries that have other keys to choose from
(t >= 16) and the share of heads where that mass exceeds the sink threshold. Each measurement is a line of
``attention.jsonl``; ``emergence.png`` draws MaxRank and first-token mass against tokens seen.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from inheritune.analysis.attention import AnalyzeConfig, measure, summarize
from inheritune.analysis.plots import draw_emergence
from inheritune.data.windows import fixed_windows, window_rows
from inheritune.utils.jsonl import read_log

KEYS = ("max_rank", "entropy", "state", "first_token_mass", "max_first_token_mass", "first_token_sink_heads",
        "uniform_rank")


def tracking_rows(val_tokens: np.ndarray, seq_len: int, count: int, seed: int, bos: int | None) -> torch.Tensor:
    """``count`` of the fixed validation windows, chosen with the seed: model inputs [count, seq_len]."""
    starts = fixed_windows(val_tokens, seq_len)
    if count < len(starts):
        starts = np.sort(np.random.default_rng([seed, 2]).choice(starts, size=count, replace=False))
    return window_rows(val_tokens, starts, seq_len, bos)[:, :-1]


def measure_attention(model, rows: torch.Tensor, sink_threshold: float = 0.3) -> list[dict]:
    """Per-layer attention measurements of ``model`` on ``rows`` (analyze's definitions, no logit lens); the
    model's attention implementation and train/eval mode are left as they were."""
    previous = getattr(model.config, "_attn_implementation", None)
    was_training = model.training
    model.eval()
    config = AnalyzeConfig(n=len(rows), t=rows.shape[1], batch_size=min(8, len(rows)), sink_threshold=sink_threshold,
                           lens_sequences=0, device="cpu")
    try:
        raw = measure(model, rows.to(next(model.parameters()).device), config, progress=False, lens=False)
    finally:
        if previous and previous != "eager":
            model.set_attn_implementation(previous)
        model.train(was_training)
    return [{key: layer[key] for key in KEYS} for layer in summarize(raw, config)["layers"]]


class AttentionTracker:
    """Appends one line per measurement to ``out/attention.jsonl`` (a resumed run first drops the lines past its
    checkpoint, as it does the metrics') and redraws ``out/emergence.png``."""

    def __init__(self, out: Path, rows: torch.Tensor, every: int, sink_threshold: float = 0.3):
        self.path, self.plot = out / "attention.jsonl", out / "emergence.png"
        self.rows, self.every, self.sink_threshold = rows, every, sink_threshold

    def due(self, step: int, max_steps: int) -> bool:
        return self.every > 0 and (step % self.every == 0 or step == max_steps)

    def track(self, model, step: int, tokens: int) -> dict:
        layers = measure_attention(model, self.rows, self.sink_threshold)
        record = {"step": step, "tokens": tokens, "windows": len(self.rows), "t": int(self.rows.shape[1]),
                  "layers": layers}
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        draw_emergence(read_track(self.path), self.plot)
        return record


def read_track(path: Path) -> list[dict]:
    """The measurements of an attention.jsonl, in order (unreadable lines skipped)."""
    return [r for r in read_log(path) if "layers" in r]
