"""The paper's child-versus-child claims on a converged model (SmolLM2-135M), and the layer-selection methods
of its peers, at one retraining budget. One command regenerates every number of docs/pretrained.md:

    python experiments/pretrained_claims/claims.py                   # about 60 min on 2 cores (see the docs)
    python experiments/pretrained_claims/claims.py --budget 0.5      # every training budget halved
    python experiments/pretrained_claims/claims.py --smoke --reference DIR --data DIR   # tiny, for tests

Work folders: ``--out/<reference>-<data fingerprint>-<plan>-seed<seed>/``, one per configuration, and in it one
folder per child named by its lr, batch and tokens: a rerun with other settings, another reference or other
data never reuses and never deletes another configuration's results. (``make demo``'s short version of stage
3 is now the product itself: ``inheritune run --select first bi angular``.)

Stages (each child is its own folder with a ``result.json``: rerunning skips what is done and continues a
child's interrupted training from its checkpoint):
1. analyze the reference (the selections choose from this report: Block Influence, angular distances, lazy
   layers);
2. sweep: the first-K child at three learning rates and two batch sizes (same tokens); the best learning
   rate and batch train every child below (and set ``make demo-smollm2``'s);
3. which blocks (K of L): first (Inheritune), bi (ShortGPT), angular (Gromov et al.), drop-lazy, spread, and
   random init of the same shape;
4. lazy-layer transfer (PAPER.md section 1): 4-block children from the first four blocks, the middle, the lazy
   group and its neighbours, the last four, and random init;
5. sub-module ablation (PAPER.md section 2) on the first four blocks: full block (the transfer child), attention
   only, MLP only, attention + MLP without norms;
6. zero-shot: the reference, first-K and the best other child on the offline tasks (cloze, word-order: built
   from the corpus's held-out split, no download; ``--zero-shot-only`` reruns just this stage into the docs);
7. a second family: ``analyze`` on Gemma-3-270M (fetched here only; --no-gemma skips it).
Every child is scored before and after training on the same fixed validation windows; deltas against first-K
(or the first-four child) are paired bootstrap intervals over those windows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from collect import collect, merge_zero_shot  # noqa: E402

from inheritune.analysis.attention import AnalyzeConfig
from inheritune.analysis.scoring import validation_loss
from inheritune.analyze import analyze
from inheritune.data.dataset import PrepareConfig, TokenData, prepare
from inheritune.inherit import InheritConfig, inherit
from inheritune.models.loading import load_model
from inheritune.train import train
from inheritune.training.recipe import TrainConfig

FULL = dict(k=15, tokens=40_960, sweep_tokens=20_480, seq_len=128, batch=8, eval_t=256, eval_windows=48,
            analyze_n=50, analyze_t=128, lrs=(1e-4, 3e-4, 1e-3, 3e-3), batches=(4, 8), zero_shot_limit=200)
# the lr and batch the full run's sweep chose (docs/pretrained.md), for --zero-shot-only without a full run
CHOSEN = dict(lr=1e-3, batch=4)
SMOKE = dict(k=4, tokens=256, sweep_tokens=128, seq_len=32, batch=2, eval_t=32, eval_windows=4,
             analyze_n=4, analyze_t=32, lrs=(3e-4, 1e-3), batches=(2,), zero_shot_limit=0)


def _done(folder: Path) -> dict | None:
    result = folder / "result.json"
    return json.loads(result.read_text()) if result.is_file() else None


def score(model_dir: Path, data: Path, plan: dict) -> dict:
    model, _ = load_model(model_dir)
    result = validation_loss(model, TokenData(data), plan["eval_t"], max_windows=plan["eval_windows"], batch_size=4)
    return {k: result[k] for k in ("loss", "loss_ci95", "tokens", "window_sums", "window_counts")}


def child(name: str, root: Path, reference: str, data: Path, plan: dict, lr: float, batch: int, tokens: int,
          **inherit_args) -> dict:
    """Cut, score, train for ``tokens`` and score again one child (resumable)."""
    folder = root / f"{name}-lr{lr:g}-b{batch}-t{tokens}"
    steps = max(2, tokens // (batch * plan["seq_len"]))
    wanted = {"lr": lr, "batch": batch, "steps": steps, "seq_len": plan["seq_len"], "seed": plan["seed"],
              **{k: str(v) for k, v in inherit_args.items()}}
    settings = folder / "settings.json"
    if folder.exists() and (not settings.is_file() or json.loads(settings.read_text()) != wanted):
        # never deleted: it is another configuration's work, or not this script's
        sys.exit(f"{folder} holds a child made with other settings (or not by this script); wanted {wanted}. "
                 "Use another --out, or move it away")
    if (result := _done(folder)) is not None:
        return result
    folder.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps(wanted))
    began = time.perf_counter()
    model_dir = folder / "inherited"
    if not (model_dir / "inheritune.json").is_file():
        inherit(InheritConfig(reference=reference, out=str(model_dir), overwrite=True, seed=plan["seed"],
                              **inherit_args))
    record = json.loads((model_dir / "inheritune.json").read_text())
    before = score(model_dir, data, plan)
    run = folder / "train"
    config = TrainConfig(model=str(model_dir), data=str(data), out=str(run), max_steps=steps, seq_len=plan["seq_len"],
                         micro_batch_size=batch, lr=lr, eval_interval=0, eval_windows=4, checkpoint_interval=max(1, steps // 2),
                         keep_checkpoints=1, seed=plan["seed"], progress=False, resume=(run / "run.json").is_file())
    summary = train(config)
    if summary["status"] != "finished":
        sys.exit(f"{name}: training interrupted; run the same command again to continue")
    after = score(run / "final", data, plan)
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    result = {"name": name, "folder": str(folder), "layers": record["layers"], "init": record["init"], "copy": record["copy"],
              "selection": record.get("selection"), "parameters": record["parameters"], "lr": lr, "batch": batch,
              "steps": summary["steps"], "tokens": summary["tokens"], "training_flops": summary["training_flops"],
              "train_seconds": summary["train_seconds"], "tokens_per_s": summary["tokens"] / summary["train_seconds"],
              "before": before, "after": after, "seconds": round(time.perf_counter() - began, 1),
              "curve": [[r["step"], r["loss"]] for r in history if "loss" in r and "step" in r]}
    (folder / "result.json").write_text(json.dumps(result))
    print(f"[{name}] val loss {before['loss']:.3f} before, {after['loss']:.4f} after {summary['tokens']:,} tokens "
          f"({result['seconds']:.0f} s)", flush=True)
    return result


def lazy_neighbourhood(report_model: dict, n_layers: int) -> list[int]:
    """Four blocks around the first measured lazy layers (the group and its neighbours), or the four before the
    last four when nothing is lazy."""
    lazy = [l for l, layer in enumerate(report_model["layers"]) if layer["lazy"]]
    start = max(0, lazy[0] - 1) if lazy else max(0, n_layers - 8)
    start = min(start, n_layers - 4)
    return list(range(start, start + 4))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/pretrained_claims", help="work directory (resumable)")
    parser.add_argument("--docs", default="docs/pretrained", help="tables, results.json and plots")
    parser.add_argument("--reference", default="smollm2", help="the converged reference")
    parser.add_argument("--data", default=None, help="prepared dataset (default: the corpus, SmolLM2 tokenizer)")
    parser.add_argument("--budget", type=float, default=1.0, help="scales every training budget")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--no-gemma", action="store_true", help="skip the Gemma-3 analysis (a 250 MB fetch)")
    parser.add_argument("--smoke", action="store_true", help="tiny budgets, no zero-shot, no Gemma (for tests)")
    parser.add_argument("--lr", type=float, default=None, help="skip the sweep: train every child at this lr")
    parser.add_argument("--batch", type=int, default=None, help="with --lr: windows per step")
    parser.add_argument("--zero-shot-only", action="store_true", help="only the zero-shot stage, merged into the full "
                        "run's docs: trains first-K and bi (the full run's best) at the full run's lr and batch "
                        "(or --lr/--batch) and scores them and the reference on the offline tasks")
    args = parser.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one line per child instead of a bar per checkpoint load
    plan = {**(SMOKE if args.smoke else FULL), "seed": args.seed}
    methods = ("first", "bi", "angular", "drop-lazy", "spread")
    for key in ("tokens", "sweep_tokens"):
        plan[key] = int(plan[key] * args.budget)
    docs = Path(args.docs)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        timings[stage] = round(time.perf_counter() - clock, 1)
        clock = time.perf_counter()
        print(f"[{stage} done: {timings[stage]:.0f} s]", flush=True)

    data = Path(args.data) if args.data else Path(args.out) / "data-smollm2"
    if not args.data:
        from inheritune.assets.catalog import fetch

        corpus = fetch(["corpus"], verbose=False)["corpus"]
        prepare(PrepareConfig(input=[str(corpus)], out=str(data), tokenizer="smollm2"), progress=False)
    root = Path(args.out) / configuration(args, TokenData(data), plan)
    root.mkdir(parents=True, exist_ok=True)
    print(f"work folder: {root}", flush=True)
    report_path = root / "analysis" / "report.json"
    if not report_path.is_file():
        analyze(AnalyzeConfig(model=args.reference, data=str(data), n=plan["analyze_n"], t=plan["analyze_t"],
                              out=str(root / "analysis"), overwrite=True), progress=False)
    report = json.loads(report_path.read_text())
    n_layers, k = report["models"][0]["num_layers"], plan["k"]
    lap("analysis")
    ref_score = _done(root / "reference") or _reference_score(args.reference, data, plan, root / "reference")
    lap("reference")

    run = dict(root=root, reference=args.reference, data=data, plan=plan)
    if args.zero_shot_only:
        chosen = json.loads((docs / "results.json").read_text())["chosen"] if (docs / "results.json").is_file() \
            else CHOSEN
        lr, batch = args.lr or chosen["lr"], args.batch or chosen["batch"]
        which = {m: child(f"which/{m}", lr=lr, batch=batch, tokens=plan["tokens"], select=f"{m}:{k}",
                          from_report=str(report_path), **run) for m in ("first", "bi")}
        lap("which")
        zero_shot = _zero_shot(root, args.reference, which, plan, data)
        lap("zero-shot")
        print(merge_zero_shot(docs, zero_shot, which), f"\nstage times (s): {timings}", flush=True)
        return
    sweep = {}
    if args.lr is None:
        for lr in plan["lrs"]:
            for batch in plan["batches"]:
                sweep[(lr, batch)] = child(f"sweep/lr{lr:g}-b{batch}", lr=lr, batch=batch,
                                           tokens=plan["sweep_tokens"], layers=str(k), **run)
        lr, batch = min(sweep, key=lambda key: sweep[key]["after"]["loss"])
    else:
        lr, batch = args.lr, args.batch or plan["batch"]
    lap("sweep")
    which = {m: child(f"which/{m}", lr=lr, batch=batch, tokens=plan["tokens"], select=f"{m}:{k}",
                      from_report=str(report_path), **run) for m in methods}
    which["random"] = child("which/random", lr=lr, batch=batch, tokens=plan["tokens"], init="random", layers=str(k), **run)
    lap("which")
    lazy4 = lazy_neighbourhood(report["models"][0], n_layers)
    middle = (n_layers - 4) // 2
    spans = {"first": "0-3", "middle": f"{middle}-{middle + 3}", "lazy": f"{lazy4[0]}-{lazy4[-1]}",
             "last": f"{n_layers - 4}-{n_layers - 1}"}
    transfer = {name: child(f"transfer/{name}", lr=lr, batch=batch, tokens=plan["tokens"], layers=span, **run)
                for name, span in spans.items()}
    transfer["random"] = child("transfer/random", lr=lr, batch=batch, tokens=plan["tokens"], init="random",
                               layers="4", **run)
    lap("transfer")
    ablation = {"full": transfer["first"]}
    for mode in ("attention", "mlp", "attention-mlp"):
        ablation[mode] = child(f"ablation/{mode}", lr=lr, batch=batch, tokens=plan["tokens"], layers="0-3",
                               copy=mode, **run)
    lap("ablation")
    zero_shot = {} if args.smoke else _zero_shot(root, args.reference, which, plan, data)
    lap("zero-shot")
    gemma = None if (args.smoke or args.no_gemma) else _gemma(root, plan)
    lap("gemma")
    collect(docs, dict(plan=plan, reference=args.reference, report=report, ref_score=ref_score, sweep=sweep,
                       chosen={"lr": lr, "batch": batch}, which=which, transfer=transfer, ablation=ablation,
                       zero_shot=zero_shot, gemma=gemma, timings=timings, spans=spans))


def configuration(args, data: TokenData, plan: dict) -> str:
    """The work folder's name: the reference, the dataset's fingerprint, the plan and the seed (with --budget)."""
    fingerprint = str(data.meta.get("fingerprint", ""))[:12] or "unfingerprinted"
    name = Path(str(args.reference).rstrip("/")).name.replace(".", "-")
    budget = "" if args.budget == 1.0 else f"-budget{args.budget:g}"
    return f"{name}-{fingerprint}-{'smoke' if args.smoke else 'full'}{budget}-seed{args.seed}"


def _reference_score(reference: str, data: Path, plan: dict, folder: Path) -> dict:
    model, _ = load_model(reference)
    result = validation_loss(model, TokenData(data), plan["eval_t"], max_windows=plan["eval_windows"], batch_size=4)
    result = {k: result[k] for k in ("loss", "loss_ci95", "tokens", "window_sums", "window_counts")}
    result["parameters"] = sum(p.numel() for p in model.parameters())
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "result.json").write_text(json.dumps(result))
    return result


def _zero_shot(root: Path, reference: str, which: dict, plan: dict, data: Path) -> dict:
    """The reference, the first-K child and the best other child on the offline tasks (built from ``data``'s
    held-out split: no download can withdraw them)."""
    from inheritune.analysis.zeroshot import zero_shot

    best = min((m for m in which if m != "first"), key=lambda m: which[m]["after"]["loss"])
    models = {"reference": reference, "first": str(Path(which["first"]["folder"]) / "train" / "final"),
              best: str(Path(which[best]["folder"]) / "train" / "final")}
    results = {}
    for name, path in models.items():
        target = root / "zero-shot-offline" / f"{name}.json"
        if not target.is_file():
            model, tokenizer = load_model(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(zero_shot(model, tokenizer, ["cloze", "word-order"], batch_size=8,
                                                   limit=plan["zero_shot_limit"], data=TokenData(data))))
        results[name] = json.loads(target.read_text())
    return results


def _gemma(root: Path, plan: dict) -> dict | None:
    from inheritune.assets.catalog import fetch

    gguf = fetch(["gemma3-gguf"], verbose=True)["gemma3-gguf"]
    gemma_data = root / "data-gemma3"
    prepare(PrepareConfig(input=[str(fetch(["corpus"], verbose=False)["corpus"])], out=str(gemma_data),
                          tokenizer=str(gguf)), progress=False)
    reports = {}
    # Gemma was trained with <bos> at position 0 of every sequence: analysed without it and with it
    for key, bos in (("plain", False), ("bos", True)):
        report = root / ("analysis-gemma3" + ("-bos" if bos else "")) / "report.json"
        if not report.is_file():
            analyze(AnalyzeConfig(model=str(gguf), data=str(gemma_data), n=plan["analyze_n"], t=plan["analyze_t"],
                                  out=str(report.parent), overwrite=True, bos_windows=bos), progress=False)
        reports[key] = json.loads(report.read_text())
    return reports


if __name__ == "__main__":
    main()
