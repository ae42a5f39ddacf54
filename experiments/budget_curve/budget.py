"""The budget question (issue 27, docs/pretrained.md "Budget"): does the paper's first-K child catch up with
the best selection when the retraining budget grows, and does distilling from the reference (KD) beat plain
cross-entropy at equal tokens?

One ``inheritune run --select ... --heal ce kd --baselines ...`` per budget (and per seed at the smallest
budget), each in its own folder under --out. The full grid (--methods x --heal, random init healed both ways)
runs at the smallest budget's first seed; every other run trains --thin-methods x --heal (first and bi: what
the hours allow), with a random-init baseline up to --thin-above. Every run is resumable (run this script again
after a stop: a finished run is read back, an interrupted one continues from its checkpoint), and the table and
plot are rewritten from whatever has finished, with the runs still missing named. After the grid, --lr-check
retrains first-K by CE at the largest budget with each other lr (the sweep chose 1e-3 at the smallest), paired
with the grid's first-K by CE on the same windows.

    python experiments/budget_curve/budget.py                       # the full grid (hours: see the docs)
    python experiments/budget_curve/budget.py --budgets 20480       # one budget
    python experiments/budget_curve/budget.py --smoke --reference DIR --data DIR   # tiny, for tests

Every child at a budget shares the seed, data order, recipe and the 48 validation windows; paired intervals
come from the window sums each run recorded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from inheritune.analysis.scoring import paired_delta
from inheritune.run import RunConfig, run
from inheritune.utils.config import from_dict
from inheritune.utils.errors import Interrupted, UserError

# The recipe of docs/pretrained.md's which-blocks group (lr and batch from its sweep at 20K tokens).
FULL = dict(seq_len=128, micro_batch_size=4, lr=1e-3, eval_windows=48, analyze_n=50, analyze_t=128)
SMOKE = dict(seq_len=16, micro_batch_size=4, lr=1e-3, eval_windows=4, analyze_n=4, analyze_t=32)


def settings(args, tokens: int, seed: int, methods: list[str]) -> dict:
    plan = SMOKE if args.smoke else FULL
    steps = max(1, tokens // (plan["micro_batch_size"] * plan["seq_len"]))
    return dict(reference=args.reference, data=args.data, out=str(Path(args.out) / f"t{tokens}-seed{seed}"),
                start=str(args.k), select=methods, heal=args.heal, baselines=args.baselines, steps=steps,
                eval_interval=0, compare_analysis=False, progress=not args.smoke, seed=seed,
                **{k: v for k, v in plan.items()})


# Each baseline of `run` as (selection, healing) in the table: random init healed by CE and by KD are one
# selection healed two ways (a "Δ kd - ce" pair); every other baseline keeps its own name, so none overwrites another.
BASELINE_NAMES = {"random": ("random init", "ce"), "kd": ("random init", "kd"),
                  "random-2x": ("random init 2x budget", "ce")}


def children(folder: Path) -> dict[str, dict]:
    """Every model of a finished run: its after-training eval (with window sums), tokens, FLOPs and seconds."""
    state = json.loads((folder / "state.json").read_text())
    found = {}
    for key, value in state.items():
        parts = key.split("/")
        if key.startswith("child/") and parts[-1] == "eval":
            method, heal = parts[1].rsplit("-", 1)
            trained = state[f"child/{parts[1]}/train"]
        elif key.startswith("baseline/") and parts[-1] == "eval":
            method, heal = BASELINE_NAMES.get(parts[1], (parts[1], "ce"))
            trained = state[f"baseline/{parts[1]}/train"]
        else:
            continue
        found[f"{method} {heal}"] = {"method": method, "heal": heal, "eval": value, "tokens": trained["tokens"],
                                     "flops": trained["training_flops"], "seconds": trained.get("train_seconds")}
    return found


def lr_check_folder(out: Path, tokens: int, seed: int, lr: float) -> Path:
    return out / f"t{tokens}-seed{seed}-lr{lr:g}"


def lr_checks(out: Path, tokens: int, seed: int, missing: list[str]) -> list[tuple]:
    """Rows for first-K by CE retrained at another lr at the largest budget, each paired with the main run's
    first-K by CE (lr 1e-3) on the same windows (checked: the same window starts)."""
    main = out / f"t{tokens}-seed{seed}"
    rows = []
    for folder in sorted(out.glob(f"t{tokens}-seed{seed}-lr*")):
        lr = folder.name.rsplit("-lr", 1)[1]
        if not (folder / "report.json").is_file() or not (main / "report.json").is_file():
            missing.append(f"the lr re-check at {lr} ({tokens:,} tokens)")
            continue
        state = json.loads((folder / "state.json").read_text())  # one child, grown no further: round 0
        key = next(k for k in state if k.startswith("round-0-") and k.endswith("/eval"))
        trained = state[key.replace("/eval", "/train")]
        check = {"eval": state[key], "tokens": trained["tokens"], "flops": trained["training_flops"],
                 "seconds": trained.get("train_seconds")}
        base = children(main)["first ce"]
        if check["eval"]["window_starts"] != base["eval"]["window_starts"]:
            raise SystemExit(f"{folder} was scored on other windows than {main}: not comparable")
        rows.append((tokens, seed, f"first ce, lr {lr}", check, paired_delta(check["eval"], base["eval"], 2000),
                     None, None))
    return rows


def collect(out: Path, docs: Path, budgets: list[int], seeds: list[int]) -> str:
    """The table (one row per model and budget, paired intervals against first-K with the same healing and
    against the budget's best) and the plot of val loss against tokens."""
    rows, curves, missing = [], {}, []
    for tokens in budgets:
        for seed in (seeds if tokens == budgets[0] else seeds[:1]):
            folder = out / f"t{tokens}-seed{seed}"
            if not (folder / "report.json").is_file():
                missing.append(f"{tokens:,} tokens (seed {seed})")
                continue
            models = children(folder)
            best = min(models, key=lambda n: models[n]["eval"]["loss"])
            for name, m in sorted(models.items(), key=lambda x: x[1]["eval"]["loss"]):
                first = models.get(f"first {m['heal']}")
                vs_first = paired_delta(m["eval"], first["eval"], 2000) if first and first is not m else None
                vs_best = paired_delta(m["eval"], models[best]["eval"], 2000) if name != best else None
                ce = models.get(f"{m['method']} ce")
                kd_gain = paired_delta(m["eval"], ce["eval"], 2000) if m["heal"] == "kd" and ce else None
                rows.append((tokens, seed, name, m, vs_first, vs_best, kd_gain))
                if seed == seeds[0]:
                    curves.setdefault(name, []).append((m["tokens"], m["eval"]["loss"]))

    rows += lr_checks(out, budgets[-1], seeds[0], missing)

    def ci(d):
        return "-" if d is None else f"{d['delta']:+.4f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"

    lines = ["| tokens | seed | model (selection, healing) | val loss [95% CI] | Δ vs first-K, same healing "
             "[paired 95% CI] | Δ vs the budget's best [paired 95% CI] | Δ kd - ce, same selection [paired 95% CI] "
             "| train FLOPs | train s |", "|---|---|---|---|---|---|---|---|---|"]
    for tokens, seed, name, m, vs_first, vs_best, kd_gain in rows:
        low, high = m["eval"]["loss_ci95"]
        lines.append(f"| {tokens:,} | {seed} | {name} | {m['eval']['loss']:.4f} [{low:.3f}, {high:.3f}] | "
                     f"{ci(vs_first)} | {ci(vs_best)} | {ci(kd_gain)} | {m['flops']:.3g} | "
                     f"{'-' if m['seconds'] is None else format(m['seconds'], '.0f')} |")
    if missing:
        lines += ["", "Not run yet (rerun the command to continue): " + "; ".join(missing) + "."]
    docs.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines)
    (docs / "budget.md").write_text(text + "\n")
    (docs / "budget.json").write_text(json.dumps([{"tokens": t, "seed": s, "model": n, "loss": m["eval"]["loss"],
                                                   "loss_ci95": m["eval"]["loss_ci95"], "flops": m["flops"],
                                                   "seconds": m["seconds"],
                                                   "vs_first": vf and {k: vf[k] for k in ("delta", "ci95")},
                                                   "vs_best": vb and {k: vb[k] for k in ("delta", "ci95")},
                                                   "kd_minus_ce": kg and {k: kg[k] for k in ("delta", "ci95")}}
                                                  for t, s, n, m, vf, vb, kg in rows], indent=1))
    if curves:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        methods = sorted({name.rsplit(" ", 1)[0] for name in curves})
        for name, points in sorted(curves.items()):  # one colour per selection, the line style its healing
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o" if name.endswith(" ce") else "s",
                    color=f"C{methods.index(name.rsplit(' ', 1)[0])}",
                    linestyle="--" if name.endswith(" kd") else "-", label=name)
        ax.set_xscale("log")
        ax.set_xlabel("retraining tokens (log)")
        ax.set_ylabel("validation loss (nats/token)")
        ax.set_title("Children by selection and healing (circles, solid: ce; squares, dashed: kd)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(docs / "budget.png", dpi=120)
        plt.close(fig)
    return text


def train_run(config: dict) -> None:
    try:
        run(from_dict(RunConfig, config))
    except Interrupted as exc:  # its checkpoint is written: this script again continues it
        print(f"budget.py: {exc} (here: run this script again)", file=sys.stderr)
        sys.exit(128 + exc.signal)
    except UserError as exc:
        print(f"budget.py: error: {exc}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", default="smollm2")
    parser.add_argument("--data", default="data/english", help="prepared dataset (make data)")
    parser.add_argument("--out", default="runs/budget_curve", help="one run folder per budget and seed (resumable)")
    parser.add_argument("--docs", default="docs/pretrained/budget", help="budget.md, budget.json, budget.png")
    parser.add_argument("--k", type=int, default=15, help="blocks every child keeps")
    parser.add_argument("--budgets", type=int, nargs="+", default=[20_480, 81_920, 327_680],
                        help="retraining tokens per child, growing by 4x")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337, 1338, 1339],
                        help="seeds at the smallest budget (larger budgets: the first seed)")
    parser.add_argument("--methods", nargs="+", default=["first", "bi", "drop-lazy"])
    parser.add_argument("--thin-methods", nargs="+", default=["first", "bi"],
                        help="every run but the smallest budget's first seed (the full grid) trains only these")
    parser.add_argument("--thin-above", type=int, default=81_920,
                        help="thinned runs at budgets up to this also train --thin-baselines; above it, none")
    parser.add_argument("--thin-baselines", nargs="+", default=["random"])
    parser.add_argument("--heal", nargs="+", default=["ce", "kd"])
    parser.add_argument("--baselines", nargs="+", default=["random", "kd"],
                        help="random init healed by ce (random) and by kd (kd)")
    parser.add_argument("--lr-check", nargs="*", type=float, default=[3e-4],
                        help="after the grid: first-K by CE at the largest budget with each of these lrs (the sweep "
                             "chose 1e-3 at 20,480 tokens), paired with the grid's first-K by CE; none: skip")
    parser.add_argument("--collect-only", action="store_true", help="rewrite the table and plot; train nothing")
    parser.add_argument("--smoke", action="store_true", help="tiny settings, for tests")
    args = parser.parse_args()
    budgets = sorted(args.budgets)
    if not args.collect_only:
        for tokens in budgets:
            for seed in (args.seeds if tokens == budgets[0] else args.seeds[:1]):
                full = tokens == budgets[0] and seed == args.seeds[0]
                config = settings(args, tokens, seed, args.methods if full else args.thin_methods)
                if not full:
                    config["baselines"] = args.thin_baselines if tokens <= args.thin_above else []
                print(f"== {tokens:,} tokens, seed {seed}: {', '.join(config['select'])} x {', '.join(args.heal)}"
                      f" + baselines {', '.join(config['baselines']) or 'none'} -> {config['out']}", flush=True)
                train_run(config)
        for lr in args.lr_check:  # first-K by CE at the largest budget with another lr, nothing else
            config = settings(args, budgets[-1], args.seeds[0], ["first"]) | dict(
                heal=["ce"], baselines=[], max_rounds=1, lr=lr, out=str(lr_check_folder(Path(args.out), budgets[-1], args.seeds[0], lr)))
            print(f"== lr re-check: first-K by CE at {budgets[-1]:,} tokens, lr {lr:g} -> {config['out']}", flush=True)
            train_run(config)
    print(collect(Path(args.out), Path(args.docs), budgets, args.seeds), flush=True)


if __name__ == "__main__":
    main()
