"""The paper's claims tested from scratch in miniature: one command regenerates every number of
docs/reproduction.md (see that file for the design and the arithmetic of the budget).

    python experiments/reproduce_mini/reproduce.py                     # the full experiment (~90 min, 2 cores)
    python experiments/reproduce_mini/reproduce.py --budget 0.01 --smoke   # the same configs at a tiny budget

Stages (each one an `inheritune` command; every stage is resumable, so rerunning continues):
1. data: the default corpus, with an 8K byte-level BPE trained on its train split;
2. main: reference (12 x 128 GPT-2) trained from scratch, Inheritune rounds l = 6, 8, 10 until matched, and the
   six baselines at the final depth (`main.yaml`);
3. seeds: the reference, the first round (l = 6) and a 6-layer random-init model for the other seeds;
4. ablation: the reference without GPT-2's 1/(layer + 1) attention scale, its first round and random init;
5. SmolLM2-135M's lazy-layer profile on the same text (a real pretrained model), for the MaxRank figure;
6. collect: tables (markdown + JSON) and figures into --docs.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRATCH = "scratch:gpt2:layers=12,hidden=128,heads=4"


def inheritune(*args: str, log: Path) -> None:
    """One inheritune command, its output appended to the log; a failure stops the experiment."""
    command = [sys.executable, "-m", "inheritune", *args]
    print("$ inheritune " + " ".join(args), flush=True)
    with open(log, "a") as handle:
        handle.write("$ inheritune " + " ".join(args) + "\n")
        handle.flush()
        result = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        sys.exit(f"failed ({result.returncode}): inheritune {' '.join(args)}; see {log}")


def corpus_path(given: str | None) -> str:
    if given:
        return given
    from inheritune.assets.catalog import fetch

    return str(fetch(["corpus"], verbose=False)["corpus"])


def run_args(config: Path, data: Path, out: Path, budget: float, *extra: str) -> list[str]:
    return ["run", "--config", str(config), "--data", str(data), "--out", str(out), "--budget", str(budget), *extra]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/reproduce_mini", help="work directory (resumable)")
    parser.add_argument("--docs", default="docs/reproduction", help="where tables and figures are written")
    parser.add_argument("--config", default=str(HERE / "main.yaml"), help="the run config of every stage")
    parser.add_argument("--corpus", default=None, help="text to use (default: the shipped English corpus)")
    parser.add_argument("--vocab", type=int, default=8192, help="size of the BPE trained on the train split")
    parser.add_argument("--budget", type=float, default=1.0, help="scales every training budget")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337, 2, 3], help="first = the main run's seed")
    parser.add_argument("--no-ablation", action="store_true", help="skip the attention-scale ablation")
    parser.add_argument("--no-seeds", action="store_true", help="skip the extra seeds")
    parser.add_argument("--smoke", action="store_true", help="tiny analysis, no SmolLM2 stage (for tests)")
    args = parser.parse_args()

    out, docs = Path(args.out), Path(args.docs)
    out.mkdir(parents=True, exist_ok=True)
    docs.mkdir(parents=True, exist_ok=True)
    log = out / "commands.log"
    timings: dict[str, float] = {}
    # Smoke: the same configs and stages with a tiny budget in tokens (short windows, small batches, few of them).
    small = ["--analyze-n", "4", "--analyze-t", "16", "--eval-windows", "4", "--seq-len", "64",
             "--micro-batch-size", "2", "--bootstrap", "200"] if args.smoke else []

    def stage(name: str, *commands: list[str]) -> None:
        started = time.perf_counter()
        for command in commands:
            inheritune(*command, log=log)
        timings[name] = round(time.perf_counter() - started, 1)

    corpus = corpus_path(args.corpus)
    data = out / "data"
    stage("data", ["data", "prepare", "--input", corpus, "--train-tokenizer", str(args.vocab), "--out", str(data)])
    main_seed = args.seeds[0]
    stage("main", run_args(Path(args.config), data, out / "main", args.budget, "--seed", str(main_seed), *small))

    main_report = json.loads((out / "main" / "report.json").read_text())
    half = next(r["layers"] for r in main_report["rows"] if r["init"] == "inherit")
    seed_runs = {}
    if not args.no_seeds:
        for seed in args.seeds:
            target = out / f"seed-{seed}"
            if seed == main_seed:
                # The main run's reference and first round already exist for this seed; only a random-init model
                # of the first round's depth may be missing (the main run's baselines sit at its final depth).
                final_layers = max(r["layers"] for r in main_report["rows"] if r["init"] == "inherit")
                if final_layers == half:
                    seed_runs[seed] = out / "main"
                    continue
                extra = ["--reference", str(out / "main" / "reference" / "final"), "--reference-from-scratch", ""]
            else:
                extra = []
            stage(f"seed-{seed}", run_args(Path(args.config), data, target, args.budget, "--seed", str(seed),
                                           "--max-rounds", "1", "--baselines", "random", "--compare-analysis",
                                           "false", *extra, *small))
            seed_runs[seed] = target
    if not args.no_ablation:
        stage("ablation", run_args(Path(args.config), data, out / "ablation-noscale", args.budget,
                                   "--reference-from-scratch", SCRATCH + ",scale_attn_by_inverse_layer_idx=false",
                                   "--max-rounds", "1", "--baselines", "random", "--seed", str(main_seed), *small))
    if not args.smoke:
        smol_data = out / "data-smollm2"
        stage("smollm2", ["data", "prepare", "--input", corpus, "--tokenizer", "smollm2", "--out", str(smol_data)],
              ["analyze", "smollm2", "--data", str(smol_data), "--out", str(out / "smollm2-analysis"), "--n", "100",
               "--t", "100", "--overwrite", "true"])
    collect(out, docs, seed_runs, main_seed, timings)


# ------------------------------------------------------------------------------------------------ collect
def _rows(run: Path) -> dict[str, dict]:
    return {row["model"]: row for row in json.loads((run / "report.json").read_text())["rows"]}


def _cell(row: dict) -> str:
    low, high = row["val_loss_ci95"]
    delta = row.get("delta_ci95")
    return (f"| {row['model']} | {row['layers']} | {row['parameters'] / 1e6:.2f}M | {row['tokens'] or 0:,} | "
            f"{row['val_loss']:.4f} [{low:.3f}, {high:.3f}] | {row['perplexity']:.1f} | "
            f"{row['delta_vs_reference']:+.4f}" + (f" [{delta[0]:+.3f}, {delta[1]:+.3f}]" if delta else "") + " | "
            f"{_e(row['training_flops'])} | {_e(row['cumulative_flops'])} |")


def _e(value) -> str:
    return "-" if value is None else f"{value:.2e}"


def _maxrank(report: Path) -> list[float]:
    models = json.loads(report.read_text())["models"]
    return [layer["max_rank"] for layer in models[0]["layers"]]


def _stats(values: list[float]) -> dict:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return {"values": values, "mean": mean, "std": std, "min": min(values), "max": max(values)}


def collect(out: Path, docs: Path, seed_runs: dict, main_seed: int, timings: dict) -> None:
    main_rows = _rows(out / "main")
    head = ("| model | layers | params | train tokens | val loss [95% CI] | ppl | Δ vs reference [paired 95% CI] | "
            "train FLOPs | total FLOPs spent |\n|---|---|---|---|---|---|---|---|---|")
    tables = ["## Main run (seed %d)\n" % main_seed, head, *(_cell(r) for r in main_rows.values())]
    results = {"main": main_rows, "timings_seconds": timings}

    if seed_runs:
        per_seed = {}
        for seed, run in seed_runs.items():
            rows = _rows(run)
            ref = next(r for r in rows.values() if r["model"].startswith("reference"))
            first = next(r for r in rows.values() if r["init"] == "inherit")
            randoms = [r for r in rows.values() if r["model"] == "baseline random" and r["layers"] == first["layers"]]
            per_seed[seed] = {"reference": ref["val_loss"], "inheritune_l6": first["val_loss"],
                              "random_l6": randoms[0]["val_loss"] if randoms else None}
        spread = {key: _stats([s[key] for s in per_seed.values() if s[key] is not None])
                  for key in ("reference", "inheritune_l6", "random_l6")}
        gaps = {"inheritune_l6 - reference": _stats([s["inheritune_l6"] - s["reference"] for s in per_seed.values()]),
                "random_l6 - inheritune_l6": _stats([s["random_l6"] - s["inheritune_l6"] for s in per_seed.values()
                                                     if s["random_l6"] is not None])}
        results["seeds"] = {"per_seed": per_seed, "spread": spread, "gaps": gaps}
        tables += ["", "## Seeds (val loss; each seed: its own reference, data order and fresh weights)", "",
                   "| seed | reference (12L) | Inheritune l = 6 | random init 6L |", "|---|---|---|---|"]
        tables += [f"| {seed} | {s['reference']:.4f} | {s['inheritune_l6']:.4f} | "
                   f"{'-' if s['random_l6'] is None else format(s['random_l6'], '.4f')} |" for seed, s in per_seed.items()]
        tables += [f"| mean ± std | {spread['reference']['mean']:.4f} ± {spread['reference']['std']:.4f} | "
                   f"{spread['inheritune_l6']['mean']:.4f} ± {spread['inheritune_l6']['std']:.4f} | "
                   f"{spread['random_l6']['mean']:.4f} ± {spread['random_l6']['std']:.4f} |", ""]
        for name, gap in gaps.items():
            tables.append(f"- {name}: mean {gap['mean']:+.4f}, std {gap['std']:.4f}, per seed "
                          + ", ".join(f"{v:+.4f}" for v in gap["values"]))

    ablation = out / "ablation-noscale"
    if (ablation / "report.json").is_file():
        rows = _rows(ablation)
        results["ablation_noscale"] = rows
        tables += ["", "## Ablation: reference without the 1/(layer + 1) attention scale", "", head,
                   *(_cell(r) for r in rows.values())]
    (docs / "tables.md").write_text("\n".join(tables) + "\n")

    profiles = {}
    for name, report in (("mini reference (12L, scaled attention)", out / "main" / "compare" / "report.json"),
                         ("mini reference (12L, no scale)", ablation / "compare" / "report.json"),
                         ("SmolLM2-135M (30L, pretrained)", out / "smollm2-analysis" / "report.json")):
        if report.is_file():
            profiles[name] = _maxrank(report)
    results["maxrank"] = profiles
    (docs / "results.json").write_text(json.dumps(results, indent=2))
    _figures(out, docs, profiles)
    print((docs / "tables.md").read_text())
    print(f"timings (s): {timings}")


def _figures(out: Path, docs: Path, profiles: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if profiles:
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, ranks in profiles.items():
            depth = [(i + 0.5) / len(ranks) for i in range(len(ranks))]
            ax.plot(depth, ranks, marker="o", markersize=3, label=name)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("relative depth (layer / L)")
        ax.set_ylabel("MaxRank (tau = 0.9, N = 100, T = 100)")
        ax.set_yscale("log")
        ax.set_title("Attention rank by depth: the miniature reference vs SmolLM2")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(docs / "maxrank.png", dpi=120)
        plt.close(fig)
    if (out / "main" / "val_loss.png").is_file():
        shutil.copy(out / "main" / "val_loss.png", docs / "val_loss.png")


if __name__ == "__main__":
    main()
