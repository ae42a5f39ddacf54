"""Pretrain or continue-train a causal LM on a prepared dataset, with the paper's recipe as defaults.

One loop, top to bottom, in the spirit of nanoGPT: fetch a micro-batch, forward, backward, and every
``grad_accum`` micro-steps clip, step and log; evaluate on the fixed validation windows and checkpoint at
intervals. Under torchrun the same loop runs on every process with DDP or FSDP2 around the model.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import distributed as D
from .architectures import adapter_for
from .cards import trained_card, write_card
from .checkpoint import RunLock, checkpoints, load_checkpoint, save_checkpoint
from .config import option, to_dict
from .data import RandomWindows, SequentialWindows, TokenData, fixed_windows
from .errors import UserError, refuse_output_over_input
from .models import load_model, parse_dtype
from .optim import cross_entropy, default_peak_flops, distillation_loss, flops_per_token, lr_at, make_optimizer
from .plots import draw_loss
from .progress import progress_bar
from .scratch import is_scratch, scratch_config
from .tokenizer import load_tokenizer, tokenizer_identity


@dataclass
class TrainConfig:
    """Training run. Defaults follow the paper's recipe (PAPER.md §2) scaled to a short run."""

    model: str = option("", help="HF model dir (e.g. an inherited child), .gguf, built-in name, or a scratch spec "
                                 "(scratch:gpt2-medium, scratch:llama:layers=4,hidden=64,heads=4, config.json)")
    data: str = option("", help="prepared dataset directory")
    out: str = option("", help="run directory: checkpoints, metrics.jsonl, final/ model, loss.png")
    max_steps: int = option(0, help="optimizer steps (or give max_tokens)")
    max_tokens: int = option(0, help="token budget; steps = ceil(max_tokens / global batch tokens)")
    seq_len: int = option(256, help="tokens per training window")
    micro_batch_size: int = option(8, help="windows per forward pass on each process")
    global_batch_tokens: int = option(0, help="tokens per optimizer step over all processes; 0 = one micro-batch "
                                             "per process (no accumulation)")
    lr: float = option(3e-4, help="peak learning rate (paper: 3e-4 for GPT-2 Medium)")
    min_lr: float = option(1e-5, help="cosine floor")
    warmup_steps: int = option(-1, help="linear warmup steps; -1 = 2%% of the steps, as the paper's 2K of 100K")
    weight_decay: float = option(0.1, help="AdamW decay on matrices only (not norms, biases)")
    beta1: float = option(0.9, help="AdamW beta1")
    beta2: float = option(0.95, help="AdamW beta2")
    grad_clip: float = option(1.0, help="gradient-norm clip; 0 = off")
    data_order: str = option("random", help="random (windows with replacement) or sequential (no replacement)")
    seed: int = option(1337, help="seed of data order and of fresh weights")
    data_offset: int = option(0, help="start the data stream at this step (a second training stage that must not "
                                      "replay the first one's batches, e.g. the stacked stage of stacking)")
    dtype: str = option("float32", help="float32 or bfloat16 (autocast; weights and optimizer stay fp32); float16 "
                                        "is refused (it needs loss scaling; use bfloat16)")
    tf32: bool = option(True, help="on CUDA, let float32 matmuls use TF32 tensor cores (as nanoGPT); MFU is then "
                                   "quoted against the TF32 peak, else against the plain fp32 peak")
    compile: bool = option(False, help="torch.compile the model")
    device: str = option("auto", help="auto, cpu or cuda")
    distributed: str = option("ddp", help="under torchrun: ddp or fsdp (FSDP2 fully_shard per block)")
    eval_interval: int = option(50, help="evaluate every this many steps (and at the end); 0 = only at the end")
    eval_windows: int = option(32, help="fixed validation windows (same ones for every model on this dataset)")
    checkpoint_interval: int = option(50, help="checkpoint every this many steps (and at the end)")
    keep_checkpoints: int = option(2, help="how many checkpoints to keep")
    log_interval: int = option(1, help="write metrics every this many steps")
    peak_flops: float = option(0.0, help="peak FLOP/s for MFU; 0 = measured CPU peak / GPU datasheet")
    teacher: str = option("", help="teacher model for knowledge distillation (empty = no KD)")
    kd_alpha: float = option(0.6, help="KD: loss = alpha * CE + (1 - alpha) * KL (paper: 0.6)")
    kd_temperature: float = option(1.0, help="KD temperature (paper: 1)")
    resume: bool = option(False, help="continue the run in --out from its last checkpoint")
    resume_from: str = option("", help="continue from this checkpoint file")
    overwrite: bool = option(False, help="replace a different run in --out")
    tensorboard: bool = option(False, help="also log to TensorBoard (needs the tensorboard package)")
    progress: bool = option(True, help="show a progress bar")

    def __post_init__(self):
        numbers = {"lr": self.lr, "min_lr": self.min_lr, "weight_decay": self.weight_decay, "grad_clip": self.grad_clip,
                   "peak_flops": self.peak_flops}
        for name, value in numbers.items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise UserError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.lr == 0:
            raise UserError("lr must be > 0")
        if self.min_lr > self.lr:
            raise UserError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        for name, value in (("beta1", self.beta1), ("beta2", self.beta2)):
            if not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
                raise UserError(f"{name} must be in [0, 1), got {value!r}")
        for name in ("max_steps", "max_tokens", "global_batch_tokens", "eval_windows", "data_offset", "eval_interval",
                     "checkpoint_interval"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.warmup_steps < -1:
            raise UserError(f"warmup_steps must be >= 0 (or -1 for 2% of the steps), got {self.warmup_steps}")
        if self.max_steps and self.warmup_steps >= self.max_steps:
            raise UserError(f"warmup_steps ({self.warmup_steps}) must be shorter than the run ({self.max_steps} steps)")
        if self.log_interval < 1 or self.keep_checkpoints < 1:
            raise UserError("log_interval and keep_checkpoints must be >= 1")
        if self.dtype in ("float16", "fp16", "half"):
            raise UserError("float16 training needs loss scaling, which inheritune does not do; use --dtype bfloat16")
        if self.dtype not in ("float32", "fp32", "bfloat16", "bf16"):
            raise UserError(f"dtype must be float32 or bfloat16, not {self.dtype!r}")
        if self.data_order not in ("random", "sequential"):
            raise UserError(f"data_order must be random or sequential, not {self.data_order!r}")
        if self.distributed not in ("ddp", "fsdp"):
            raise UserError(f"distributed must be ddp or fsdp, not {self.distributed!r}")
        if not 0.0 <= self.kd_alpha <= 1.0 or self.kd_temperature <= 0:
            raise UserError("kd_alpha must be in [0, 1] and kd_temperature > 0")
        if self.seq_len < 2 or self.micro_batch_size < 1:
            raise UserError("seq_len must be >= 2 and micro_batch_size >= 1")


def load_training_model(config: TrainConfig, data: TokenData, dtype: torch.dtype = torch.float32):
    """(model, tokenizer or None): weights from an HF dir/GGUF/name, or fresh from a scratch spec (seeded)."""
    from transformers import AutoModelForCausalLM

    if is_scratch(config.model):
        torch.manual_seed(config.seed)
        model = AutoModelForCausalLM.from_config(scratch_config(config.model, data.vocab_size, config.seq_len,
                                                                data.meta.get("eos_token_id")),
                                                 dtype=dtype)
        return model, None
    model, _ = load_model(config.model, dtype=dtype, attn_implementation="sdpa", with_tokenizer=False)
    try:
        tokenizer = load_tokenizer(config.model)
    except UserError:
        tokenizer = None  # the final model gets the dataset's tokenizer instead
    return model, tokenizer


def _check_fit(model, data: TokenData, config: TrainConfig) -> None:
    vocab = model.get_input_embeddings().num_embeddings
    if data.vocab_size > vocab:
        raise UserError(f"the dataset's vocabulary ({data.vocab_size}) does not fit the model's embeddings ({vocab})")
    context = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if context and config.seq_len > context:
        raise UserError(f"seq_len {config.seq_len} is longer than the model's context ({context})")


# Settings that shape a run's trajectory: resuming with any of them changed would silently mix two runs.
RESUME_KEYS = ("model", "data", "seq_len", "data_order", "seed", "data_offset", "max_steps", "tokens_per_step",
               "lr", "min_lr", "warmup", "weight_decay", "beta1", "beta2", "grad_clip", "dtype", "teacher", "kd_alpha",
               "kd_temperature")


def _prepare_out(out: Path, config: TrainConfig, plan: dict) -> tuple[Path | None, bool]:
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


def _clear_previous_run(out: Path) -> None:
    for child in out.iterdir():
        if child.name != ".lock":
            shutil.rmtree(child) if child.is_dir() else child.unlink()


def _truncate_metrics(path: Path, step: int) -> None:
    """After a kill, metrics.jsonl holds steps past the checkpoint that the resumed run will redo: drop them,
    so that every step is logged once."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    tmp.replace(path)


class _StopRequest:
    """SIGINT/SIGTERM set a flag; the loop checkpoints at the end of the current step and exits cleanly."""

    def __init__(self):
        self.requested = False
        self.signal = 0
        self.previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True
        self.signal = signum

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


@torch.no_grad()
def evaluate_windows(model, tokens, starts, config: TrainConfig, d: D.Dist, autocast) -> float:
    """Mean loss on the fixed validation windows, each process taking every world-th window."""
    model.eval()
    total, count = 0.0, 0
    mine = starts[d.rank::d.world]
    for first in range(0, max(len(mine), 1), config.micro_batch_size):
        chunk = mine[first:first + config.micro_batch_size]
        if len(chunk) == 0:  # FSDP needs every rank in every forward: run a dummy window
            chunk, weight = starts[:1], 0.0
        else:
            weight = 1.0
        rows = torch.from_numpy(np.stack([np.asarray(tokens[s:s + config.seq_len + 1], dtype=np.int64)
                                          for s in chunk])).to(d.device)
        with autocast:
            logits = model(rows[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), rows[:, 1:], reduction="sum")
        total += weight * float(loss)
        count += int(weight) * rows[:, 1:].numel()
    total, count = D.all_sum([total, float(count)], d)
    model.train()
    return total / count


def train(config: TrainConfig, model=None) -> dict:
    """Run training as configured; returns the summary (also written to ``out/summary.json``)."""
    if not config.data or not config.out or not (config.model or model is not None):
        raise UserError("train needs --model, --data and --out")
    d = D.setup(config.device)
    try:
        return _train(config, model, d, parse_dtype(config.dtype))
    finally:
        D.teardown(d)


def _train(config: TrainConfig, model, d: D.Dist, amp_dtype: torch.dtype) -> dict:
    # ---- data, model, batch arithmetic ---------------------------------------------------------------
    data = TokenData(config.data)
    tokenizer = None
    if model is None:
        model, tokenizer = load_training_model(config, data)
    _check_fit(model, data, config)
    rows_per_step = config.global_batch_tokens // config.seq_len if config.global_batch_tokens else \
        config.micro_batch_size * d.world
    if config.global_batch_tokens and (config.global_batch_tokens % (config.seq_len * config.micro_batch_size * d.world)):
        raise UserError(f"global_batch_tokens {config.global_batch_tokens} is not a multiple of seq_len x "
                        f"micro_batch_size x processes = {config.seq_len * config.micro_batch_size * d.world}")
    grad_accum = rows_per_step // (config.micro_batch_size * d.world)
    tokens_per_step = rows_per_step * config.seq_len
    max_steps = config.max_steps or math.ceil(config.max_tokens / tokens_per_step)
    if max_steps <= 0:
        raise UserError("give a budget: --max-steps or --max-tokens")
    warmup = config.warmup_steps if config.warmup_steps >= 0 else max(1, round(0.02 * max_steps))
    if config.warmup_steps >= max_steps:
        raise UserError(f"warmup_steps ({config.warmup_steps}) must be shorter than the run ({max_steps} steps)")
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory")
    refuse_output_over_input(out, config.data, config.model if not config.model.startswith("scratch:") else None,
                             config.teacher or None)
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
    D.barrier(d)

    plan = {"max_steps": max_steps, "tokens_per_step": tokens_per_step, "warmup": warmup}
    lock = RunLock(out) if d.main else None
    if lock:
        lock.__enter__()
    try:
        resume_path, clear_previous = _prepare_out(out, config, plan)
        if d.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = config.tf32
            torch.backends.cudnn.allow_tf32 = config.tf32
        model.to(d.device)
        raw_model = model
        model = D.wrap(model, d, config.distributed, _blocks(raw_model))
        optimizer = make_optimizer(model, config.lr, config.weight_decay, (config.beta1, config.beta2), d.device.type)
        forward = torch.compile(model) if config.compile else model  # state dicts and hooks stay on `model`
        teacher = _load_teacher(config, raw_model, d) if config.teacher else None
        autocast = torch.autocast(device_type=d.device.type, dtype=amp_dtype, enabled=amp_dtype != torch.float32)

        train_tokens, val_tokens = data.split("train"), data.split("val")
        windows = RandomWindows(train_tokens, config.seq_len, rows_per_step, config.seed) \
            if config.data_order == "random" else SequentialWindows(train_tokens, config.seq_len, rows_per_step)
        val_starts = fixed_windows(val_tokens, config.seq_len, config.eval_windows or None)
        # Training FLOPs per token count everything the step computes: the student's forward and backward
        # and, with KD, the teacher's forward (a third of its training cost).
        flops = flops_per_token(raw_model, config.seq_len)
        teacher_flops = flops_per_token(teacher, config.seq_len) / 3 if teacher is not None else 0.0
        # MFU: the step's FLOPs over the peak of every device that ran it.
        peak = (config.peak_flops or default_peak_flops(d.device, amp_dtype, config.tf32)) * d.world

        # ---- resume ---------------------------------------------------------------------------------
        step, best_val, history = 0, math.inf, []
        if resume_path is not None:
            state = load_checkpoint(resume_path)
            try:
                D.load_full_state(model, optimizer, state["model"], state["optimizer"])
            except (RuntimeError, KeyError, ValueError) as exc:
                raise UserError(f"checkpoint {resume_path} does not fit this model: {str(exc).splitlines()[0]}") \
                    from None
            step, best_val, history = state["step"], state["best_val"], state["history"]
            torch.set_rng_state(state["rng"])
            if d.main:
                _truncate_metrics(out / "metrics.jsonl", step)
                print(f"resuming from {resume_path} at step {step}", flush=True)
        if clear_previous and d.main:  # everything is validated: only now is the old run replaced
            _clear_previous_run(out)
        D.barrier(d)
        if d.main:
            (out / "run.json").write_text(json.dumps({**to_dict(config), **plan, "grad_accum": grad_accum,
                                                      "world_size": d.world}, indent=2))
        log = open(out / "metrics.jsonl", "a") if d.main else None
        writer = _tensorboard(out, config) if d.main else None

        def checkpoint(at_step: int) -> None:
            model_state, optim_state = D.full_state(model, optimizer)
            if d.main:
                save_checkpoint(out, at_step, {"model": model_state, "optimizer": optim_state, "step": at_step,
                                               "best_val": best_val, "history": history,
                                               "rng": torch.get_rng_state()}, config.keep_checkpoints)
            D.barrier(d)

        # ---- the loop -------------------------------------------------------------------------------
        model.train()
        bar = progress_bar(total=max_steps, initial=step, unit="step", desc="train", disable=not (d.main and config.progress))
        status, stopped_by = "finished", 0
        with _StopRequest() as stop:
            while step < max_steps:
                started = time.perf_counter()
                lr = lr_at(step, max_steps, config.lr, config.min_lr, warmup)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss_sum = 0.0
                for micro in range(grad_accum):
                    offset = (d.rank * grad_accum + micro) * config.micro_batch_size
                    x, y = windows.batch(config.data_offset + step, offset, config.micro_batch_size)
                    x, y = x.to(d.device), y.to(d.device)
                    with D.gradient_sync(model, micro == grad_accum - 1), autocast:
                        logits = forward(x).logits
                        if teacher is not None:
                            with torch.no_grad():
                                teacher_logits = teacher(x).logits
                            loss = distillation_loss(logits, teacher_logits, y, config.kd_alpha, config.kd_temperature)[0]
                        else:
                            loss = cross_entropy(logits, y)
                    (loss / grad_accum).backward()
                    loss_sum += float(loss.detach())
                (train_loss,) = D.all_sum([loss_sum / grad_accum], d)
                train_loss /= d.world
                if not math.isfinite(train_loss):
                    last = checkpoints(out)
                    raise UserError(f"the loss became {train_loss} at step {step + 1}; stopped without saving. Last "
                                    f"good checkpoint: {last[-1] if last else 'none'} (try a lower --lr)")
                grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip or math.inf))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                seconds = time.perf_counter() - started
                record = {"step": step, "tokens": step * tokens_per_step, "loss": train_loss, "lr": lr,
                          "grad_norm": grad_norm, "tokens_per_s": tokens_per_step / seconds,
                          "mfu": (flops + teacher_flops) * tokens_per_step / seconds / peak if peak else None}
                if config.eval_interval and step % config.eval_interval == 0 or step == max_steps:
                    record["val_loss"] = evaluate_windows(forward, val_tokens, val_starts, config, d, autocast)
                    best_val = min(best_val, record["val_loss"])
                history.append({k: record[k] for k in ("step", "loss") if k in record} |
                               ({"val_loss": record["val_loss"]} if "val_loss" in record else {}))
                if d.main and (step % config.log_interval == 0 or "val_loss" in record or step == max_steps):
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    if writer:
                        for key, value in record.items():
                            if value is not None and key != "step":
                                writer.add_scalar(key, value, step)
                    bar.set_postfix(loss=f"{train_loss:.3f}", refresh=False,
                                    **({"val": f"{record['val_loss']:.3f}"} if "val_loss" in record else {}))
                bar.update(1)
                _test_kill_hook(step)
                (stopping,) = D.all_sum([float(stop.requested)], d)
                if stopping or (config.checkpoint_interval and step % config.checkpoint_interval == 0) \
                        or step == max_steps:
                    checkpoint(step)
                if stopping:
                    status = "interrupted"
                    stopped_by = stop.signal or signal.SIGTERM
                    if d.main:
                        print(f"\nstopped at step {step}; checkpoint written.", flush=True)
                    break
        bar.close()

        # ---- the end --------------------------------------------------------------------------------
        summary = {"status": status, "steps": step, "max_steps": max_steps, "tokens": step * tokens_per_step,
                   "final_val_loss": next((h["val_loss"] for h in reversed(history) if "val_loss" in h), None),
                   "best_val_loss": best_val if math.isfinite(best_val) else None,
                   "final_train_loss": history[-1]["loss"] if history else None,
                   "parameters": sum(p.numel() for p in raw_model.parameters()),
                   "flops_per_token": flops + teacher_flops,
                   "training_flops": (flops + teacher_flops) * step * tokens_per_step,
                   "teacher_flops": teacher_flops * step * tokens_per_step, "data_offset": config.data_offset,
                   "world_size": d.world, "grad_accum": grad_accum, "signal": int(stopped_by)}
        if status == "finished":
            model_state, _ = D.full_state(model)
            if d.main:
                facts = {**to_dict(config), **plan, "steps": step, "tokens": summary["tokens"],
                         "training_flops": summary["training_flops"], "final_val_loss": summary["final_val_loss"],
                         "tokenizer": data.tokenizer.get("name_or_path")}
                _save_final(raw_model, model_state, tokenizer, data, out / "final", facts)
        if d.main:
            if status == "finished" and summary["final_val_loss"] is not None:
                print(f"final val loss {summary['final_val_loss']:.4f} after {step} steps "
                      f"({summary['tokens']:,} tokens); model in {out / 'final'}", flush=True)
            summary["history"] = history
            (out / "summary.json").write_text(json.dumps(summary, indent=2))
            _plot_loss(history, out / "loss.png")
            log.close()
            if writer:
                writer.close()
        return summary
    finally:
        if lock:
            lock.__exit__()


def _load_teacher(config: TrainConfig, student, d: D.Dist):
    """The KD teacher, frozen; its vocabulary must be the student's (the KL compares the two distributions)."""
    teacher, _ = load_model(config.teacher, device=str(d.device), with_tokenizer=False)
    teacher.requires_grad_(False)
    ours, theirs = student.get_output_embeddings().out_features, teacher.get_output_embeddings().out_features
    if ours != theirs:
        raise UserError(f"the teacher {config.teacher} predicts {theirs} tokens, the student {ours}: KD needs the "
                        "same vocabulary (and tokenizer)")
    return teacher


def _blocks(model):
    try:
        return adapter_for(model.config).block_list(model)
    except UserError:
        return []


def _save_final(model, state: dict, tokenizer, data: TokenData, path: Path, facts: dict) -> None:
    """The trained model as an HF directory with the dataset's tokenizer (the one its ids mean), a model card and
    inheritune.json (how it was made)."""
    from transformers import AutoModelForCausalLM

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
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def _plot_loss(history: list[dict], path: Path) -> None:
    if history:
        draw_loss({"train": history}, path)


def _tensorboard(out: Path, config: TrainConfig):
    if not config.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("tensorboard is not installed; logging to metrics.jsonl only", flush=True)
        return None
    return SummaryWriter(str(out / "tensorboard"))


def _test_kill_hook(step: int) -> None:
    """Tests of crash recovery set INHERITUNE_TEST_SIGNAL_AT=STEP:KILL (or :TERM) to have the process signal
    itself right after that step: a real SIGKILL leaves no chance to clean up, SIGTERM goes to the handler."""
    target = os.environ.get("INHERITUNE_TEST_SIGNAL_AT")
    if target and int(target.split(":")[0]) == step:
        os.kill(os.getpid(), getattr(signal, "SIG" + target.split(":")[1]))
