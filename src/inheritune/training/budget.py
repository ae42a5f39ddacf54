"""How a run's budget becomes steps (rows per optimizer step over all processes, accumulation, warmup), and
whether compiling the model repays its cost at that budget (``--compile auto``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM

from inheritune.models.loading import load_config_of, parse_dtype, resolve_device
from inheritune.training import distributed as D
from inheritune.training.optim import default_peak_flops, flops_per_token
from inheritune.training.recipe import TrainConfig
from inheritune.utils.errors import UserError


@dataclass(frozen=True)
class BatchPlan:
    """How a run's budget becomes steps: rows per optimizer step over all processes, micro-steps per step."""

    rows_per_step: int
    grad_accum: int
    tokens_per_step: int
    max_steps: int
    warmup: int

    @classmethod
    def of(cls, config: TrainConfig, world: int) -> BatchPlan:
        per_micro = config.seq_len * config.micro_batch_size * world
        if config.global_batch_tokens and config.global_batch_tokens % per_micro:
            raise UserError(f"global_batch_tokens {config.global_batch_tokens} is not a multiple of seq_len x "
                            f"micro_batch_size x processes = {per_micro}")
        rows = config.global_batch_tokens // config.seq_len if config.global_batch_tokens else \
            config.micro_batch_size * world
        tokens = rows * config.seq_len
        max_steps = config.max_steps or math.ceil(config.max_tokens / tokens)
        if max_steps <= 0:
            raise UserError("give a budget: --max-steps or --max-tokens")
        if config.warmup_steps >= max_steps:
            raise UserError(f"warmup_steps ({config.warmup_steps}) must be shorter than the run ({max_steps} steps)")
        warmup = config.warmup_steps if config.warmup_steps >= 0 else max(1, round(0.02 * max_steps))
        return cls(rows, rows // (config.micro_batch_size * world), tokens, max_steps, warmup)

    def facts(self) -> dict:
        return {"max_steps": self.max_steps, "tokens_per_step": self.tokens_per_step, "warmup": self.warmup}


COMPILE_SECONDS = {"cpu": 60.0, "cuda": 30.0}  # what torch.compile of a small LM costs before its first step


def compile_pays(config: TrainConfig, plan: BatchPlan, flops_per_step: float, peak: float,
                 device_type: str) -> tuple[bool, float, float]:
    """(compile?, eager estimate in seconds, compile cost in seconds) under --compile auto's rule: compile when
    the eager run would take at least 10x the compile cost (estimated at 50% of the peak), so that compiling
    costs at most a tenth of the run in the worst case."""
    estimate = plan.max_steps * flops_per_step / (0.5 * peak) if peak else 0.0
    cost = COMPILE_SECONDS.get(device_type, 60.0)
    return estimate >= 10 * cost, estimate, cost


def compile_decision(config: TrainConfig, plan: BatchPlan, flops_per_step: float, peak: float, d: D.Dist) -> bool:
    """--compile auto for one training: ``compile_pays``; short runs, tests and runs that track attention stay
    eager. on / off decide alone."""
    if config.compile != "auto":
        return config.compile == "on"
    if config.track_attention:  # the tracker switches the model to eager attention and back: every switch would
        return False            # invalidate the compiled graph
    compiled, estimate, cost = compile_pays(config, plan, flops_per_step, peak, d.device.type)
    if compiled and d.main:
        print(f"--compile auto: on (eager estimate {estimate:.0f} s >= 10 x {cost:.0f} s of compiling)", flush=True)
    return compiled


def compile_once(config, state, child, steps: int) -> str:
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
            device = torch.device(resolve_device(config.train.device))
            peak = default_peak_flops(device, parse_dtype(config.train.dtype), config.train.tf32) * config.nproc_per_node
            decision, estimate, cost = compile_pays(train_config, plan, flops_per_token(model, train_config.seq_len) *
                                                    plan.tokens_per_step, peak, device.type)
            print(f"--compile auto: {'on' if decision else 'off'} for every child (a cross-entropy child's eager "
                  f"estimate {estimate:.0f} s against 10 x {cost:.0f} s of compiling)", flush=True)
        state.put("compile", "on" if decision else "off")
    return state.get("compile")
