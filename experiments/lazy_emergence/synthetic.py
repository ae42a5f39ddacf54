"""The positive control of the attention tracker: a synthetic task on which an attention sink must form.

Guo et al. ("Active-Dormant Attention Heads", 2024) train 1-3-layer transformers on sequences that all start
with BOS: tokens follow a bigram chain, except that after a trigger token the next token copies the one before
the trigger. The head that does the copy has nothing to do on the other positions, and parks its attention on
BOS. Here the tokens between triggers are uniform (no bigram: nothing but the copy is worth attending for),
the stream is written as a prepared dataset with no BOS inside it, and ``train --bos-windows
--track-attention`` puts BOS at position 0 of every window and measures, so the whole chain (windows,
training, eager measurement, states, first-token mass) is under test: if no sink forms here, the measurement
is wrong. Measured (docs/reproduction.md, part 2): a one-layer, one-head model parks its head on BOS after
about 400 steps (first-token mass 0.95, MaxRank 1.06: lazy); with a cosine schedule over 600 steps, or two
layers of two heads, it did not within 600 steps.

    python experiments/lazy_emergence/synthetic.py --out runs/positive-control
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from inheritune.analysis.tracker import read_track
from inheritune.data.dataset import write_token_dataset
from inheritune.train import train
from inheritune.training.recipe import TrainConfig

BOS = 0
CHARS = 30          # tokens 1..30 follow the bigram chain
TRIGGERS = (1, 2)   # after one of these, the next token copies the token before it
SUCCESSORS = CHARS  # the next token is uniform over all 30 (3: a bigram chain with 3 successors per token)


def bigram_copy_sequences(n: int, length: int, seed: int, table_seed: int = 0,
                          successors: int = SUCCESSORS) -> np.ndarray:
    """``n`` sequences of ``length`` tokens: the bigram chain (one transition table, from ``table_seed``, for
    every split) with copy-back after triggers. No BOS inside: --bos-windows puts it at position 0 only."""
    table_rng, rng = np.random.default_rng(table_seed), np.random.default_rng(seed)
    table = np.stack([table_rng.choice(np.arange(1, CHARS + 1), size=successors, replace=False)
                      for _ in range(CHARS + 1)])
    out = np.empty((n, length), dtype=np.int64)
    out[:, 0] = rng.integers(1, CHARS + 1, size=n)
    out[:, 1] = table[out[:, 0], rng.integers(0, successors, size=n)]
    for i in range(2, length):
        previous, before = out[:, i - 1], out[:, i - 2]
        chained = table[previous, rng.integers(0, successors, size=n)]
        out[:, i] = np.where(np.isin(previous, TRIGGERS), before, chained)
    return out


def make_dataset(out: Path, length: int = 64, train_sequences: int = 20000, val_sequences: int = 200,
                 seed: int = 0, successors: int = SUCCESSORS) -> Path:
    train_rows = bigram_copy_sequences(train_sequences, length, seed + 1, seed, successors)
    val_rows = bigram_copy_sequences(val_sequences, length, seed + 2, seed, successors)
    return write_token_dataset(out, train_rows.reshape(-1), val_rows.reshape(-1), vocab_size=CHARS + 1, eos=BOS,
                               name=f"synthetic bigram + copy-back, {CHARS} tokens + BOS", bos=BOS)


def control_config(data: Path, out: Path, steps: int = 500, seed: int = 1337, **overrides) -> TrainConfig:
    """One layer, one head (the copy needs exactly one head, which has nothing to do elsewhere), constant lr after
    the warmup (wsd: a cosine decay spent the lr before the sink formed in the first trials), BOS windows."""
    values = dict(model="scratch:llama:layers=1,hidden=64,heads=1,ffn=128", data=str(data), out=str(out),
                  max_steps=steps, seq_len=64, micro_batch_size=32, lr=3e-3, weight_decay=0.1, warmup_steps=10,
                  schedule="wsd", decay_fraction=0.1, bos_windows=True, track_attention=50, track_windows=16,
                  eval_interval=0, eval_windows=16, checkpoint_interval=0, seed=seed, progress=False, overwrite=True)
    return TrainConfig(**(values | overrides))


def sink_formed(records: list[dict], threshold: float = 0.3) -> dict:
    """The first measurement at which a layer's strongest head puts more than ``threshold`` of its late queries'
    mass on position 0, and the largest such mass at the end."""
    first = next((r for r in records if any(l["max_first_token_mass"] > threshold for l in r["layers"])), None)
    final = records[-1]["layers"]
    return {"formed": first is not None, "step": first["step"] if first else None,
            "tokens": first["tokens"] if first else None,
            "final_max_first_token_mass": max(l["max_first_token_mass"] for l in final),
            "final_states": [l["state"] for l in final]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/positive-control")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337, 2, 3])
    args = parser.parse_args()
    out = Path(args.out)
    data = make_dataset(out / "data")
    results = {}
    for seed in args.seeds:
        began = time.perf_counter()
        summary = train(control_config(data, out / f"seed-{seed}", args.steps, seed))
        found = sink_formed(read_track(out / f"seed-{seed}" / "attention.jsonl"))
        results[seed] = found | {"seconds": round(time.perf_counter() - began, 1),
                                 "final_val_loss": summary["final_val_loss"]}
        print(f"seed {seed}: {json.dumps(results[seed])}", flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
