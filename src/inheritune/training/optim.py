"""The paper's optimisation recipe: AdamW with decay on matrices only, warmup + cosine, KD loss, FLOPs/MFU."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def param_groups(model, weight_decay: float) -> list[dict]:
    """Weight decay on matrices (>= 2 dims: linear weights, embeddings) only; never on norms or biases."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (decay if parameter.dim() >= 2 else no_decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model, lr: float, weight_decay: float, betas: tuple[float, float], device_type: str):
    # Fused AdamW runs the whole update in one kernel per device; CPU has it too since torch 2.4.
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, fused=device_type in ("cuda", "cpu"))


def lr_at(step: int, max_steps: int, lr: float, min_lr: float, warmup: int, schedule: str = "cosine",
          decay_fraction: float = 0.2) -> float:
    """Linear warmup for ``warmup`` steps, then either cosine from ``lr`` down to ``min_lr`` at ``max_steps``
    (the paper's), or warmup-stable-decay (``wsd``, as SmolLM2 and MiniCPM were trained): constant ``lr``, then a
    linear decay to ``min_lr`` over the last ``decay_fraction`` of the steps."""
    if step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "wsd":
        decay_steps = max(1, round(decay_fraction * max_steps))
        start = max(warmup, max_steps - decay_steps)
        if step < start:
            return lr
        return lr - (lr - min_lr) * min(1.0, (step - start + 1) / max(1, max_steps - start))
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                      alpha: float, temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """alpha * CE + (1 - alpha) * T^2 * KL(teacher || student) on temperature-softened distributions, averaged
    over tokens. Returns (loss, ce, kl)."""
    ce = cross_entropy(student_logits, targets)
    if alpha >= 1.0:
        return ce, ce, torch.zeros((), device=ce.device)
    vocab = student_logits.shape[-1]
    keep = targets.reshape(-1) >= 0  # positions with an ignored target (-100) are left out of the KL as of the CE
    student = F.log_softmax(student_logits.float().reshape(-1, vocab)[keep] / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.float().reshape(-1, vocab)[keep] / temperature, dim=-1)
    kl = F.kl_div(student, teacher, log_target=True, reduction="batchmean") * temperature ** 2
    return alpha * ce + (1.0 - alpha) * kl, ce, kl


def flops_per_token(model, seq_len: int) -> float:
    """Training FLOPs per token: 6 N (N = parameters outside the embeddings) + 12 L d T for attention."""
    config = model.config
    embedding = model.get_input_embeddings().weight.numel()
    n = sum(p.numel() for p in model.parameters()) - embedding
    tied = getattr(config, "tie_word_embeddings", False)
    n += embedding if tied else 0  # a tied head still does its matmul
    return 6 * n + 12 * config.num_hidden_layers * config.hidden_size * seq_len


_MEASURED: dict = {}


def measure_matmul_flops(dtype: torch.dtype, n: int = 2048, repeats: int = 4) -> float:
    """FLOP/s of an n x n matmul on this CPU in ``dtype`` (best of a few): the peak that CPU MFU is quoted
    against, measured rather than assumed, since CPUs differ (AVX-512, AMX) far more than GPU datasheets."""
    if dtype not in _MEASURED:
        import time

        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b  # warm-up
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - started)
        _MEASURED[dtype] = 2 * n ** 3 / best
    return _MEASURED[dtype]


# Dense datasheet peaks per device: (bf16/fp16 tensor cores, plain fp32). TF32 tensor cores run at half the
# bf16 rate on these parts.
GPU_PEAKS = {"h200": (989e12, 67e12), "h100": (989e12, 67e12), "a100": (312e12, 19.5e12), "l40": (181e12, 90.5e12),
             "a10": (125e12, 31.2e12), "4090": (165e12, 82.6e12)}


def default_peak_flops(device: torch.device, dtype: torch.dtype, tf32: bool = True) -> float:
    """Peak FLOP/s of ONE device for MFU: the measured matmul peak on CPU, datasheet dense peaks on GPUs (bf16
    tensor cores for bf16; TF32 when float32 matmuls are allowed to use it, else plain fp32). 0 = unknown."""
    if device.type == "cpu":
        return measure_matmul_flops(torch.bfloat16 if dtype == torch.bfloat16 else torch.float32)
    name = torch.cuda.get_device_name(device).lower()
    bf16, fp32 = next((v for k, v in GPU_PEAKS.items() if k in name), (0.0, 0.0))
    if dtype in (torch.bfloat16, torch.float16):
        return bf16
    return bf16 / 2 if tf32 else fp32
