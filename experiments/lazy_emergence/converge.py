"""Part 3's cell where the premise is built in: a reference that *converges* within its budget, so that its late
layers have nothing left to learn. Do they go lazy?

The language is a second-order Markov chain over 32 symbols (ids 1-32; 0 is BOS, put at position 0 of every
window by --bos-windows): each pair of previous symbols allows 4 next symbols, with probabilities drawn once
from a Dirichlet(1) (one table for every split). Predicting it needs the last two tokens and nothing else, which
one attention layer can fetch, so a 12-layer reference has depth to spare; and its best possible loss is known:
the chain's entropy rate (the mean entropy of the next symbol under the chain's stationary distribution of
pairs). A window also pays for its first two positions, which see less than two symbols; `oracle` is the true
chain's own loss on the same validation windows, the floor any model can reach there.

The reference (GPT-2 style as in search.py: no 1/(l + 1) scale, lr 3e-3, weight decay 0.5, wsd) is tracked while
it trains; models of 1, 2 and 4 layers of the same width are trained on the same tokens to say how much depth the
language needs, against the 12 the reference has.

    python experiments/lazy_emergence/converge.py                    # 600 steps: 26 min beside another run
    python experiments/lazy_emergence/converge.py --steps 2400       # 9.8M tokens (docs/reproduction.md part 3)
    python experiments/lazy_emergence/converge.py --smoke --out DIR  # tiny, for tests
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from inheritune.analysis.tracker import read_track
from inheritune.analysis.verdict import loss_slope
from inheritune.data.dataset import write_token_dataset
from inheritune.train import train
from inheritune.training.recipe import TrainConfig
from inheritune.utils.errors import UserError

BOS = 0
SYMBOLS = 32
SUCCESSORS = 4


def chain_table(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(next symbols, their probabilities), each indexed by the pair of previous symbols (1-based ids)."""
    rng = np.random.default_rng(seed)
    nexts = np.zeros((SYMBOLS + 1, SYMBOLS + 1, SUCCESSORS), dtype=np.int64)
    probs = np.zeros((SYMBOLS + 1, SYMBOLS + 1, SUCCESSORS))
    for a in range(1, SYMBOLS + 1):
        for b in range(1, SYMBOLS + 1):
            nexts[a, b] = rng.choice(np.arange(1, SYMBOLS + 1), size=SUCCESSORS, replace=False)
            probs[a, b] = rng.dirichlet(np.ones(SUCCESSORS))
    return nexts, probs


def sample(n_tokens: int, seed: int, table: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """One stream of ``n_tokens`` symbols of the chain (no BOS inside)."""
    nexts, probs = table
    rng = np.random.default_rng(seed)
    out = np.empty(n_tokens, dtype=np.int64)
    out[:2] = rng.integers(1, SYMBOLS + 1, size=2)
    uniform = rng.random(n_tokens)
    cumulative = np.cumsum(probs, axis=-1)
    for i in range(2, n_tokens):
        a, b = out[i - 2], out[i - 1]
        out[i] = nexts[a, b, min(int(np.searchsorted(cumulative[a, b], uniform[i])), SUCCESSORS - 1)]
    return out


def stationary_pairs(table: tuple[np.ndarray, np.ndarray], iterations: int = 1000) -> np.ndarray:
    """The chain's stationary distribution over pairs (a, b) of consecutive symbols, by power iteration."""
    nexts, probs = table
    pairs = np.full((SYMBOLS + 1, SYMBOLS + 1), 1.0 / SYMBOLS**2)
    pairs[0, :] = pairs[:, 0] = 0.0
    rows = np.broadcast_to(np.arange(SYMBOLS + 1)[None, :], pairs.shape)  # (a, b) -> (b, c)
    for _ in range(iterations):
        moved = np.zeros_like(pairs)
        for k in range(SUCCESSORS):
            np.add.at(moved, (rows, nexts[:, :, k]), pairs * probs[:, :, k])
        pairs = moved / moved.sum()
    return pairs


def entropy_rate(table: tuple[np.ndarray, np.ndarray], pairs: np.ndarray) -> float:
    """The chain's entropy rate in nats: the mean entropy of the next symbol under the stationary pairs."""
    probs = table[1]
    entropy = -(probs * np.log(np.where(probs > 0, probs, 1.0))).sum(-1)
    return float((pairs * entropy).sum())


def oracle_loss(val: np.ndarray, seq_len: int, windows: int, table: tuple[np.ndarray, np.ndarray],
                pairs: np.ndarray) -> float:
    """The best possible mean loss on the validation windows exactly as training scores them (fixed windows, BOS
    then the stream; the targets are the window's seq_len stream tokens): the first target is predicted from
    nothing (the stationary marginal), the second from one symbol (the chain averaged over the unseen one), the
    rest from the exact pair."""
    from inheritune.data.windows import fixed_windows, window_rows

    nexts, probs = table
    full = np.zeros((SYMBOLS + 1, SYMBOLS + 1, SYMBOLS + 1))  # p(c | a, b) as a dense table
    a_idx, b_idx = np.meshgrid(np.arange(SYMBOLS + 1), np.arange(SYMBOLS + 1), indexing="ij")
    for k in range(SUCCESSORS):
        full[a_idx, b_idx, nexts[:, :, k]] += probs[:, :, k]
    marginal = pairs.sum(0)  # p(b)
    given_one = np.einsum("ab,abc->bc", pairs, full) / np.maximum(marginal[:, None], 1e-300)  # p(c | b)
    starts = fixed_windows(val, seq_len, windows)
    targets = window_rows(val, starts, seq_len, BOS).numpy()[:, 1:]
    with np.errstate(divide="ignore"):
        first = -np.log(marginal[targets[:, 0]])
        second = -np.log(given_one[targets[:, 0], targets[:, 1]])
        rest = -np.log(full[targets[:, :-2], targets[:, 1:-1], targets[:, 2:]])
    return float((first.sum() + second.sum() + rest.sum()) / targets.size)


def config(data: Path, out: Path, layers: int, steps: int, smoke: bool, track: bool) -> TrainConfig:
    width = "hidden=16,heads=2" if smoke else "hidden=128,heads=4"
    return TrainConfig(model=f"scratch:gpt2:layers={layers},{width},scale_attn_by_inverse_layer_idx=false",
                       data=str(data), out=str(out), max_steps=steps, seq_len=32 if smoke else 128,
                       micro_batch_size=4 if smoke else 32, lr=3e-3, weight_decay=0.5, schedule="wsd",
                       decay_fraction=0.2, bos_windows=True, track_attention=max(1, steps // 12) if track else 0,
                       track_windows=4 if smoke else 8, eval_interval=max(1, steps // 16),
                       eval_windows=4 if smoke else 64, checkpoint_interval=max(1, steps // 8), seed=1337,
                       progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="work directory, resumable (default: "
                                                    "runs/lazy_emergence/converge-STEPS)")
    parser.add_argument("--docs", default=None, help="results.json and the emergence plot (default: "
                                                     "docs/lazy_emergence/converge-STEPS)")
    parser.add_argument("--steps", type=int, default=600, help="steps of 32 x 128 tokens for every model")
    parser.add_argument("--depths", type=int, nargs="+", default=[1, 2, 4], help="the shallower models")
    parser.add_argument("--layers", type=int, default=12, help="the reference's depth")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    out = Path(args.out or f"runs/lazy_emergence/converge-{args.steps}")
    docs = Path(args.docs or f"docs/lazy_emergence/converge-{args.steps}")
    out.mkdir(parents=True, exist_ok=True)
    table = chain_table(0)
    data = out / "data"
    n_train, n_val = (20_000, 4_000) if args.smoke else (8_000_000, 200_000)
    if not (data / "meta.json").is_file():
        write_token_dataset(data, sample(n_train, 1, table), sample(n_val, 2, table), vocab_size=SYMBOLS + 1,
                            eos=BOS, name=f"second-order Markov chain, {SYMBOLS} symbols x {SUCCESSORS} successors",
                            bos=BOS)
    reference_config = config(data, out / f"layers-{args.layers}", args.layers, args.steps, args.smoke, True)
    pairs = stationary_pairs(table)
    floor = {"entropy_rate": entropy_rate(table, pairs),
             "oracle_on_val_windows": oracle_loss(np.fromfile(data / "val.bin", dtype=np.uint16),
                                                  reference_config.seq_len, reference_config.eval_windows, table, pairs)}
    print(f"floor: entropy rate {floor['entropy_rate']:.4f} nats, the chain's own loss on the val windows "
          f"{floor['oracle_on_val_windows']:.4f}", flush=True)
    results = {"floor": floor, "models": {}}
    for layers in [args.layers] + [d for d in args.depths if d != args.layers]:
        run_config = config(data, out / f"layers-{layers}", layers, args.steps, args.smoke, layers == args.layers)
        folder = Path(run_config.out)
        if (folder / "summary.json").is_file() and json.loads((folder / "summary.json").read_text())["status"] == "finished":
            summary = json.loads((folder / "summary.json").read_text())
        else:
            # A checkpoint is resumed. Without one (killed while starting or before its first checkpoint) there is
            # nothing to continue, and what the run did write (run.json, the first metrics and attention records)
            # would make train refuse the folder: start that model over, which clears only a run's own files.
            run_config.resume = folder.is_dir() and any(folder.glob("ckpt-*.pt"))
            run_config.overwrite = not run_config.resume
            began = time.perf_counter()
            try:
                summary = train(run_config)
            except UserError as exc:
                sys.exit(f"converge.py: error: {exc}")
            if summary["status"] != "finished":
                sys.exit(f"{folder} interrupted; run the same command again to continue")
            print(f"{layers} layers: {time.perf_counter() - began:.0f} s", flush=True)
        slope = loss_slope(summary["history"], summary["max_steps"])
        row = {"layers": layers, "val_loss": summary["final_val_loss"], "tokens": summary["tokens"],
               "gap_to_oracle": summary["final_val_loss"] - floor["oracle_on_val_windows"], "loss_slope": slope,
               "flat": None if slope is None else slope["ci95"][1] >= -0.01, "seconds": summary["train_seconds"]}
        if layers == args.layers:
            records = read_track(folder / "attention.jsonl")
            last = records[-1]["layers"]
            row["states"] = [layer["state"] for layer in last]
            row["max_rank"] = [round(layer["max_rank"], 2) for layer in last]
            row["first_token_mass"] = [round(layer["first_token_mass"], 3) for layer in last]
            row["lazy_layers"] = [i for i, layer in enumerate(last) if layer["state"] == "lazy"]
            row["lazy_past_middle"] = sum(layer["state"] == "lazy" for layer in last[len(last) // 2:])
            row["track_seconds"] = summary.get("track_seconds")
        results["models"][str(layers)] = row
        print(f"{layers} layers: val loss {row['val_loss']:.4f} (oracle {floor['oracle_on_val_windows']:.4f}, gap "
              f"{row['gap_to_oracle']:+.4f}), flat: {row['flat']}", flush=True)
    reference = results["models"][str(args.layers)]
    within = [int(k) for k, r in results["models"].items() if r["val_loss"] <= reference["val_loss"] + 0.01]
    results["depth_needed"] = min(within)
    print(f"the reference ({args.layers} layers): lazy layers {reference['lazy_layers'] or 'none'}, "
          f"{reference['lazy_past_middle']} past the middle; the shallowest model within 0.01 nats of it: "
          f"{results['depth_needed']} layers", flush=True)
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "results.json").write_text(json.dumps(results, indent=2))
    emergence = out / f"layers-{args.layers}" / "emergence.png"
    if emergence.is_file():
        (docs / "emergence.png").write_bytes(emergence.read_bytes())


if __name__ == "__main__":
    main()
