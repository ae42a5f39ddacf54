"""A recipe run's folder: what may be written into it (never an input, never a folder of other files), the
settings that shaped it (run.json: re-entering with any trajectory setting changed is refused) and its record
of finished stages (state.json), kept relative to the folder so that the folder can be moved as a whole."""

from __future__ import annotations

import json
from pathlib import Path

from inheritune.assets.sources import resolve_model_path
from inheritune.data.dataset import TokenData
from inheritune.models.loading import load_config_of, resolve_device
from inheritune.models.scratch import is_scratch, scratch_config
from inheritune.models.weights import SafetensorsSource
from inheritune.training.rundir import read_json
from inheritune.utils.config import flatten, to_dict
from inheritune.utils.errors import UserError, atomic_write_json, refuse_output_over_input, remove_stale_staging


class State:
    """state.json: what each finished stage produced. Model directories inside the run folder are stored relative
    to it, so a moved run folder still finds (and reports) its own models."""

    def __init__(self, path: Path):
        self.path = path
        self.root = path.parent.resolve()
        self.data = read_json(path, "the run's record of finished stages") if path.is_file() else {}

    def get(self, key):
        value = self.data.get(key)
        if isinstance(value, dict) and isinstance(value.get("model_dir"), str):
            value = value | {"model_dir": str(self.root / value["model_dir"])}
        return value

    def put(self, key, value) -> None:
        if isinstance(value, dict) and isinstance(value.get("model_dir"), str):
            path = Path(value["model_dir"]).resolve()
            if path.is_relative_to(self.root):
                value = value | {"model_dir": str(path.relative_to(self.root))}
        self.data[key] = value
        self._write()

    def drop(self, key) -> None:
        if self.data.pop(key, None) is not None:
            self._write()

    def _write(self) -> None:
        atomic_write_json(self.path, self.data, "the run's record of finished stages",
                          "Every stage recorded before this one is kept: free space, then run the same command again")


# Settings that change what a stage trains or how it is measured: a run re-entered with any of them changed
# would mix two experiments, so it is refused. The rest (more rounds, other baselines, a tolerance, tasks,
# progress) only decide which stages run and how they are reported: they are applied, and said.
FIXED_KEYS = ("reference", "reference_from_scratch", "data", "seq_len", "seed", "start", "step", "grow", "steps",
              "budget", "micro_batch_size", "global_batch_tokens", "lr", "min_lr", "warmup_steps", "weight_decay",
              "beta1", "beta2", "grad_clip", "data_order", "dtype", "tf32", "eval_windows", "kd_alpha",
              "kd_temperature", "analyze_n", "analyze_t", "bootstrap", "schedule", "decay_fraction", "bos_windows",
              "select", "heal", "trainable", "lora_rank", "lora_alpha", "lora_targets", "search", "eta",
              "calibration_windows", "calibration_t")


def check_rerun(out: Path, config) -> None:
    previous = out / "run.json"
    if previous.is_file():
        recorded = read_json(previous, "the run's settings")
        if "reference" not in recorded:
            raise UserError(f"{out} holds a training run of 'inheritune train', not a run of the recipe; choose "
                            "another --out")
        # Compared key by key, the train section's keys by their own names (unique within a run's config).
        old = {k.removeprefix("train."): v for k, v in flatten(recorded).items()}
        # runs made before --select and --heal kept the first blocks and healed by cross-entropy
        old["select"] = [old["select"]] if isinstance(old.get("select"), str) else old.get("select", ["first"])
        old.setdefault("heal", ["ce"])
        old.setdefault("trainable", ["all"])  # and trained every weight
        new = {k.removeprefix("train."): v for k, v in flatten(to_dict(config)).items()}
        keys = FIXED_KEYS + (("nproc_per_node",) if not config.train.global_batch_tokens else ())
        if old.get("search") and new.get("search") and not (old.get("reference_from_scratch")
                                                             or new.get("reference_from_scratch")):
            # every training of a search (candidates and baselines) runs warmup-stable-decay whatever --schedule
            # says, and only a reference trained from scratch follows it; the search runs of 2026-12-07 recorded
            # 'cosine' there
            keys = tuple(k for k in keys if k != "schedule")
            old["schedule"] = new["schedule"]  # nothing to apply either
        fixed = [f"{k} {old[k]!r} -> {new[k]!r}" for k in keys if k in old and old[k] != new[k]]
        if fixed:
            raise UserError(f"{out} holds a run with other settings ({'; '.join(fixed)}); finished stages would be "
                            "mixed with new ones. Use another --out, or the same settings to continue")
        applied = [f"{k} {old[k]!r} -> {new[k]!r}" for k in new if k not in keys and k in old and old[k] != new[k]]
        if applied:
            print(f"continuing {out} with changed settings (applied): {'; '.join(applied)}", flush=True)
    elif out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in RUN_ENTRIES)
        if foreign:
            raise UserError(f"{out} holds files that are not a run of inheritune ({', '.join(foreign[:3])}); choose "
                            "another --out")
    atomic_write_json(previous, to_dict(config), "the run's settings")


RUN_ENTRIES = ("run.json", "state.json", "state.tmp", "reference", "analysis", "rounds", "baselines", "compare",
               "report.md", "report.json", "teacher-cache", "children", "val_loss.png")


def open_run_dir(config) -> Path:
    """The run directory, once every input it depends on is known to be usable."""
    if not config.data or not config.out:
        raise UserError("run needs --data and --out")
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory")
    resolve_device(config.train.device)
    data = TokenData(config.data)  # a missing or damaged dataset fails before anything is written
    reference_dir = None
    if config.reference_from_scratch:
        if not is_scratch(config.reference_from_scratch):
            raise UserError(f"reference_from_scratch must be a scratch spec (scratch:...) or a config.json, not "
                            f"{config.reference_from_scratch!r}")
        _check_context(config, scratch_config(config.reference_from_scratch, data.vocab_size, config.train.seq_len))
    else:
        reference_dir, gguf = resolve_model_path(config.reference)
        _check_reference(config, reference_dir, gguf)
    refuse_output_over_input(out, config.data, reference_dir)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out, ["state.json", "run.json", "report.md", "report.json"])  # a killed session's
    check_rerun(out, config)
    return out


def _check_reference(config, path, gguf) -> None:
    """A pretrained reference must load as a config and see at least --seq-len positions: checked before the
    run writes anything."""
    model_config = load_config_of(path, gguf)
    if gguf is None and any((Path(path) / name).is_file() for name in ("model.safetensors",
                                                                       "model.safetensors.index.json")):
        SafetensorsSource(Path(path))  # reads the weights' headers: truncated or garbage weights fail here
    _check_context(config, model_config)


def _check_context(config, model_config) -> None:
    """The reference must see --seq-len positions (training) and --analyze-t (the analyses of the run)."""
    context = getattr(model_config, "max_position_embeddings", None) or getattr(model_config, "n_positions", None)
    if context and config.train.seq_len > context:
        raise UserError(f"seq_len {config.train.seq_len} is longer than the reference's context ({context} "
                        "positions); lower --seq-len")
    if context and config.analyze_t > context:
        raise UserError(f"analyze_t {config.analyze_t} is longer than the reference's context ({context} "
                        "positions); lower --analyze-t")
