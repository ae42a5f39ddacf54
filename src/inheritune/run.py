"""The whole Inheritune recipe: measure the reference, choose the start, grow the child round by round until
its validation loss matches the reference's, train the baselines on the same budget and windows, and
report. Every stage records its result in ``state.json``, so an interrupted run picks up where it stopped:
finished stages are not redone and an interrupted training resumes from its checkpoint.
"""

from __future__ import annotations

import math
import time
from functools import partial
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from inheritune.analysis.attention import AnalyzeConfig, attention_summary
from inheritune.analysis.report import write_report
from inheritune.analysis.selection import NEEDS_REPORT
from inheritune.analysis.verdict import reference_check
from inheritune.analyze import analyze
from inheritune.assets.sources import resolve_model_path
from inheritune.data.dataset import TokenData
from inheritune.models.loading import load_config_of
from inheritune.analysis.scoring import check_tokenizer_matches, validation_loss
from inheritune.analysis.zeroshot import zero_shot
from inheritune.evaluate import inference_cost
from inheritune.inherit import InheritConfig, inherit
from inheritune.models.loading import load_model, resolve_device
from inheritune.train import train
from inheritune.training.budget import compile_once
from inheritune.training.checkpoint import checkpoints, drop_checkpoints
from inheritune.training.distributed import launch_torchrun
from inheritune.training.runconfig import RunConfig  # noqa: F401 (the verb's config)
from inheritune.training.search import Stages, halving
from inheritune.training.rundir import read_json
from inheritune.training.runstate import State, open_run_dir
from inheritune.utils.errors import Interrupted, UserError, reading

def _train_stage(config: RunConfig, state: State, key: str, model: str, out: Path, steps: int, stop_after: int = 0,
                **extra) -> dict:
    """Train once: reuse a finished run, resume an interrupted one, else start fresh. With ``stop_after`` short of
    ``steps`` (a search's rung) the training pauses there, its model in out/snapshot and its checkpoint kept, and
    a later call with a larger ``stop_after`` continues it on the same schedule."""
    pausing = 0 < stop_after < steps
    wanted = "paused" if pausing else "finished"
    done = state.get(key)
    if done and done.get("status") == wanted:
        if pausing or (Path(done["model_dir"]) / "config.json").is_file():
            return done
        # its model was deleted: train it again (from its last checkpoint when there is one), measure it again
        print(f"{key}: its model {done['model_dir']} is missing; training it again", flush=True)
        state.drop(key)
        state.drop(key.rsplit("/", 1)[0] + "/eval")
    resume = out.is_dir() and bool(checkpoints(out))
    started = time.perf_counter()
    train_config = config.train_config(model, str(out), steps, resume=resume, overwrite=not resume,
                                       stop_after=stop_after if pausing else 0, **extra)
    summary = launch_torchrun(train_config, config.nproc_per_node) if config.nproc_per_node > 1 else train(train_config)
    if summary["status"] != wanted:  # stopped by a signal: the run resumes from here next time
        raise Interrupted(summary.get("signal") or 15, f"interrupted during {key}; its checkpoint is written. Run "
                                                       "the same 'inheritune run' command again to continue")
    # wall_seconds: this call only (loads included); train_seconds: the training's own time over every session
    summary = {k: v for k, v in summary.items()} | {"wall_seconds": round(time.perf_counter() - started, 1),
                                                   "model_dir": str(out / ("snapshot" if pausing else "final"))}
    state.put(key, summary)
    if not pausing and not config.keep_stage_checkpoints:
        drop_checkpoints(key, out)
    return summary


def _inherit_stage(reference: str, out: Path, **kwargs) -> Path:
    """Cut a child once (an existing one is reused when the run is re-entered)."""
    if (out / "inheritune.json").is_file():
        return out
    return inherit(InheritConfig(reference=reference, out=str(out), overwrite=True, **kwargs))


def _measure(config: RunConfig, name: str, path: str, state: State, key: str) -> dict:
    """Val loss with its bootstrap interval on the run's windows, plus inference cost."""
    done = state.get(key)
    if done and sorted(done.get("zero_shot_tasks", [])) == sorted(config.tasks):
        return done
    if done:  # measured with other zero-shot tasks (a re-entered run): score this run's tasks, keep the loss
        model, tokenizer = load_model(path, device=_device(config))
        done.pop("zero_shot", None)
        if config.tasks:
            done["zero_shot"] = zero_shot(model, tokenizer, config.tasks, config.train.micro_batch_size,
                                          config.task_limit or None, _device(config), data=TokenData(config.data))
        done["zero_shot_tasks"] = list(config.tasks)
        state.put(key, done)
        return done
    started = time.perf_counter()
    device = _device(config)
    model, tokenizer = load_model(path, device=device)
    data = TokenData(config.data)
    if tokenizer is not None:
        check_tokenizer_matches(tokenizer, data, name)
    result = validation_loss(model, data, config.train.seq_len, 0, config.train.eval_windows, config.train.micro_batch_size, device,
                             bootstrap=config.bootstrap, keep_windows=True, bos_windows=config.train.bos_windows)
    result["inference"] = inference_cost(model, seq_len=config.train.seq_len, new_tokens=16, device=device, path=path)
    if config.tasks:
        result["zero_shot"] = zero_shot(model, tokenizer, config.tasks, config.train.micro_batch_size,
                                        config.task_limit or None, device, data=data)
    result["zero_shot_tasks"] = list(config.tasks)
    result["layers"] = model.config.num_hidden_layers
    result["seconds"] = round(time.perf_counter() - started, 2)  # load, validation loss, inference cost, tasks
    state.put(key, result)
    return result


def _measure_before(config: RunConfig, child: Path, state: State, key: str) -> dict:
    """An untrained child's val loss on the run's windows (the 'before' of its comparison)."""
    if state.get(key) is None:
        model, _ = load_model(str(child), device=_device(config))
        found = validation_loss(model, TokenData(config.data), config.train.seq_len, 0, config.train.eval_windows,
                                config.train.micro_batch_size, _device(config), bootstrap=config.bootstrap,
                                keep_windows=False, bos_windows=config.train.bos_windows)
        state.put(key, {k: found[k] for k in ("loss", "loss_ci95")})
    return state.get(key)


def _device(config: RunConfig) -> str:
    return resolve_device(config.train.device)


def run(config: RunConfig) -> dict:
    """Run the recipe; returns the report (also written as report.md / report.json in ``out``). The wall time of
    every session of the run (re-entries after a stop included) is added up in state.json's ``sessions``."""
    out = open_run_dir(config)
    state = State(out / "state.json")
    started = time.perf_counter()
    earlier = state.get("sessions") or {"seconds": 0.0, "count": 0}

    def sessions() -> dict:  # every earlier session's time and this one's so far
        return {"seconds": round(earlier["seconds"] + time.perf_counter() - started, 1), "count": earlier["count"] + 1}
    try:
        return _run(config, state, out, sessions)
    finally:  # a stop or an error ends the session too: its time counts (a SIGKILL's cannot be recorded)
        state.put("sessions", sessions())


def _run(config: RunConfig, state: State, out: Path, sessions) -> dict:
    steps = round(config.steps * config.budget)
    reference, n_layers, ref, ref_training = _reference_stage(config, state, out, steps)
    start, analysis = _choose_start(config, state, out, reference, n_layers)
    needs = any(method in NEEDS_REPORT for method in config.select)
    report = _selection_report(config, state, out, reference) if needs else None
    children, search = None, None
    if config.search:
        stages = Stages(inherit=_inherit_stage, train=_train_stage, measure=_measure, measure_before=_measure_before)
        children, search = halving(config, state, out, reference, start, steps, report, stages)
        rounds = [children[search["winner"]]]
        matched = rounds[0]["eval"]["loss"] <= ref["loss"] + config.tolerance
    elif config.side_by_side:
        children = _side_by_side(config, state, out, reference, start, steps, report)
        rounds = [min(children.values(), key=lambda c: c["eval"]["loss"])]  # the best, for the comparison analysis
        matched = rounds[0]["eval"]["loss"] <= ref["loss"] + config.tolerance
    else:
        rounds, matched = _grow(config, state, out, reference, n_layers, start, ref["loss"], steps,
                                ref_training["training_flops"] if ref_training else 0.0, report)
    baselines = {}
    for baseline in config.baselines:
        try:
            baselines[baseline] = _baseline(config, state, baseline, reference, rounds[-1]["layers"], out, steps)
        except UserError as exc:
            baselines[baseline] = {"skipped": str(exc)}
            print(f"baseline {baseline} skipped: {exc}", flush=True)
    comparison = _compare(config, state, out, reference, rounds[-1]["model_dir"]) if config.compare_analysis else None
    check = reference_check(_reference_attention(config, state, out, reference), ref_training,
                            config.convergence_tolerance)
    return write_report(config, out, reference, n_layers, ref, ref_training, analysis, start, rounds, baselines,
                        matched, comparison, sessions(), check, children, search)


def _compare(config: RunConfig, state: State, out: Path, reference: str, child: str) -> str | None:
    """The side-by-side analysis of reference and final child, on at most the sequences the val split holds;
    skipped (and said) when it cannot be made, so that a finished run always writes its report."""
    done = state.get("compare_done")
    if done is None:
        began = time.perf_counter()
        available = len(TokenData(config.data).split("val")) // config.analyze_t
        n = min(config.analyze_n, available)
        if n < 1:
            done = {"skipped": f"the val split is shorter than one sequence of {config.analyze_t} tokens"}
        else:
            if n < config.analyze_n:
                print(f"comparison: analysing {n} sequences of {config.analyze_t} tokens (the val split holds no "
                      "more)", flush=True)
            try:
                report = analyze(AnalyzeConfig(model=reference, compare=child, data=config.data,
                                               out=str(out / "compare"), n=n, t=config.analyze_t,
                                               device=_device(config), overwrite=True, progress=config.train.progress,
                                               bos_windows=config.train.bos_windows))
                state.put("reference_attention", attention_summary(report["_results"][0]) | {"n": n})
                done = {"seconds": round(time.perf_counter() - began, 2), "n": n}
            except UserError as exc:
                done = {"skipped": str(exc)}
        state.put("compare_done", done)
    if "skipped" in done:
        print(f"comparison analysis skipped: {done['skipped']}", flush=True)
        return None
    return str(out / "compare")


def _reference_attention(config: RunConfig, state: State, out: Path, reference: str) -> dict:
    """The state of the reference's attention (uniform, lazy, attentive layers), from an analysis this run has
    made anyway (start 'auto', the final comparison) or, when it made none, from one of the reference alone."""
    if state.get("reference_attention") is None:
        began = time.perf_counter()
        found = reference_attention(reference, config.data, str(out / "analysis"), config.analyze_n, config.analyze_t,
                                    _device(config), config.train.progress, config.train.bos_windows)
        state.put("reference_attention", found | {"seconds": round(time.perf_counter() - began, 2)})
    return state.get("reference_attention")


def _reference_stage(config: RunConfig, state: State, out: Path, steps: int):
    """(reference model, its depth, its measurement, its training summary when this run trained it)."""
    summary = None
    reference = config.reference
    if config.reference_from_scratch:
        # Evaluated at least 16 times, so that the slope of its last half (is it still learning?) has points.
        every = max(1, steps // 16)
        summary = _train_stage(config, state, "reference_training", config.reference_from_scratch,
                               out / "reference", steps,
                               eval_interval=min(config.train.eval_interval or every, every),
                               track_attention=config.track_reference)
        reference = summary["model_dir"]
    path, gguf = resolve_model_path(reference)
    n_layers = load_config_of(path, gguf).num_hidden_layers
    ref = _measure(config, "reference", reference, state, "reference_eval")
    if not math.isfinite(ref["loss"]):  # every comparison and the growth's target would be meaningless
        state.drop("reference_eval")
        raise UserError(f"the reference {reference} has val loss {ref['loss']} on {config.data}: its weights or "
                        "outputs are not finite (a damaged or overflowing model, or --dtype too narrow for it); "
                        "the run needs a reference with a finite loss")
    print(f"reference: {n_layers} layers, val loss {ref['loss']:.4f} on {ref['windows']} windows", flush=True)
    return reference, n_layers, ref, summary


def _choose_start(config: RunConfig, state: State, out: Path, reference: str, n_layers: int):
    """(first child depth, analyze's recommendation when the start is 'auto')."""
    analysis = None
    if config.start == "auto":
        analysis = state.get("analysis")
        if analysis is None:
            began = time.perf_counter()
            report = _analyze_reference(config, reference, out)
            analysis = report["recommendation"] | {"seconds": round(time.perf_counter() - began, 2)}
            state.put("reference_attention", attention_summary(report["_results"][0]))
            state.put("analysis", analysis)
        start = analysis["k"]
    else:
        start = n_layers // 2 if config.start == "half" else int(config.start)
    if not 1 <= start < n_layers:
        raise UserError(f"start l = {start} must be between 1 and {n_layers - 1} (the reference has {n_layers} layers)")
    return start, analysis


def _analyze_reference(config: RunConfig, reference: str, out: Path) -> dict:
    """The run's one analysis of the reference (out/analysis), in the windows its training uses; with --select
    loss or sleb it measures each block's removal too (once per run: every round and child reads it there)."""
    removal = "sleb" if "sleb" in config.select else "loss" if "loss" in config.select else "none"
    return analyze(AnalyzeConfig(model=reference, data=config.data, out=str(out / "analysis"), n=config.analyze_n,
                                 t=config.analyze_t, device=_device(config), overwrite=True,
                                 progress=config.train.progress, bos_windows=config.train.bos_windows,
                                 removal=removal, calibration_windows=config.calibration_windows,
                                 calibration_t=config.calibration_t))


def _selection_report(config: RunConfig, state: State, out: Path, reference: str) -> str:
    """The analysis report every round's --select chooses from: the start's analysis when there was one, else one
    made here (once: a re-entered run chooses from the same measurements)."""
    if state.get("analysis") is None and state.get("selection_analysis") is None:
        began = time.perf_counter()
        report = _analyze_reference(config, reference, out)
        state.put("reference_attention", attention_summary(report["_results"][0]))
        state.put("selection_analysis", {"seconds": round(time.perf_counter() - began, 2)})
    return str(out / "analysis" / "report.json")


def _grow(config: RunConfig, state: State, out: Path, reference: str, n_layers: int, start: int, ref_loss: float,
          steps: int, spent: float, report: str | None = None) -> tuple[list[dict], bool]:
    """The growth rounds: l, l + step, ... re-inherited (or grown) and trained until the reference is matched or
    the FLOPs cap (counting ``spent`` already, the reference's training) is reached. Each round keeps the l blocks
    that --select chooses for that l (from ``report``, the run's analysis, when the method needs one)."""
    rounds, layers, matched = [], start, False
    for index in range(config.max_rounds):
        if layers >= n_layers:
            print(f"stopping: the next child ({layers} layers) would be as deep as the reference", flush=True)
            break
        name = f"round-{index}-l{layers}"
        child = out / "rounds" / name / "child"
        if config.grow == "continue" and rounds:
            _grown_child(reference, rounds[-1]["model_dir"], layers, child)
        else:
            _inherit_stage(reference, child, select=f"{config.select[0]}:{layers}", from_report=report or "",
                           seed=config.train.seed)
        trained = _train_stage(config, state, f"{name}/train", str(child), out / "rounds" / name / "train", steps,
                               **config.heal_args(config.heal[0], reference, config.trainable[0]))
        measured = _measure(config, name, trained["model_dir"], state, f"{name}/eval")
        spent += trained["training_flops"]
        matched = measured["loss"] <= ref_loss + config.tolerance
        record = read_json(child / "inheritune.json", "the cut child's record")
        rounds.append({"name": name, "layers": layers, "child_dir": str(child), **trained, "eval": measured,
                       "blocks": record["layers"], "selection": record.get("selection"), "heal": config.heal[0],
                       "trainable_spec": config.trainable[0]})
        print(f"{name}: val loss {measured['loss']:.4f} vs reference {ref_loss:.4f} "
              f"({'matched' if matched else 'not matched'})", flush=True)
        if matched or (config.max_total_flops and spent >= config.max_total_flops):
            break
        layers += config.step
    return rounds, matched


def _side_by_side(config: RunConfig, state: State, out: Path, reference: str, layers: int, steps: int,
                  report: str | None) -> dict[str, dict]:
    """One child per (selection, healing) at depth ``layers``: cut, scored before training, trained on the same
    budget, seed and data order, scored after on the same windows (each resumable like a round)."""
    children, compiled = {}, None
    for method, heal, spec in config.children():
        name, folder = config.child_name(method, heal, spec), config.child_folder(method, heal, spec)
        root = out / "children" / folder
        child = _inherit_stage(reference, root / "child", select=f"{method}:{layers}", from_report=report or "",
                               seed=config.train.seed)
        compiled = compiled or compile_once(config, state, child, steps)
        before = _measure_before(config, child, state, f"child/{folder}/before")
        trained = _train_stage(config, state, f"child/{folder}/train", str(child), root / "train", steps,
                               compile=compiled, **config.heal_args(heal, reference, spec))
        measured = _measure(config, name, trained["model_dir"], state, f"child/{folder}/eval")
        record = read_json(child / "inheritune.json", "the cut child's record")
        children[name] = {"name": name, "method": method, "heal": heal, "trainable_spec": spec, "layers": layers,
                          "child_dir": str(child),
                          **trained, "before": before, "eval": measured, "blocks": record["layers"],
                          "selection": record.get("selection")}
        print(f"{name}: val loss {before['loss']:.4f} before, {measured['loss']:.4f} after {trained['tokens']:,} "
              "tokens", flush=True)
    return children


def _grown_child(reference: str, trained_dir: str, layers: int, out: Path) -> Path:
    """--grow continue: the trained child's weights, with the next reference layers appended."""
    child = _inherit_stage(reference, out, layers=str(layers))
    trained = {}
    with reading(f"the trained child in {trained_dir}"):
        model = AutoModelForCausalLM.from_pretrained(child)
        for file in Path(trained_dir).glob("*.safetensors"):
            trained.update(load_file(str(file)))
    with torch.no_grad():
        state = model.state_dict()
        for key, tensor in trained.items():
            if key in state and state[key].shape == tensor.shape:
                state[key].copy_(tensor)
    model.save_pretrained(child)
    return child


def _baseline(config: RunConfig, state: State, name: str, reference: str, layers: int, out: Path, steps: int) -> dict:
    """Train one baseline at the child's depth on the same budget and validation windows; returns its summary
    with eval. ``uses_reference`` says whether it was built from the reference's weights (then the reference's
    own training is part of what it cost)."""
    root = out / "baselines" / name
    # a search's baselines train on its candidates' warmup-stable-decay schedule: one table, one schedule
    train_stage = partial(_train_stage, schedule="wsd") if config.search else _train_stage
    if name in ("random", "random-2x", "kd"):
        child = _inherit_stage(reference, root / "child", layers=str(layers), init="random", seed=config.train.seed)
        extra = {"teacher": reference, "kd_alpha": config.kd_alpha, "kd_temperature": config.kd_temperature} \
            if name == "kd" else {}
        trained = train_stage(config, state, f"baseline/{name}/train", str(child), root / "train",
                              steps * (2 if name == "random-2x" else 1), **extra)
        stages = [trained]
    elif name == "stacking":
        # Gong et al. as the authors ran it: ceil(l/2) layers from scratch with the full budget, stacked on top of
        # themselves (the first l of the 2 ceil(l/2) blocks), then trained again with the full budget on data
        # that continues where the first stage stopped (no batch seen twice).
        half = (layers + 1) // 2
        small = _inherit_stage(reference, root / "small", layers=str(half), init="random", seed=config.train.seed)
        first = train_stage(config, state, f"baseline/{name}/small", str(small), root / "small-train", steps)
        stacked = _inherit_stage(first["model_dir"], root / "child", init="stacking", depth=layers)
        trained = train_stage(config, state, f"baseline/{name}/train", str(stacked), root / "train", steps,
                              data_offset=first["steps"])
        stages = [first, trained]
    elif name == "hybrid-stacking":  # reference layers 0..ceil(l/2)-1 twice, the first l of them
        child = _inherit_stage(reference, root / "child", layers=str(layers), init="hybrid-stacking")
        trained = train_stage(config, state, f"baseline/{name}/train", str(child), root / "train", steps)
        stages = [trained]
    elif name == "half-width":
        child = _inherit_stage(reference, root / "child", init="half-width")
        trained = train_stage(config, state, f"baseline/{name}/train", str(child), root / "train", steps)
        stages = [trained]
    else:
        raise UserError(f"unknown baseline {name}")
    total = trained | {key: sum(stage.get(key) or 0 for stage in stages)
                       for key in ("training_flops", "steps", "tokens", "wall_seconds", "train_seconds")}
    total["stages"] = [{key: stage[key] for key in ("steps", "tokens", "training_flops", "data_offset")
                        if key in stage} for stage in stages]
    measured = _measure(config, name, trained["model_dir"], state, f"baseline/{name}/eval")
    if config.side_by_side:  # its loss as cut (for stacking: as stacked), like the children's
        total["before"] = _measure_before(config, root / "child", state, f"baseline/{name}/before")
    return {**total, "eval": measured, "layers": measured["layers"], "heal": "kd" if name == "kd" else "ce",
            "uses_reference": name in ("kd", "hybrid-stacking", "half-width")}


def reference_attention(reference: str, data: str, out: str, n: int, t: int, device: str, progress: bool,
                        bos_windows: bool = False) -> dict:
    """The reference's attention state from an analysis of it alone, on at most ``n`` sequences of ``t`` tokens
    of the val split (fewer when the split is short: the check is a safeguard, not the user's analysis);
    ``{"skipped": why}`` when no analysis is possible, so that a finished run never fails on its check."""
    available = len(TokenData(data).split("val")) // t
    if available < 1:
        return {"skipped": f"the val split is shorter than one sequence of {t} tokens"}
    if n > available:
        print(f"reference check: analysing {available} sequences of {t} tokens (the val split holds no more)",
              flush=True)
    try:
        report = analyze(AnalyzeConfig(model=reference, data=data, out=out, n=min(n, available), t=t, device=device,
                                       overwrite=True, progress=progress, bos_windows=bos_windows))
    except UserError as exc:
        return {"skipped": str(exc)}
    return attention_summary(report["_results"][0]) | {"n": min(n, available)}
