"""Pretrain or continue-train a causal LM on a prepared dataset, with the paper's recipe as defaults.

One loop, top to bottom, in the spirit of nanoGPT: fetch a micro-batch, forward, backward, and every
``grad_accum`` micro-steps clip, step and log; evaluate on the fixed validation windows and checkpoint at
intervals. Under torchrun the same loop runs on every process with DDP or FSDP2 around the model. What the run
directory holds (resume rules, metrics, the final model) is ``rundir``'s business.
"""

from __future__ import annotations

import copy
import math
import signal
import time
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from inheritune.analysis.scoring import check_tokenizer_matches, window_losses
from inheritune.analysis.tracker import AttentionTracker, tracking_rows
from inheritune.assets.sources import resolve_model_path
from inheritune.data.dataset import TokenData
from inheritune.data.windows import RandomWindows, SequentialWindows, fixed_windows
from inheritune.data.tokenizer import load_tokenizer
from inheritune.models import chunked as chunked_head
from inheritune.models.architectures import adapter_for
from inheritune.models.loading import load_config_of, load_model, parse_dtype
from inheritune.models.scratch import is_scratch, scratch_config
from inheritune.training import distributed as D
from inheritune.training import rundir
from inheritune.training.budget import BatchPlan, compile_decision
from inheritune.training.checkpoint import RunLock, checkpoints, load_checkpoint, save_checkpoint
from inheritune.training.optim import (
    cross_entropy,
    default_peak_flops,
    distillation_loss,
    flops_per_token,
    lr_at,
    make_optimizer,
)
from inheritune.training.recipe import TrainConfig
from inheritune.training.stop import StopRequest
from inheritune.training.teacher_cache import TeacherCache, files_fingerprint
from inheritune.training.trainable import apply_trainable, merged, training_flops_per_token
from inheritune.utils.config import to_dict
from inheritune.utils.errors import Interrupted, UserError, atomic_write_json
from inheritune.utils.memory import peak_mb, reset_peak
from inheritune.utils.progress import progress_bar, recorded_seconds


def load_training_model(config: TrainConfig, data: TokenData, dtype: torch.dtype = torch.float32):
    """(model, tokenizer or None): weights from an HF dir/GGUF/name, or fresh from a scratch spec (seeded)."""
    if is_scratch(config.model):
        torch.manual_seed(config.seed)
        model = AutoModelForCausalLM.from_config(scratch_config(config.model, data.vocab_size, config.seq_len,
                                                                data.meta.get("eos_token_id")),
                                                 dtype=dtype)
        return model, None
    adapter_for(load_config_of(*resolve_model_path(config.model)))  # an unsupported family: refused before loading
    model, _ = load_model(config.model, dtype=dtype, attn_implementation="sdpa", with_tokenizer=False)
    try:
        tokenizer = load_tokenizer(config.model)
    except UserError:
        tokenizer = None  # the final model gets the dataset's tokenizer instead
    return model, tokenizer


def _check_fit(model, data: TokenData, config: TrainConfig, tokenizer) -> None:
    """Refuse, before anything is written, a model that cannot train on this data: an unsupported family (the
    evaluations need its adapter), another tokenizer than the dataset's, a vocabulary or context too small."""
    adapter_for(model.config)
    if tokenizer is not None:
        check_tokenizer_matches(tokenizer, data, config.model)
    vocab = model.get_input_embeddings().num_embeddings
    if data.vocab_size > vocab:
        raise UserError(f"the dataset's vocabulary ({data.vocab_size}) does not fit the model's embeddings ({vocab})")
    context = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if context and config.seq_len > context:
        raise UserError(f"seq_len {config.seq_len} is longer than the model's context ({context})")


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


@torch.no_grad()
def evaluate_windows(model, tokens, starts: np.ndarray, config: TrainConfig, d: D.Dist, dtype: torch.dtype,
                     bos: int | None = None) -> float:
    """Mean loss on the fixed validation windows, computed by the evaluate module's per-window loss (one path for
    both): each process scores every world-th window, padded with weightless copies of the first so that every
    rank runs the same number of forward passes (FSDP needs each rank in each forward), and the sums are added."""
    mine = starts[d.rank::d.world]
    per_rank = -(-len(starts) // d.world)
    padded = np.concatenate([mine, np.repeat(starts[:1], per_rank - len(mine))])
    model.eval()
    with D.unsharded(model):
        sums, counts = window_losses(D.unwrap(model), tokens, padded, config.seq_len, 0, config.micro_batch_size,
                                     d.device, dtype, bos=bos)
    model.train()
    total, count = D.all_sum([float(sums[:len(mine)].sum()), float(counts[:len(mine)].sum())], d)
    return total / count


def train(config: TrainConfig, model=None) -> dict:
    """Run training as configured; returns the summary (also written to ``out/summary.json``)."""
    if not config.data or not config.out or not (config.model or model is not None):
        raise UserError("train needs --model, --data and --out")
    with StopRequest() as stop:  # from here on a Ctrl-C is never lost: it stops the run before or after a step
        d = D.setup(config.device)
        try:
            return _train(config, model, d, parse_dtype(config.dtype), stop)
        finally:
            D.teardown(d)


def _train(config: TrainConfig, model, d: D.Dist, amp_dtype: torch.dtype, stop: StopRequest) -> dict:
    data = TokenData(config.data)
    tokenizer = None
    if model is None:
        model, tokenizer = load_training_model(config, data)
    _check_fit(model, data, config, tokenizer)
    tokenizer = rundir.tokenizer_to_ship(tokenizer, data)
    plan = BatchPlan.of(config, d.world)
    # The dataset's fingerprint is a setting of the run: a dataset replaced in place under the same path is
    # refused on resume like a changed --data.
    facts = {**plan.facts(), "data_fingerprint": data.meta.get("fingerprint")}
    out = rundir.check_out(config)
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
    D.barrier(d)
    with RunLock(out) if d.main else nullcontext():
        out_plan = rundir.prepare_out(out, config, facts)
        run = _setup(config, model, data, plan, d, amp_dtype)
        run.settings = rundir.settings(config, facts)
        step, history = _restore(run, out_plan.resume, plan)
        run.tracker = _tracker(config, model, data, out, d, run.bos)
        (stopping,) = D.all_sum([float(stop.requested)], d)
        if stopping:  # interrupted while starting: nothing in --out has been changed yet
            raise Interrupted(int(stop.signal or signal.SIGTERM), "interrupted before training began; nothing was "
                                                                 "changed")
        if d.main:  # everything is validated: only now is the old run replaced or an abandoned branch moved aside
            if out_plan.clear:
                rundir.clear_previous_run(out)
            rundir.abandon_branch(out, out_plan.abandon, step if out_plan.fork is None else out_plan.fork,
                                  out_plan.logs_from)
            if out_plan.resume is not None:
                rundir.truncate_log(out / "metrics.jsonl", step)
                rundir.truncate_log(out / "attention.jsonl", step)
                print(f"resuming from {out_plan.resume} at step {step}", flush=True)
        D.barrier(d)
        if d.main:
            atomic_write_json(out / "run.json", {**to_dict(config), **facts, "grad_accum": plan.grad_accum,
                                                 "world_size": d.world, "trainable_record": run.trainable},
                              "the run's settings")
        log = rundir.MetricsLog(out, config.tensorboard, d.main)
        try:
            status, stopped_by, step = _loop(config, run, plan, d, out, step, history, log, stop)
        except BaseException:
            log.close(quiet=True)  # a failed flush must not hide why the loop stopped
            raise
        log.close()
        return _finish(config, run, plan, d, out, data, tokenizer, status, stopped_by, step, history)


def _setup(config: TrainConfig, model, data: TokenData, plan: BatchPlan, d: D.Dist, amp_dtype: torch.dtype):
    """Everything the loop uses: the wrapped model, optimizer, teacher, data streams and the FLOPs of a token."""
    if d.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = config.tf32
        torch.backends.cudnn.allow_tf32 = config.tf32
    model.to(d.device)
    if config.trainable != "all" and d.world > 1 and config.distributed == "fsdp":
        raise UserError(f"--trainable {config.trainable} runs on one process or under DDP; FSDP is not supported "
                        "with frozen weights yet")
    peft, trainable = apply_trainable(model, config.trainable, config.lora_rank, config.lora_alpha,
                                      config.lora_targets, config.seed)
    wrapped = D.wrap(model, d, config.distributed, _blocks(model))
    teacher = _load_teacher(config, model, d) if config.teacher else None
    train_tokens = data.split("train")
    vocab = model.get_input_embeddings().num_embeddings
    bos = data.bos_id() if config.bos_windows else None
    windows = RandomWindows(train_tokens, config.seq_len, plan.rows_per_step, config.seed, vocab, bos) \
        if config.data_order == "random" else SequentialWindows(train_tokens, config.seq_len, plan.rows_per_step,
                                                                vocab, bos)
    val_tokens = data.split("val")
    # Training FLOPs per token count everything a step computes: the student's forward and backward and, with
    # KD, the teacher's forward (a third of its training cost). MFU divides by the peak of every device.
    flops = training_flops_per_token(model, config.seq_len)  # what frozen weights skip is not counted
    teacher_flops = flops_per_token(teacher, config.seq_len) / 3 if teacher is not None else 0.0
    peak = (config.peak_flops or default_peak_flops(d.device, amp_dtype, config.tf32)) * d.world
    compiled = compile_decision(config, plan, (flops + teacher_flops) * plan.tokens_per_step, peak, d)
    # The chunked head needs the head apart from the model's forward: one process (DDP and FSDP hook the forward)
    chunked = config.chunked_loss and d.world == 1 and chunked_head.supports(model)
    body = model.base_model if chunked else wrapped
    cache = None
    if config.teacher_cache and teacher is not None and chunked:  # the plain path keeps the teacher's logits whole
        cache = TeacherCache(config.teacher_cache, {**to_dict(config), **plan.facts(),
                                                    "teacher_fingerprint": files_fingerprint(config.teacher),
                                                    "device_type": d.device.type,
                                                    "data_fingerprint": data.meta.get("fingerprint")})
    elif config.teacher_cache and teacher is not None and d.main:
        print("--teacher-cache is off for this training: it works on the chunked loss of one process (here: "
              + ("--chunked-loss false" if not config.chunked_loss else f"{d.world} processes" if d.world > 1
                 else "a model the chunked head does not support") + "); each batch pays the teacher", flush=True)
    return SimpleNamespace(
        raw=model, peft=peft, trainable=trainable, model=wrapped, forward=torch.compile(body) if compiled else body,
        teacher=teacher, teacher_cache=cache,
        chunked=chunked, compiled=compiled, head=model.get_output_embeddings(),
        cap=getattr(model.config, "final_logit_softcapping", None),
        optimizer=make_optimizer(wrapped, config.lr, config.weight_decay, (config.beta1, config.beta2), d.device.type),
        autocast=torch.autocast(device_type=d.device.type, dtype=amp_dtype, enabled=amp_dtype != torch.float32),
        amp_dtype=amp_dtype, windows=windows, val_tokens=val_tokens, bos=bos,
        val_starts=fixed_windows(val_tokens, config.seq_len, config.eval_windows or None),
        flops=flops, teacher_flops=teacher_flops, peak=peak)


def _tracker(config: TrainConfig, model, data: TokenData, out: Path, d: D.Dist, bos: int | None):
    """The attention tracker of --track-attention (main process only; not under FSDP, whose shards no single
    process holds whole)."""
    if not config.track_attention or not d.main:
        return None
    if d.world > 1 and config.distributed == "fsdp":
        print("--track-attention is not available under FSDP; use DDP or one process to track", flush=True)
        return None
    adapter_for(model.config)
    rows = tracking_rows(data.split("val"), config.seq_len, config.track_windows, config.seed, bos)
    return AttentionTracker(out, rows, config.track_attention)


def _restore(run, resume_path: Path | None, plan: BatchPlan) -> tuple[int, list[dict]]:
    """(step, history) of the checkpoint to resume from, with model, optimizer and RNG restored; else a start.
    A checkpoint that records its run's settings (all since 0.3) must agree with this run's."""
    run.train_seconds = 0.0  # time spent in training steps (evaluations and checkpoints included), all sessions
    run.track_seconds = 0.0  # of which attention tracking, all sessions
    if resume_path is None:
        return 0, []
    state = load_checkpoint(resume_path)
    if isinstance(state.get("settings"), dict):
        rundir.refuse_changes(state["settings"], run.settings, str(resume_path), "resuming")
    if state.get("step", 0) > plan.max_steps:
        raise UserError(f"checkpoint {resume_path} is at step {state['step']}, past this run's {plan.max_steps} "
                        "steps: resume with the run's own budget")
    run.train_seconds = float(state.get("train_seconds", 0.0))
    run.track_seconds = float(state.get("track_seconds", 0.0))
    try:
        D.load_full_state(run.model, run.optimizer, state["model"], state["optimizer"])
    except (RuntimeError, KeyError, ValueError) as exc:
        raise UserError(f"checkpoint {resume_path} does not fit this model: {str(exc).splitlines()[0]}") from None
    torch.set_rng_state(state["rng"])
    return state["step"], state["history"]


def _checkpoint(run, out: Path, step: int, history: list[dict], config: TrainConfig, d: D.Dist) -> None:
    model_state, optim_state = D.full_state(run.model, run.optimizer)
    if d.main:
        save_checkpoint(out, step, {"model": model_state, "optimizer": optim_state, "step": step, "history": history,
                                    "best_val": rundir.best(history) or math.inf, "rng": torch.get_rng_state(),
                                    "train_seconds": run.train_seconds, "track_seconds": run.track_seconds,
                                    "settings": run.settings},
                        config.keep_checkpoints)
    D.barrier(d)


def _micro_step(run, x, y, config: TrainConfig, sync: bool, scale: float, where: tuple[int, int] = (0, 0)) -> float:
    """Forward and backward of one micro-batch (gradients synchronised only on the last); its loss. The forward
    runs under autocast, the backward outside it (as torch recommends), on both paths."""
    with D.gradient_sync(run.model, sync):
        with run.autocast:
            loss = _chunked_loss(run, x, y, config, where) if run.chunked else _plain_loss(run, x, y, config)
        (loss * scale).backward()
    return float(loss.detach())


def _plain_loss(run, x, y, config: TrainConfig) -> torch.Tensor:
    logits = run.forward(x).logits
    if run.teacher is None:
        return cross_entropy(logits, y)
    with torch.no_grad():
        teacher_logits = run.teacher(x).logits
    return distillation_loss(logits, teacher_logits, y, config.kd_alpha, config.kd_temperature)[0]


def _chunked_loss(run, x, y, config: TrainConfig, where: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """The loss from the final hidden states, its head run in chunks (``chunked`` module); with KD the teacher's
    head too, chunk by chunk. The teacher's hidden width is whatever its head reads (OPT's ``project_out`` maps
    to ``word_embed_proj_dim``, not ``hidden_size``)."""
    hidden = run.forward(input_ids=x).last_hidden_state
    teacher_logits = None
    if run.teacher is not None:
        with torch.no_grad():
            if run.teacher_cache is not None:  # another student may have paid for this batch already
                teacher_hidden = run.teacher_cache.hidden(*where, x.device,
                                                          lambda: chunked_head.final_hidden(run.teacher, x))
            else:
                teacher_hidden = chunked_head.final_hidden(run.teacher, x)
            teacher_hidden = teacher_hidden.reshape(-1, teacher_hidden.shape[-1])
        head, adapter = run.teacher.get_output_embeddings(), adapter_for(run.teacher.config)
        teacher_logits = lambda rows: adapter.soft_cap(run.teacher.config, head(teacher_hidden[rows]))  # noqa: E731
    return chunked_head.head_loss(hidden, run.head, y, run.cap, teacher_logits, config.kd_alpha, config.kd_temperature)


def _loop(config: TrainConfig, run, plan: BatchPlan, d: D.Dist, out: Path, step: int, history: list[dict],
          log: rundir.MetricsLog, stop: StopRequest) -> tuple[str, int, int]:
    """The training loop; returns (status, signal that stopped it or 0, last step)."""
    if step == 0:  # the model before any training: the "before" of every comparison, on the same windows
        before = evaluate_windows(run.model, run.val_tokens, run.val_starts, config, d, run.amp_dtype, run.bos)
        history.append({"step": 0, "val_loss": before})
        log.write({"step": 0, "time": round(time.time(), 4), "tokens": 0, "val_loss": before})
    reset_peak(d.device)  # the summary's peak memory is this training's (session's) alone
    bar = progress_bar(total=plan.max_steps, initial=step, unit="step", desc="train",
                       disable=not (d.main and config.progress))
    run.model.train()
    try:  # the bar ends its line on any exit, so that an error message starts on its own
        end = min(config.stop_after or plan.max_steps, plan.max_steps)  # where this call stops
        while step < end:
            started = time.perf_counter()
            lr = lr_at(step, plan.max_steps, config.lr, config.min_lr, plan.warmup, config.schedule,
                       config.decay_fraction)
            for group in run.optimizer.param_groups:
                group["lr"] = lr
            loss_sum = 0.0
            for micro in range(plan.grad_accum):
                offset = (d.rank * plan.grad_accum + micro) * config.micro_batch_size
                x, y = run.windows.batch(config.data_offset + step, offset, config.micro_batch_size)
                loss_sum += _micro_step(run, x.to(d.device), y.to(d.device), config, micro == plan.grad_accum - 1,
                                        1.0 / plan.grad_accum, (config.data_offset + step, offset))
            (train_loss,) = D.all_sum([loss_sum / plan.grad_accum / d.world], d)
            if not math.isfinite(train_loss):
                _stop_not_finite(out, f"the loss became {train_loss} at step {step + 1}")
            grad_norm = float(torch.nn.utils.clip_grad_norm_(run.model.parameters(), config.grad_clip or math.inf))
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
            # A finite loss can still give a NaN update (an absurd lr, a NaN in the optimizer's state): the weights
            # are checked after every step, before anything is logged or checkpointed from them.
            (broken,) = D.all_sum([0.0 if _weights_finite(run.model) else 1.0], d)
            if broken:
                _stop_not_finite(out, f"the weights became NaN or infinite at step {step + 1} (gradient norm "
                                      f"{grad_norm:.4g})")
            step += 1
            seconds = time.perf_counter() - started
            record = {"step": step, "time": round(time.time(), 4), "tokens": step * plan.tokens_per_step,
                      "loss": train_loss, "lr": lr,
                      "grad_norm": grad_norm, "tokens_per_s": plan.tokens_per_step / seconds,
                      "mfu": (run.flops + run.teacher_flops) * plan.tokens_per_step / seconds / run.peak
                      if run.peak else None}
            if run.tracker is not None and run.tracker.due(step, plan.max_steps):
                began = time.perf_counter()
                run.tracker.track(D.unwrap(run.model), step, step * plan.tokens_per_step)
                run.track_seconds += time.perf_counter() - began
            if config.eval_interval and step % config.eval_interval == 0 or step == end:
                record["val_loss"] = evaluate_windows(run.model, run.val_tokens, run.val_starts, config, d,
                                                      run.amp_dtype, run.bos)
            history.append({k: record[k] for k in ("step", "loss", "val_loss") if k in record})
            if step % config.log_interval == 0 or "val_loss" in record or step == end:
                log.write(record)
                bar.set_postfix(loss=f"{train_loss:.3f}", refresh=False,
                                **({"val": f"{record['val_loss']:.3f}"} if "val_loss" in record else {}))
            bar.update(1)
            run.train_seconds += time.perf_counter() - started
            (stopping,) = D.all_sum([float(stop.requested)], d)
            if stopping or (config.checkpoint_interval and step % config.checkpoint_interval == 0) \
                    or step == end:
                _checkpoint(run, out, step, history, config, d)
            if stopping:
                if d.main:
                    print(f"\nstopped at step {step}; checkpoint written.", flush=True)
                return "interrupted", int(stop.signal or signal.SIGTERM), step
        return ("finished" if step >= plan.max_steps else "paused"), 0, step
    finally:
        bar.close()


def _weights_finite(model) -> bool:
    """Whether every weight is finite, in one reduction (a NaN or inf anywhere makes the sum non-finite; only
    then is each tensor looked at, so that a sum that merely overflows is not taken for a NaN)."""
    params = [p.detach() for p in model.parameters() if p.numel()]
    if not params:
        return True
    with torch.no_grad():
        total = torch.stack([p.float().sum() for p in params]).sum()
        return bool(torch.isfinite(total)) or all(bool(torch.isfinite(p).all()) for p in params)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _stop_not_finite(out: Path, what: str) -> None:
    last = checkpoints(out)
    raise UserError(f"{what}; stopped without saving. Last good checkpoint: {last[-1] if last else 'none'} "
                    "(try a lower --lr, or resume from that checkpoint)")


def _finish(config: TrainConfig, run, plan: BatchPlan, d: D.Dist, out: Path, data: TokenData, tokenizer, status: str,
            stopped_by: int, step: int, history: list[dict]) -> dict:
    """The summary (and, for a finished run, the final model in out/final)."""
    flops = run.flops + run.teacher_flops
    summary = {"status": status, "steps": step, "max_steps": plan.max_steps, "tokens": step * plan.tokens_per_step,
               "final_val_loss": next((h["val_loss"] for h in reversed(history) if "val_loss" in h), None),
               "best_val_loss": rundir.best(history),
               "final_train_loss": history[-1].get("loss") if history else None,
               "parameters": run.trainable["total_parameters"], "flops_per_token": flops,
               "training_flops": flops * step * plan.tokens_per_step,
               "teacher_flops": run.teacher_flops * step * plan.tokens_per_step, "data_offset": config.data_offset,
               "world_size": d.world, "grad_accum": plan.grad_accum, "signal": stopped_by,
               # every session's training time, up to this run's last checkpoint before each interruption
               "train_seconds": round(run.train_seconds, 2), "compiled": run.compiled, "chunked_loss": run.chunked,
               "trainable": run.trainable, "peak_memory_mb": _rounded(peak_mb(d.device)),
               "track_seconds": recorded_seconds(run.track_seconds)}
    if status == "finished" and summary["final_val_loss"] is not None and not math.isfinite(summary["final_val_loss"]):
        _stop_not_finite(out, f"the final val loss is {summary['final_val_loss']}; the model was not written")
    facts = {**to_dict(config), **plan.facts(), "steps": step, "tokens": summary["tokens"],
             "training_flops": summary["training_flops"], "final_val_loss": summary["final_val_loss"],
             "trainable_record": run.trainable, "tokenizer": data.tokenizer.get("name_or_path")}
    if status == "paused":  # --stop-after: the model at this step, for scoring; training continues later
        snapshot = copy.deepcopy(run.peft).merge_and_unload() if run.peft is not None else run.raw
        model_state, _ = D.full_state(snapshot if run.peft is not None else run.model)
        if d.main:
            rundir.save_final(snapshot, model_state, tokenizer, data, out / "snapshot", facts)
        summary["snapshot_dir"] = str(out / "snapshot")
    if status == "finished":
        final = merged(run.raw, run.peft)  # LoRA's adapters folded into their layers (in place): a plain HF model
        model_state, _ = D.full_state(run.model)
        if d.main:
            rundir.save_final(final, model_state, tokenizer, data, out / "final", facts)
            if summary["final_val_loss"] is not None:
                print(f"final val loss {summary['final_val_loss']:.4f} after {step} steps "
                      f"({summary['tokens']:,} tokens); model in {out / 'final'}", flush=True)
    if d.main:
        rundir.write_summary(out, summary, history)
    return {**summary, "history": history}
