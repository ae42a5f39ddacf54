"""``run --search halving``: which child is best at a budget, without training every candidate to the end.

Successive halving (Jamieson & Talwalkar 2016): the candidates are every combination of ``--select``, ``--heal``
and ``--trainable``; rung r of R trains each survivor up to the winner's budget divided by eta^(R - r), ranks them
by val loss on the run's fixed windows and keeps the best ceil(n / eta). Survivors continue from their own
checkpoint; nobody is retrained from step 0. The last rung trains the finalists to the full budget, and the
report compares them like the side-by-side mode.

Schedule. Every candidate trains on one warmup-stable-decay schedule laid over the *full* budget, whatever rung it
stops at: warmup ends before the first rung is scored, and the decay lies wholly inside the last rung. Every
score before the last rung is then read in the stable phase, at the same learning rate, after the same tokens
and batches for every candidate, and a survivor that continues trains exactly as it would have in one go (the
winner equals a standalone ``inherit`` + ``train`` of the same blocks, healing and weights). What the ranking
cannot see is how much each candidate would gain from the decay; the finalists all get it before the verdict.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from collections.abc import Callable
from dataclasses import dataclass

from inheritune.analysis.scoring import paired_delta
from inheritune.training.budget import compile_once
from inheritune.training.checkpoint import drop_checkpoints
from inheritune.training.rundir import read_json
from inheritune.training.runconfig import RunConfig, rung_steps
from inheritune.training.runstate import State
from inheritune.training.teacher_cache import prune


@dataclass(frozen=True)
class Stages:
    """The run's own stages (``inheritune.run``: cut a child, train it, measure it), each done once and recorded
    in state.json; the search only decides which to call, with what budget."""

    inherit: Callable
    train: Callable
    measure: Callable
    measure_before: Callable


def halving(config: RunConfig, state: State, out: Path, reference: str, layers: int, steps: int,
            report: str | None, stages: Stages) -> tuple[dict[str, dict], dict]:
    """(the finalists as side-by-side children, the search's record for report.json)."""
    candidates = {config.child_name(*c): c for c in config.children()}
    rungs = rung_steps(len(candidates), config.eta, steps)  # (checked when the config was made)
    print(f"search: {len(candidates)} candidates, eta {config.eta}, rungs at steps {rungs} of {steps} "
          "(one warmup-stable-decay schedule over the full budget)", flush=True)
    compiled, entries = None, {}
    for name, (method, heal, spec) in candidates.items():  # cut every candidate and score it untrained
        folder = config.child_folder(method, heal, spec)
        child = stages.inherit(reference, out / "children" / folder / "child", select=f"{method}:{layers}",
                              from_report=report or "", seed=config.train.seed)
        compiled = compiled or compile_once(config, state, child, steps)
        record = read_json(Path(child) / "inheritune.json", "the cut child's record")  # its blocks, and why
        entries[name] = {"name": name, "method": method, "heal": heal, "trainable_spec": spec, "folder": folder,
                         "layers": layers, "child_dir": str(child), "blocks": record["layers"],
                         "selection": record.get("selection"),
                         "before": stages.measure_before(config, child, state, f"child/{folder}/before")}
    # KD candidates read the same batches at the same steps: the first to reach one pays the teacher's forward
    # pass, the others read its hidden states back (training/teacher_cache.py)
    survivors, record = list(candidates), []
    for number, target in enumerate(rungs, 1):
        scored = {}
        kd_survivors = sum(entries[name]["heal"] == "kd" for name in survivors)
        for name in survivors:
            e = entries[name]
            shared = {"teacher_cache": str(out / "teacher-cache")} if e["heal"] == "kd" and kd_survivors > 1 else {}
            trained = stages.train(config, state, f"search/rung-{number}/{e['folder']}/train", e["child_dir"],
                                   out / "children" / e["folder"] / "train", steps, stop_after=target,
                                   schedule="wsd", compile=compiled, **shared,
                                   **config.heal_args(e["heal"], reference, e["trainable_spec"]))
            e.update(trained)
            e["eval"] = scored[name] = stages.measure(config, name, trained["model_dir"], state,
                                               f"search/rung-{number}/{e['folder']}/eval")
        prune(out / "teacher-cache", target)  # the survivors train on from step `target`
        rung = _rank(scored, config, target, trained["tokens"] // trained["steps"], number == len(rungs))
        record.append(rung)
        survivors = rung["kept"]
        for name in scored:
            if name not in survivors and not config.keep_stage_checkpoints:  # out of the search: only its record stays
                drop_checkpoints(f"{name} (out at rung {number})", out / "children" / entries[name]["folder"] / "train",
                                 kept="snapshot")
        print(f"rung {number}: {len(scored)} candidates at {rung['tokens']:,} tokens each; kept "
              f"{', '.join(survivors)}", flush=True)
    shutil.rmtree(out / "teacher-cache", ignore_errors=True)  # every training that could read it is done
    finalists = {name: entries[name] for name in record[-1]["candidates_order"]}
    return finalists, _summary(record, entries, finalists, steps, config)


def _rank(scored: dict[str, dict], config: RunConfig, target: int, tokens_per_step: int, last: bool) -> dict:
    """One rung: every candidate's loss, its paired delta against the rung's best, who is kept, and where the
    windows cannot separate a candidate that goes from one that stays."""
    order = sorted(scored, key=lambda n: (scored[n]["loss"], n))
    best = order[0]
    keep = order if last else order[:math.ceil(len(order) / config.eta)]
    rows = []
    for name in order:
        pair = paired_delta(scored[name], scored[best], config.bootstrap) if name != best else None
        rows.append({"name": name, "val_loss": scored[name]["loss"], "ci95": scored[name]["loss_ci95"],
                     "delta_vs_best": pair, "kept": name in keep})
    unclear = []
    if not last and len(keep) < len(order):
        for gone in order[len(keep):]:
            pair = paired_delta(scored[gone], scored[keep[-1]], config.bootstrap)
            if pair["ci95"][0] <= 0:
                unclear.append({"dropped": gone, "kept": keep[-1], "delta": pair})
    return {"steps": target, "tokens": target * tokens_per_step, "candidates": rows, "kept": keep,
            "candidates_order": order, "unclear_cut": unclear}


def _summary(record: list[dict], entries: dict, finalists: dict, steps: int, config: RunConfig) -> dict:
    """What the search spent against training every candidate to the end, and its winner."""
    spent = sum(e["training_flops"] for e in entries.values())
    grid = sum(e["training_flops"] / max(1, e["steps"]) * steps for e in entries.values())
    winner = min(finalists, key=lambda n: (finalists[n]["eval"]["loss"], n))
    return {"method": "halving", "eta": config.eta, "schedule": "wsd", "candidates": len(entries),
            "rungs": [{k: v for k, v in r.items() if k != "candidates_order"} for r in record],
            "winner": winner, "training_flops": spent, "grid_training_flops": grid,
            "fraction_of_grid": spent / grid if grid else None,
            "tokens": {n: e["tokens"] for n, e in entries.items()}}
