"""A bounded search for a from-scratch regime where the late layers of a CPU-sized reference turn lazy.

Each cell of a small grid (see CELLS, chosen from the facts in PAPER.md section 6, not a full factorial) trains a
reference of at least 12 layers on the shipped corpus with ``train --track-attention``, so that every cell has
its emergence plot (MaxRank and first-token mass per layer against tokens seen) and a final per-layer table.

    python experiments/lazy_emergence/search.py                      # the grid (about 2 h on 2 cores: measured
                                                                     # 9-11 min per cell at --budget 0.65)
    python experiments/lazy_emergence/search.py --cells bos-noscale-hot-decay --budget 0.5
    python experiments/lazy_emergence/search.py --smoke --corpus DIR  # the same driver at a tiny budget

Part 3 (docs/reproduction.md): the long runs, in their own work and docs folders, without the early stop, and
one cell on more unique text (--extra: trained on the corpus's train split plus another text, validated on the
same windows of the corpus's own val split, tokenised by the same 2K BPE):

    python experiments/lazy_emergence/search.py --out runs/lazy_emergence/part3 --docs docs/lazy_emergence/part3 \
        --budget 3.5 --early-stop false --cells bos-noscale-hot-decay bos-noscale-hot deep20-hot-decay bpe8k-hot-decay
    python experiments/lazy_emergence/search.py --out runs/lazy_emergence/part3 --docs docs/lazy_emergence/part3 \
        --budget 3.5 --early-stop false --cells bos-noscale-hot-decay --extra python-docs

Rule to stop a cell early (nothing moving): after at least 40% of its budget, when over the last three
measurements no layer's MaxRank moved by more than 5% of its value and no layer's first-token mass by more
than 0.02, and no layer is lazy, the cell is stopped (its checkpoint is kept) and marked "stopped: flat".
A cell **collapsed** when at least a quarter of the layers past the middle are lazy at its last measurement.
Resumable: a finished or stopped cell is not run again; an interrupted one continues from its checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

from inheritune.analysis.tracker import read_track
from inheritune.analysis.verdict import loss_slope
from inheritune.data.dataset import PrepareConfig, prepare
from inheritune.train import train
from inheritune.training.recipe import TrainConfig

# Every cell: GPT-2 style (pre-LN, GELU, tied), T = 256, 16 x 256 tokens a step, AdamW (0.9, 0.95), clip 1.0,
# warmup 2%, wsd schedule (constant, then linear decay over the last 20%), a 2,048-token BPE trained on the
# corpus's train split (the head stays cheap, and BPE, unlike bytes, leaves heads little local work). 12 x 128
# (4 heads of 32) is the widest shape that the 2 cores train at about 4-5K tokens/s; narrower ones are slower
# per token on a CPU, not faster (16 x 64 ran at 1.3K tokens/s beside a test suite).
BASE = dict(layers=12, hidden=128, heads=4, scale=False, bos=True, lr=3e-3, weight_decay=0.1, vocab=2048)
CELLS = {
    # the miniature's setting (nanoGPT defaults): no BOS at position 0, the 1/(l + 1) scale, lr 1e-3
    "plain-scaled": dict(bos=False, scale=True, lr=1e-3),
    # a BOS at position 0 of every window (Gu et al.: the fixed token takes the sinks)
    "bos-scaled": dict(scale=True, lr=1e-3),
    # ... without GPT-2's 1/(l + 1) logit scale (a late-layer sink needs a gap 1/(l + 1) smaller)
    "bos-noscale": dict(lr=1e-3),
    # ... with a high learning rate (Gu et al.: sink share grows with lr)
    "bos-noscale-hot": dict(),
    # ... and weight decay 0.5 (Gu et al.: the most sinks at 0.5)
    "bos-noscale-hot-decay": dict(weight_decay=0.5),
    # ... 20 narrower layers: depth beyond what the data needs, at about the same FLOPs per token
    "deep20-hot-decay": dict(layers=20, hidden=96, heads=3, weight_decay=0.5),
    # ... with the 8K BPE of the miniature (more work for the head, less for attention)
    "bpe8k-hot-decay": dict(weight_decay=0.5, vocab=8192),
}
STEPS = 700           # 700 x 4,096 = 2.9M tokens per cell, before --budget
SMOKE = dict(layers=12, hidden=16, heads=2, vocab=300)


def cell_config(name: str, cell: dict, data: Path, out: Path, steps: int, smoke: bool) -> TrainConfig:
    shape = f"layers={cell['layers']},hidden={cell['hidden']},heads={cell['heads']}," \
            f"scale_attn_by_inverse_layer_idx={str(cell['scale']).lower()}"
    return TrainConfig(model=f"scratch:gpt2:{shape}", data=str(data), out=str(out), max_steps=steps,
                       seq_len=64 if smoke else 256, micro_batch_size=2 if smoke else 16, lr=cell["lr"],
                       weight_decay=cell["weight_decay"], schedule="wsd", decay_fraction=0.2,
                       bos_windows=cell["bos"], track_attention=max(1, steps // 12), track_windows=4 if smoke else 8,
                       eval_interval=max(1, steps // 16), eval_windows=4 if smoke else 32,
                       checkpoint_interval=max(1, steps // 8), seed=1337, progress=False)


def flat(records: list[dict], done_share: float) -> bool:
    """The early-stop rule of the module docstring."""
    if done_share < 0.4 or len(records) < 3:
        return False
    last = records[-3:]
    for layer in range(len(last[-1]["layers"])):
        ranks = [r["layers"][layer]["max_rank"] for r in last]
        masses = [r["layers"][layer]["first_token_mass"] for r in last]
        if max(ranks) - min(ranks) > 0.05 * max(ranks) or max(masses) - min(masses) > 0.02:
            return False
        if last[-1]["layers"][layer]["state"] == "lazy":
            return False
    return True


def watch(track: Path, steps: int, stop: threading.Event, flagged: list) -> None:
    """Stops the training (SIGINT: it checkpoints and returns) once the early-stop rule holds."""
    seen = 0
    while not stop.wait(0.5):
        records = read_track(track) if track.is_file() else []
        if len(records) == seen:
            continue
        seen = len(records)
        if records[-1]["step"] >= steps:  # the last measurement: the cell has run its whole budget
            return
        if flat(records, records[-1]["step"] / steps):
            flagged.append(records[-1]["step"])
            os.kill(os.getpid(), signal.SIGINT)
            return


def summarize_cell(name: str, cell: dict, out: Path, summary: dict, status: str) -> dict:
    records = read_track(out / "attention.jsonl")
    last = records[-1]["layers"]
    n = len(last)
    late = last[n // 2:]
    lazy_late = sum(layer["state"] == "lazy" for layer in late)
    uniform = sum(layer["state"] == "uniform" for layer in last)
    history = summary["history"]
    slope = loss_slope(history, summary["max_steps"])
    converged = None if slope is None else slope["ci95"][1] >= -0.01
    first_lazy = next((r["tokens"] for r in records if any(l["state"] == "lazy" for l in r["layers"][n // 2:])),
                      None)
    return {"cell": name, "settings": cell, "status": status, "steps": summary["steps"], "tokens": summary["tokens"],
            "val_loss": summary["final_val_loss"], "layers": n, "lazy_layers": [l for l, x in enumerate(last)
                                                                               if x["state"] == "lazy"],
            "uniform_layers": uniform, "lazy_late": lazy_late, "collapsed": lazy_late >= max(1, len(late) / 4),
            "first_lazy_late_tokens": first_lazy,
            "max_first_token_mass": max(layer["max_first_token_mass"] for layer in last),
            "max_rank": [round(layer["max_rank"], 2) for layer in last],
            "first_token_mass": [round(layer["first_token_mass"], 3) for layer in last],
            "attention_formed": 2 * uniform < n, "loss_slope": slope, "loss_flat": converged,
            "reference_check": bool(2 * uniform < n and converged), "seconds": summary["train_seconds"],
            "track_seconds": summary.get("track_seconds")}


def run_cell(name: str, cell: dict, data: Path, root: Path, steps: int, smoke: bool, early_stop: bool = True) -> dict:
    out = root / name
    result_file = out / "cell.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    config = cell_config(name, cell, data, out, steps, smoke)
    if out.is_dir() and any(out.glob("ckpt-*.pt")):
        config.resume = True
    print(f"cell {name}: {config.model}, lr {config.lr}, wd {config.weight_decay}, bos {config.bos_windows}, "
          f"{steps} steps", flush=True)
    stop, flagged = threading.Event(), []
    watcher = threading.Thread(target=watch, args=(out / "attention.jsonl", steps, stop, flagged), daemon=True)
    if early_stop:
        watcher.start()
    try:
        summary = train(config)
    finally:
        stop.set()
        if early_stop:
            watcher.join()
    if summary["status"] != "finished" and not flagged:
        sys.exit(f"cell {name} interrupted; run the same command again to continue")
    result = summarize_cell(name, cell, out, summary, "finished" if not flagged else f"stopped: flat at step {flagged[0]}")
    result_file.write_text(json.dumps(result, indent=2))
    return result


def extra_text(name: str | None) -> tuple[Path | None, str]:
    """--extra: an asset's file (fetched when first named) or a path; and the suffix of the cells trained on it."""
    if not name:
        return None, ""
    path = Path(name)
    if not path.exists():
        from inheritune.assets.catalog import fetch

        path = fetch([name], verbose=False)[name]
    return path, "+" + (name if not Path(name).exists() else path.stem)


def with_extra(base: Path, corpus: str, extra: Path, out: Path, val_fraction: float) -> Path:
    """The corpus plus ``extra`` in the train split, tokenised by ``base``'s BPE, with ``base``'s val split (checked
    byte for byte: the two datasets' losses are on the same windows)."""
    data = prepare(PrepareConfig(input=[corpus], train_extra=[str(extra)], out=str(out), tokenizer=str(base / "tokenizer"),
                                 val_fraction=val_fraction), progress=False)
    if (data / "val.bin").read_bytes() != (base / "val.bin").read_bytes():
        sys.exit(f"{data}'s val split differs from {base}'s: the comparison would not be on the same windows")
    meta, base_meta = (json.loads((d / "meta.json").read_text()) for d in (data, base))
    print(f"{data.name}: {meta['train_tokens']:,} train tokens ({base_meta['train_tokens']:,} of the corpus + "
          f"{meta['train_extra_tokens']:,} of {extra.name}), the same {meta['val_tokens']:,} val tokens", flush=True)
    return data


def table(results: list[dict]) -> str:
    lines = ["| cell | layers | bos | 1/(l+1) | lr | wd | vocab | tokens | epochs | val loss | lazy layers | "
             "lazy past middle | max first-token mass | uniform layers | reference check | status |",
             "|" + "---|" * 16]
    for r in results:
        s = r["settings"]
        lazy = ",".join(map(str, r["lazy_layers"])) or "none"
        epochs = f"{r['tokens'] / r['unique_train_tokens']:.2f}" if r.get("unique_train_tokens") else "?"
        check = "passed" if r["reference_check"] else ("attention not formed" if not r["attention_formed"] else
                                                       "loss still falling" if r["loss_flat"] is False else
                                                       "could not check")
        lines.append(f"| {r['cell']} | {r['layers']} | {'on' if s['bos'] else 'off'} | {'on' if s['scale'] else 'off'} "
                     f"| {s['lr']:g} | {s['weight_decay']:g} | {s['vocab']} | {r['tokens']:,} | {epochs} | {r['val_loss']:.4f} | "
                     f"{lazy} | {r['lazy_late']} {'(collapsed)' if r['collapsed'] else ''} | "
                     f"{r['max_first_token_mass']:.3f} | {r['uniform_layers']} | {check} | {r['status']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/lazy_emergence", help="work directory (resumable)")
    parser.add_argument("--docs", default="docs/lazy_emergence", help="table, results.json and emergence plots")
    parser.add_argument("--cells", nargs="+", default=list(CELLS), help=f"cells to run: {', '.join(CELLS)}")
    parser.add_argument("--budget", type=float, default=1.0, help=f"scales the {STEPS} steps of every cell")
    parser.add_argument("--corpus", default=None, help="text (default: the shipped English corpus)")
    parser.add_argument("--extra", default=None, help="also train on this text (an asset name such as python-docs, "
                                                      "or a path), train split only: the cells run as CELL+NAME "
                                                      "on the same val windows and tokenizer")
    parser.add_argument("--early-stop", default="true", choices=["true", "false"],
                        help="stop a cell whose attention stopped moving (module docstring)")
    parser.add_argument("--smoke", action="store_true", help="tiny models and budget (for tests)")
    args = parser.parse_args()
    unknown = [c for c in args.cells if c not in CELLS]
    if unknown:
        sys.exit(f"unknown cell {unknown[0]}; cells: {', '.join(CELLS)}")
    root, docs = Path(args.out), Path(args.docs)
    root.mkdir(parents=True, exist_ok=True)
    docs.mkdir(parents=True, exist_ok=True)
    corpus = args.corpus
    if corpus is None:
        from inheritune.assets.catalog import fetch

        corpus = str(fetch(["corpus"], verbose=False)["corpus"])
    steps = max(2, round(STEPS * args.budget))
    extra, suffix = extra_text(args.extra)
    results, datasets = [], {}
    for base_name in args.cells:
        name = base_name + suffix
        cell = BASE | CELLS[base_name] | (SMOKE if args.smoke else {}) | ({"extra": args.extra} if extra else {})
        vocab = cell["vocab"]
        if vocab not in datasets:
            datasets[vocab] = prepare(PrepareConfig(input=[corpus], out=str(root / f"data-bpe{vocab}"),
                                                    train_tokenizer=vocab, val_fraction=0.05 if not args.smoke else 0.2),
                                      progress=False)
        data = datasets[vocab] if not extra else with_extra(datasets[vocab], corpus, extra, root / f"data-bpe{vocab}{suffix}",
                                                            0.05 if not args.smoke else 0.2)
        began = time.perf_counter()
        result = run_cell(name, cell, data, root, steps, args.smoke, args.early_stop == "true")
        result["unique_train_tokens"] = json.loads((data / "meta.json").read_text())["train_tokens"]
        print(f"cell {name}: {json.dumps({k: result[k] for k in ('tokens', 'val_loss', 'lazy_layers', 'collapsed', 'max_first_token_mass', 'status')})} "
              f"({time.perf_counter() - began:.0f} s)", flush=True)
        results.append(result)
        shutil.copy2(root / name / "emergence.png", docs / f"emergence-{name}.png")
    # the docs hold every cell measured so far: a run of some cells replaces only theirs
    known = docs / "results.json"
    if known.exists() and not args.smoke:
        earlier = {r["cell"]: r for r in json.loads(known.read_text()) if r.get("cell", "").split("+")[0] in CELLS}
        earlier.update({r["cell"]: r for r in results})
        order = {c: i for i, c in enumerate(CELLS)}
        results = sorted(earlier.values(), key=lambda r: (order[r["cell"].split("+")[0]], r["cell"]))
    (docs / "results.json").write_text(json.dumps(results, indent=2))
    (docs / "table.md").write_text(table(results) + "\n")
    print(table(results), flush=True)


if __name__ == "__main__":
    main()
