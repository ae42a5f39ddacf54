"""A training run's directory: what may be written into it (never over an input, never mixing two runs), how
a run is resumed (only with the settings that shaped it), its metrics log, summary and final model."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from inheritune.analysis.plots import draw_loss
from inheritune.data.dataset import TokenData
from inheritune.data.tokenizer import load_tokenizer, tokenizer_identity
from inheritune.training.checkpoint import checkpoints, move_checkpoint
from inheritune.utils.cards import base_model_of, trained_card, write_card
from inheritune.utils.config import to_dict
from inheritune.utils.errors import UserError, atomic_write_json, refuse_output_over_input, replace_dir, writing
from inheritune.utils.jsonl import read_log
from inheritune.utils.memory import payload_bytes


def check_out(config) -> Path:
    """The run directory, refused when it is a file or when replacing it would destroy an input."""
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory")
    refuse_output_over_input(out, config.data, None if config.model.startswith("scratch:") else config.model,
                             config.teacher or None)
    return out


# Settings that shape a run's trajectory: resuming with any of them changed would silently mix two runs.
RESUME_KEYS = ("model", "data", "seq_len", "data_order", "seed", "data_offset", "max_steps", "tokens_per_step",
               "lr", "min_lr", "warmup", "weight_decay", "beta1", "beta2", "grad_clip", "dtype", "teacher", "kd_alpha",
               "kd_temperature", "eval_windows", "schedule", "decay_fraction", "bos_windows", "data_fingerprint",
               "trainable", "lora_rank", "lora_alpha", "lora_targets")
# What a training run writes into its directory; anything else there is the user's and is never deleted.
RUN_FILES = ("run.json", "summary.json", "metrics.jsonl", "loss.png", "final", "tensorboard", "abandoned", ".lock",
             "attention.jsonl", "emergence.png", "snapshot")
# The temporary names a run writes on the way (and leaves behind when killed): only these, never any ``*.tmp``.
RUN_TEMPORARIES = re.compile(r"final\.tmp|metrics\.tmp|attention\.tmp|ckpt-\d+\.pt(\.tmp)?\.sha256|ckpt-\d+\.pt\.tmp"
                             r"|ckpt-\d+\.pt\.damaged|\.final\.old-\d+|snapshot\.tmp|\.snapshot\.old-\d+|\.(run|summary)\.json\.tmp-\d+|\.loss\.tmp-\d+\.png")


def written_by_a_run(name: str) -> bool:
    """Whether an entry of a run directory is one that a training run writes (and --overwrite may delete)."""
    return name in RUN_FILES or checkpoint_step(Path(name)) is not None or RUN_TEMPORARIES.fullmatch(name) is not None


@dataclass
class OutPlan:
    """What the run directory needs before training: the checkpoint to resume from (None: a fresh start),
    whether the previous run's files are cleared (--overwrite), and the later checkpoints and results of an
    abandoned branch (--resume-from an earlier checkpoint) to be moved aside. Nothing is touched until the
    caller has validated everything else."""

    resume: Path | None = None
    clear: bool = False
    abandon: list[Path] = field(default_factory=list)
    fork: int | None = None  # resuming a kept branch: the step where it left the main line
    logs_from: Path | None = None  # ... and the folder holding that branch's own logs


def settings(config, plan: dict) -> dict:
    """The run's trajectory settings (stored in run.json and in every checkpoint)."""
    current = {**to_dict(config), **plan}
    return {key: current[key] for key in RESUME_KEYS if key in current}


PATH_KEYS = ("model", "data", "teacher")


def same_setting(key: str, old, new) -> bool:
    """Equal values; for a path, also the same place reached another way, or the same file in a folder that was
    moved as a whole (the old path is gone and the new one ends in the same three names: a run folder moved
    with its inputs inside, as a recipe run's children are)."""
    if old == new:
        return True
    if key not in PATH_KEYS or not isinstance(old, str) or not isinstance(new, str) or not old or not new:
        return False
    old_path, new_path = Path(old).expanduser(), Path(new).expanduser()
    if old_path.exists():
        return new_path.exists() and old_path.resolve() == new_path.resolve()
    return new_path.exists() and old_path.parts[-3:] == new_path.resolve().parts[-3:]


def refuse_changes(previous: dict, current: dict, where: str, flag: str) -> None:
    changed = [f"{key} {previous[key]!r} -> {current[key]!r}" for key in RESUME_KEYS
               if key in previous and key in current and not same_setting(key, previous[key], current[key])]
    if changed:
        raise UserError(f"{flag} would change the run in {where}: {'; '.join(changed)}. Resume with the same "
                        "settings, or start over with --overwrite (or another --out)")


def read_json(path: Path, what: str) -> dict:
    """A JSON file this tool wrote, or a one-line error naming it when it is damaged."""
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} ({what}) is damaged ({type(exc).__name__}); restore it or start over with "
                        "--overwrite (or another --out)") from None
    if not isinstance(value, dict):
        raise UserError(f"{path} ({what}) is damaged (not a JSON object)")
    return value


def checkpoint_step(path: Path) -> int | None:
    match = re.fullmatch(r"ckpt-(\d+)\.pt", path.name)
    return int(match.group(1)) if match else None


def is_training_run(out: Path) -> bool:
    """Whether ``out`` holds a training run of this tool (a checkpoint, or run.json with a training's keys)."""
    if checkpoints(out):
        return True
    run_file = out / "run.json"
    if run_file.is_file():
        try:
            return "max_steps" in json.loads(run_file.read_text())
        except (OSError, ValueError):
            return False
    return False


def prepare_out(out: Path, config, plan: dict) -> OutPlan:
    """Refuse to mix runs: an out dir with another run needs --resume or --overwrite; a resumed run keeps the
    settings that shaped it (checked against run.json here, and against the checkpoint's own copy when it is
    loaded)."""
    run_file = out / "run.json"
    current = settings(config, plan)
    if config.resume_from:
        return _resume_from(out, Path(config.resume_from), config, current)
    if config.resume:
        found = checkpoints(out)
        kept = [name for name in ("final", "abandoned", "snapshot") if (out / name).exists()] + \
            [p.name for p in out.glob("ckpt-*.pt.damaged")]
        if not found and run_file.is_file() and is_training_run(out) and not kept:
            # stopped before its first checkpoint (killed, or a full disk): --resume starts it over, as the
            # message of that stop says. Only then: a folder keeping anything of value (a final model, branches
            # kept under abandoned/, a snapshot) is never cleared by --resume
            refuse_changes(read_json(run_file, "the run's settings"), current, str(out), "--resume")
            print(f"no checkpoint in {out} yet: its run starts over from step 0", flush=True)
            return OutPlan(clear=True)
        if not found and kept:
            raise UserError(f"nothing to resume in {out}: its main line has no checkpoint (it keeps "
                            f"{', '.join(kept)}); continue a kept branch with --resume-from "
                            f"{out / 'abandoned' / 'after-step-N' / 'ckpt-M.pt'}, or start over with --overwrite")
        if not found:
            raise UserError(f"nothing to resume in {out}: no checkpoint")
        if run_file.is_file():
            refuse_changes(read_json(run_file, "the run's settings"), current, str(out), "--resume")
        return OutPlan(resume=found[-1])
    return OutPlan(clear=_may_replace(out, config))


def _resume_from(out: Path, path: Path, config, current: dict) -> OutPlan:
    """--resume-from: a checkpoint of the run in --out (its main line, or a branch kept under ``abandoned/``)
    continues that run, and the line being left is moved aside; a checkpoint of another run starts a new one in
    --out, which must be free (or --overwrite)."""
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    step = checkpoint_step(path)
    branch = kept_branch(out, path)
    if step is not None and (path.resolve().parent == out.resolve() or branch is not None):
        if (out / "run.json").is_file():
            refuse_changes(read_json(out / "run.json", "the run's settings"), current, str(out), "--resume-from")
        fork = step if branch is None else min(step, branch[1])
        later = [p for p in checkpoints(out) if (checkpoint_step(p) or 0) > fork]
        leaving = later or step < current.get("max_steps", step) or branch is not None
        results = [out / name for name in ("final", "summary.json") if (out / name).exists()] if leaving else []
        if branch is None:
            return OutPlan(resume=path, abandon=later + results)
        return OutPlan(resume=path, abandon=later + results, fork=fork, logs_from=branch[0])
    source_run = path.parent / "run.json"
    if source_run.is_file():
        refuse_changes(read_json(source_run, "the checkpoint's run settings"), current, str(path.parent),
                       "--resume-from")
    return OutPlan(resume=path, clear=_may_replace(out, config))


def kept_branch(out: Path, path: Path) -> tuple[Path, int] | None:
    """(folder, step where it left the main line) when ``path`` is a checkpoint of a branch of this run kept
    under ``out/abandoned/after-step-N[-k]/``; else None."""
    folder = path.resolve().parent
    match = re.fullmatch(r"after-step-(\d+)(?:-\d+)?", folder.name)
    if match is None or folder.parent != (out / "abandoned").resolve():
        return None
    return folder, int(match.group(1))


def _may_replace(out: Path, config) -> bool:
    """Whether a fresh start must first clear --out: never without --overwrite, and never when --out holds
    files that a training run did not write (they are the user's)."""
    if out.is_file():
        raise UserError(f"--out {out} is a file, not a directory")
    entries = [p for p in out.iterdir() if p.name != ".lock"] if out.exists() else []
    if not entries:
        return False
    if not config.overwrite:
        raise UserError(f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it")
    foreign = [p.name for p in entries if not written_by_a_run(p.name)]
    if foreign or not is_training_run(out):
        what = ", ".join(sorted(foreign)[:3]) or "no run.json or checkpoint"
        raise UserError(f"{out} holds files that are not a training run of inheritune ({what}); --overwrite "
                        "replaces only a run: choose another --out")
    return True


def clear_previous_run(out: Path) -> None:
    """Delete what a training run wrote into ``out`` (only that: see ``RUN_FILES``)."""
    for child in out.iterdir():
        if child.name == ".lock" or not written_by_a_run(child.name):
            continue
        shutil.rmtree(child) if child.is_dir() else child.unlink()


def abandon_branch(out: Path, paths: list[Path], step: int, logs_from: Path | None = None) -> Path | None:
    """Move the later checkpoints and results of a line that --resume-from leaves behind into
    ``out/abandoned/after-step-N[-k]/`` (kept, never mixed with the new line), with a copy of its metrics. When
    the line resumed is itself a kept branch (``logs_from``), its logs become the run's again, and the main
    line's are kept aside even when it has no checkpoint past the fork."""
    logs = [out / log for log in ("metrics.jsonl", "attention.jsonl") if (out / log).is_file()]
    if not paths and not (logs_from and logs):
        if logs_from:
            _restore_logs(out, logs_from)
        return None
    root = out / "abandoned"
    target = root / f"after-step-{step}"
    k = 1
    while target.exists():
        k += 1
        target = root / f"after-step-{step}-{k}"
    target.mkdir(parents=True)
    for log in logs:
        shutil.copy2(log, target / log.name)
    for path in paths:
        move_checkpoint(path, target) if checkpoint_step(path) is not None else os.replace(path, target / path.name)
    if logs_from:
        _restore_logs(out, logs_from)
    print(f"resuming an earlier checkpoint: the line left ({', '.join(p.name for p in paths) or 'its logs'}) is "
          f"kept in {target}", flush=True)
    return target


def _restore_logs(out: Path, branch: Path) -> None:
    """The resumed branch's own logs in place of the main line's (the caller truncates them to the step)."""
    for log in ("metrics.jsonl", "attention.jsonl"):
        if (branch / log).is_file():
            shutil.copy2(branch / log, out / log)
        elif (out / log).is_file():
            (out / log).unlink()


def truncate_log(path: Path, step: int) -> None:
    """After a kill, a JSON-lines log (metrics.jsonl, attention.jsonl) holds steps past the checkpoint that the
    resumed run will redo: drop them, so that every step is logged once (unreadable lines go too)."""
    if not path.is_file():
        return
    kept = [r for r in read_log(path) if isinstance(r.get("step"), int) and r["step"] <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(record) + "\n" for record in kept))
    tmp.replace(path)


class MetricsLog:
    """metrics.jsonl (one JSON line per logged step) and, if asked, TensorBoard; only the main process writes.
    A failed write (a full disk) is one line naming the log and the last checkpoint; a line cut short by it is
    dropped when the run resumes (``truncate_log``)."""

    def __init__(self, out: Path, tensorboard: bool, active: bool):
        self.path = out / "metrics.jsonl"
        self.handle = open(self.path, "a") if active else None
        self.writer = _tensorboard(out) if (active and tensorboard) else None

    def _fallback(self) -> str:
        found = checkpoints(self.path.parent)
        return (f"The last good checkpoint is {found[-1]}: free space, then run the same command again (it resumes "
                "from there)" if found else "No checkpoint of this run was written yet: free space, then run the same "
                "command again (train: with --resume, which starts it over)")

    def write(self, record: dict) -> None:
        if self.handle is None:
            return
        line = json.dumps(record) + "\n"
        with writing("the metrics log", self.path, len(line), self._fallback()):
            self.handle.write(line)
            self.handle.flush()
        if self.writer:
            for key, value in record.items():
                if value is not None and key != "step":
                    self.writer.add_scalar(key, value, record["step"])

    def close(self, quiet: bool = False) -> None:
        """Close the log; ``quiet`` (on the way out of an error) never lets a failed flush hide that error."""
        handle, self.handle = self.handle, None
        try:
            if handle is not None:
                with writing("the metrics log", self.path, None, self._fallback()):
                    handle.close()
        except (UserError, OSError):
            if not quiet:
                raise
        finally:
            if self.writer:
                self.writer.close()
                self.writer = None


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter  # optional and heavy: imported only when asked for
    except ImportError:
        print("tensorboard is not installed; logging to metrics.jsonl only", flush=True)
        return None
    return SummaryWriter(str(out / "tensorboard"))


def write_summary(out: Path, summary: dict, history: list[dict]) -> None:
    """summary.json and loss.png, each written whole or not at all (a full disk leaves the previous ones)."""
    fallback = "The run's checkpoints are kept: free space, then run the same command again"
    atomic_write_json(out / "summary.json", {**summary, "history": history}, "the run's summary", fallback)
    if history:
        tmp = out / f".loss.tmp-{os.getpid()}.png"  # matplotlib picks the format from the suffix
        try:
            with writing("the loss plot", out / "loss.png", None, fallback):
                draw_loss({"train": history}, tmp)
                os.replace(tmp, out / "loss.png")
        finally:
            tmp.unlink(missing_ok=True)


def best(history: list[dict]) -> float | None:
    values = [h["val_loss"] for h in history if "val_loss" in h]
    return min(values) if values and math.isfinite(min(values)) else None


def tokenizer_to_ship(tokenizer, data: TokenData):
    """The tokenizer the trained model will ship, read once when training starts (so that a tokenizer replaced
    during the run cannot slip in): the model's own when it is the dataset's, else the dataset's. A dataset made
    with a tokenizer that cannot be read now, or that has changed since, is refused before training: its model
    would otherwise be written without the tokenizer its ids mean. Token data made without a tokenizer
    (``write_token_dataset``) ships none."""
    expected = data.tokenizer.get("sha256")
    if tokenizer is not None and tokenizer_identity(tokenizer)["sha256"] == expected:
        return tokenizer
    if data.tokenizer.get("class") == "none":
        return None
    try:
        found = load_tokenizer(data.tokenizer_path())
    except UserError as exc:
        raise UserError(f"the tokenizer of the dataset {data.path} ({data.tokenizer_path()}) cannot be read ({exc}); "
                        "the trained model would have no tokenizer: restore it, or prepare the dataset again") from None
    if tokenizer_identity(found)["sha256"] != expected:
        raise UserError(f"the tokenizer at {data.tokenizer_path()} is no longer the one that prepared {data.path} "
                        "(its sha256 differs): prepare the dataset again with it, or restore the original")
    return found


def check_finite_state(state: dict, fallback: str) -> None:
    """Refuse to finish a model with a NaN or infinite weight: it would load and produce garbage."""
    bad = [name for name, tensor in state.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        raise UserError(f"the trained weights are not finite ({bad[0]}{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}"
                        f"); the model was not written. {fallback}")


def save_final(model, state: dict, tokenizer, data: TokenData, path: Path, facts: dict) -> None:
    """The trained model as an HF directory with the tokenizer its ids mean (``tokenizer_to_ship``), a model card
    and inheritune.json (how it was made). Weights that are not finite are refused before anything is written."""
    found = checkpoints(path.parent)
    check_finite_state(state, f"The last checkpoint is {found[-1]}" if found else "No checkpoint of this run was kept")
    fresh = AutoModelForCausalLM.from_config(model.config)
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    tied = set(getattr(fresh, "_tied_weights_keys", None) or {})
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"final state does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    fresh.tie_weights()
    inherited = None
    source = Path(str(facts["model"])) / "inheritune.json"
    if source.is_file():
        inherited = json.loads(source.read_text())
        inherited = inherited.get("inherited", inherited)
    base = base_model_of(str(facts["model"]))
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    needed = payload_bytes(state)
    fallback = (f"The run's checkpoints in {path.parent} are kept: free space, then run the same command again "
                "(train: with --resume)")
    try:
        with writing("the trained model", path, needed, fallback):
            fresh.save_pretrained(tmp, safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            (tmp / "inheritune.json").write_text(json.dumps({"trained": facts, "inherited": inherited,
                                                             "base_model": base}, indent=2))
            write_card(tmp, trained_card(facts, inherited if inherited and "layers" in inherited else None, base))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a partial model would only take the space the next try needs
        raise
    replace_dir(tmp, path)  # the old final/ goes only once the new one is in place
