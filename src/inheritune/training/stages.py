"""The stages a run is made of, each done once and recorded in state.json (an interrupted run picks up where it
stopped): cut a child, train it (resuming from its checkpoint), measure it on the run's fixed windows, and the
one --compile decision of a side-by-side run or a search."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from inheritune.analysis.scoring import check_tokenizer_matches, validation_loss
from inheritune.analysis.zeroshot import zero_shot
from inheritune.data.dataset import TokenData
from inheritune.evaluate import inference_cost
from inheritune.inherit import InheritConfig, inherit
from inheritune.models.loading import load_config_of, load_model, parse_dtype, resolve_device
from inheritune.train import train
from inheritune.training.budget import BatchPlan, compile_pays
from inheritune.training.checkpoint import checkpoints, remove_checkpoint
from inheritune.training.distributed import launch_torchrun
from inheritune.training.optim import default_peak_flops, flops_per_token
from inheritune.training.runconfig import RunConfig
from inheritune.training.runstate import State
from inheritune.utils.errors import Interrupted


def train_stage(config: RunConfig, state: State, key: str, model: str, out: Path, steps: int, stop_after: int = 0,
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


def drop_checkpoints(key: str, out: Path) -> None:
    """A finished stage's checkpoints (its model is in final/ and recorded): only the space they take is left."""
    found = checkpoints(out)
    freed = sum(path.stat().st_size for path in found)
    for path in found:
        remove_checkpoint(path)
    if found:
        print(f"{key}: deleted its {len(found)} checkpoint(s), {freed / 2**30:.2f} GiB, now that its model is in "
              f"{out / 'final'} (--keep-stage-checkpoints true keeps them)", flush=True)


def inherit_stage(reference: str, out: Path, **kwargs) -> Path:
    """Cut a child once (an existing one is reused when the run is re-entered)."""
    if (out / "inheritune.json").is_file():
        return out
    return inherit(InheritConfig(reference=reference, out=str(out), overwrite=True, **kwargs))


def measure(config: RunConfig, name: str, path: str, state: State, key: str) -> dict:
    """Val loss with its bootstrap interval on the run's windows, plus inference cost."""
    done = state.get(key)
    if done and sorted(done.get("zero_shot_tasks", [])) == sorted(config.tasks):
        return done
    if done:  # measured with other zero-shot tasks (a re-entered run): score this run's tasks, keep the loss
        model, tokenizer = load_model(path, device=run_device(config))
        done.pop("zero_shot", None)
        if config.tasks:
            done["zero_shot"] = zero_shot(model, tokenizer, config.tasks, config.train.micro_batch_size,
                                          config.task_limit or None, run_device(config), data=TokenData(config.data))
        done["zero_shot_tasks"] = list(config.tasks)
        state.put(key, done)
        return done
    started = time.perf_counter()
    device = run_device(config)
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


def run_device(config: RunConfig) -> str:
    return resolve_device(config.train.device)


def compile_once(config: RunConfig, state: State, child: Path, steps: int) -> str:
    """--compile auto decided once for every child of a side-by-side run (and kept in state.json for its
    re-entries), so that their train seconds compare like for like: on only when even a child trained by
    cross-entropy alone (the cheapest: no teacher) repays compiling, by the rule of a single training."""
    if config.train.compile != "auto":
        return config.train.compile
    if state.get("compile") is None:
        train_config = config.train_config(str(child), str(child), steps)
        if train_config.track_attention:
            decision = False
        else:
            with torch.device("meta"):  # the shapes are all the FLOPs count needs
                model = AutoModelForCausalLM.from_config(load_config_of(str(child)))
            plan = BatchPlan.of(train_config, config.nproc_per_node)
            device = torch.device(run_device(config))
            peak = default_peak_flops(device, parse_dtype(config.train.dtype), config.train.tf32) * config.nproc_per_node
            decision, estimate, cost = compile_pays(train_config, plan, flops_per_token(model, train_config.seq_len) *
                                                    plan.tokens_per_step, peak, device.type)
            print(f"--compile auto: {'on' if decision else 'off'} for every child (a cross-entropy child's eager "
                  f"estimate {estimate:.0f} s against 10 x {cost:.0f} s of compiling)", flush=True)
        state.put("compile", "on" if decision else "off")
    return state.get("compile")


def measure_before(config: RunConfig, child: Path, state: State, key: str) -> dict:
    """An untrained child's val loss on the run's windows (the 'before' of its comparison)."""
    if state.get(key) is None:
        model, _ = load_model(str(child), device=run_device(config))
        found = validation_loss(model, TokenData(config.data), config.train.seq_len, 0, config.train.eval_windows,
                                config.train.micro_batch_size, run_device(config), bootstrap=config.bootstrap,
                                keep_windows=False, bos_windows=config.train.bos_windows)
        state.put(key, {k: found[k] for k in ("loss", "loss_ci95")})
    return state.get(key)
