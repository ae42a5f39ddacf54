"""torchrun integration: process group, DDP or FSDP2 wrapping, and full state dicts gathered on rank 0.

A plain single process needs none of it: every function here is a no-op when WORLD_SIZE is unset or 1. The
FSDP, DDP and state-dict modules of torch.distributed are imported where they are first used (about 2.5 s of
start-up that ``--help``, ``analyze``, ``inherit`` and ``evaluate`` never need).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from inheritune.models.loading import resolve_device
from inheritune.utils.errors import UserError


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def setup(device: str) -> Dist:
    """Join the torchrun process group if there is one; pick the device (cuda:LOCAL_RANK or cpu)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = resolve_device(device) == "cuda"
    target = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(target)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(rank, world, local_rank, target)


def teardown(d: Dist) -> None:
    if d.active and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model, d: Dist, strategy: str, blocks) -> torch.nn.Module:
    """DDP (replicated weights, all-reduced grads) or FSDP2 (``fully_shard`` on each block, then the root)."""
    if not d.active:
        return model
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    if strategy == "fsdp":
        for block in blocks:
            fully_shard(block)
        fully_shard(model)
        return model
    return DistributedDataParallel(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None)


def gradient_sync(model, enabled: bool):
    """Skip the gradient all-reduce on non-final micro-steps of gradient accumulation."""
    if not dist.is_initialized():  # a single process: no wrapper, nothing to skip
        return contextlib.nullcontext()
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel):
        return contextlib.nullcontext() if enabled else model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(enabled)
    return contextlib.nullcontext()


@contextmanager
def unsharded(model):
    """FSDP2: gather the root's own sharded parameters (embeddings, final norm, head) for a call that bypasses
    the root's forward, such as the evaluate module's chunked head; for anything else there is nothing to do."""
    if not dist.is_initialized():  # a single process: nothing is sharded
        yield model
        return
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        if not getattr(model, "_inheritune_root_ran", False):
            # FSDP2 initialises lazily on the root's first forward; a call that bypasses the root before any
            # step (the loss before training) would initialise the blocks first, which FSDP then refuses
            with torch.no_grad():
                model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=next(model.parameters()).device))
            model._inheritune_root_ran = True
        model.unshard()
        try:
            yield model
        finally:
            model.reshard()
    else:
        yield model


def unwrap(model):
    return getattr(model, "module", model)


def full_state(model, optimizer=None) -> tuple[dict, dict | None]:
    """Unsharded CPU model (and optimizer) state dicts; complete on rank 0 (others may be empty)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    inner = unwrap(model)
    model_state = get_model_state_dict(inner, options=options)
    optim_state = get_optimizer_state_dict(inner, optimizer, options=options) if optimizer is not None else None
    return model_state, optim_state


def load_full_state(model, optimizer, model_state: dict, optim_state: dict | None) -> None:
    """Load full state dicts (from rank 0's checkpoint, read on every rank) into a possibly sharded model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True)
    inner = unwrap(model)
    set_model_state_dict(inner, model_state, options=options)
    if optim_state is not None:
        set_optimizer_state_dict(inner, optimizer, optim_state, options=options)


def all_sum(values: list[float], d: Dist) -> list[float]:
    if not d.active:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=d.device if d.device.type == "cuda" else "cpu")
    dist.all_reduce(tensor)
    return tensor.tolist()


def barrier(d: Dist) -> None:
    if d.active:
        dist.barrier()


def launch_torchrun(train_config, nproc: int) -> dict:
    """One ``inheritune train`` under torchrun (the caller stays a single process); returns its summary.json.

    torchrun is started in a session of its own, so a Ctrl-C at the terminal reaches this process only; SIGINT
    and SIGTERM are forwarded to torchrun, which passes them to its workers and waits (up to the shutdown
    timeout) while they finish the step and write their checkpoint. An interrupted training comes back as a
    summary with status "interrupted" (exit 128 + signal), never as a failure."""
    out = Path(train_config.out)
    out.mkdir(parents=True, exist_ok=True)
    config_file = out.parent / f"{out.name}.train.yaml"
    config_file.write_text(yaml.safe_dump({k: str(v) if isinstance(v, Path) else v
                                          for k, v in asdict(train_config).items()}))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "--shutdown-timeout", str(TORCHRUN_SHUTDOWN_SECONDS), "-m", "inheritune", "train", "--config",
               str(config_file)]
    started = time.time()
    received = []
    process = subprocess.Popen(command, start_new_session=True)

    def forward(signum, frame):
        received.append(signum)
        if process.poll() is None:
            process.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = process.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    summary_file = out / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() and \
        summary_file.stat().st_mtime >= started else None
    if summary is not None and (code == 0 or summary.get("status") == "interrupted"):
        return summary
    if received or code in (128 + signal.SIGINT, 128 + signal.SIGTERM) or code < 0:
        return {"status": "interrupted", "signal": received[0] if received else (-code if code < 0 else code - 128)}
    raise UserError(f"training under torchrun failed (exit {code}): {' '.join(command)}")


TORCHRUN_SHUTDOWN_SECONDS = 300  # how long torchrun waits for interrupted workers to checkpoint before killing them
