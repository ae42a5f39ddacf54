"""A training run's directory: what may be written into it (never over an input, never mixing two runs), how
a run is resumed (only with the settings that shaped it), its metrics log, summary and final model."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from transformers import AutoModelForCausalLM

from .cards import trained_card, write_card
from .checkpoint import checkpoints
from .config import to_dict
from .data import TokenData
from .errors import UserError, refuse_output_over_input, replace_dir
from .plots import draw_loss
from .tokenizer import load_tokenizer, tokenizer_identity


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
               "kd_temperature")


def prepare_out(out: Path, config, plan: dict) -> tuple[Path | None, bool]:
    """Refuse to mix runs: an out dir with another run needs --resume or --overwrite. Returns (the checkpoint to
    resume from, whether the previous run's files are to be cleared). Nothing is deleted here: the caller
    clears the old run only once everything else has been validated."""
    run_file = out / "run.json"
    if config.resume_from:
        path = Path(config.resume_from)
        if not path.is_file():
            raise UserError(f"checkpoint not found: {path}")
        return path, False
    if config.resume:
        found = checkpoints(out)
        if not found:
            raise UserError(f"nothing to resume in {out}: no checkpoint")
        previous = json.loads(run_file.read_text()) if run_file.is_file() else {}
        current = {**to_dict(config), **plan}
        changed = [f"{key} {previous[key]!r} -> {current[key]!r}" for key in RESUME_KEYS
                   if key in previous and key in current and previous[key] != current[key]]
        if changed:
            raise UserError(f"--resume would change the run in {out}: {'; '.join(changed)}. Resume with the same "
                            "settings, or start over with --overwrite (or another --out)")
        return found[-1], False
    if out.is_file():
        raise UserError(f"--out {out} is a file, not a directory")
    if out.exists() and any(p.name != ".lock" for p in out.iterdir()):
        if not config.overwrite:
            raise UserError(f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it")
        return None, True
    return None, False


def clear_previous_run(out: Path) -> None:
    for child in out.iterdir():
        if child.name != ".lock":
            shutil.rmtree(child) if child.is_dir() else child.unlink()


def truncate_metrics(path: Path, step: int) -> None:
    """After a kill, metrics.jsonl holds steps past the checkpoint that the resumed run will redo: drop them,
    so that every step is logged once."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    tmp.replace(path)


class MetricsLog:
    """metrics.jsonl (one JSON line per logged step) and, if asked, TensorBoard; only the main process writes."""

    def __init__(self, out: Path, tensorboard: bool, active: bool):
        self.handle = open(out / "metrics.jsonl", "a") if active else None
        self.writer = _tensorboard(out) if (active and tensorboard) else None

    def write(self, record: dict) -> None:
        if self.handle is None:
            return
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()
        if self.writer:
            for key, value in record.items():
                if value is not None and key != "step":
                    self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
        if self.writer:
            self.writer.close()


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter  # optional and heavy: imported only when asked for
    except ImportError:
        print("tensorboard is not installed; logging to metrics.jsonl only", flush=True)
        return None
    return SummaryWriter(str(out / "tensorboard"))


def write_summary(out: Path, summary: dict, history: list[dict]) -> None:
    (out / "summary.json").write_text(json.dumps({**summary, "history": history}, indent=2))
    if history:
        draw_loss({"train": history}, out / "loss.png")


def best(history: list[dict]) -> float | None:
    values = [h["val_loss"] for h in history if "val_loss" in h]
    return min(values) if values and math.isfinite(min(values)) else None


def save_final(model, state: dict, tokenizer, data: TokenData, path: Path, facts: dict) -> None:
    """The trained model as an HF directory with the dataset's tokenizer (the one its ids mean), a model card and
    inheritune.json (how it was made)."""

    fresh = AutoModelForCausalLM.from_config(model.config)
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    tied = set(getattr(fresh, "_tied_weights_keys", None) or {})
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"final state does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    fresh.tie_weights()
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    fresh.save_pretrained(tmp, safe_serialization=True)
    if tokenizer is not None and tokenizer_identity(tokenizer)["sha256"] != data.tokenizer.get("sha256"):
        tokenizer = None  # the model came with another tokenizer than the one that made the training data
    if tokenizer is None:
        try:
            tokenizer = load_tokenizer(data.tokenizer_path())
        except UserError:
            tokenizer = None
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    inherited = None
    source = Path(str(facts["model"])) / "inheritune.json"
    if source.is_file():
        inherited = json.loads(source.read_text())
        inherited = inherited.get("inherited", inherited)
    (tmp / "inheritune.json").write_text(json.dumps({"trained": facts, "inherited": inherited}, indent=2))
    write_card(tmp, trained_card(facts, inherited if inherited and "layers" in inherited else None))
    replace_dir(tmp, path)  # the old final/ goes only once the new one is in place
