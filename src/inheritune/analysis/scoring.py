"""Scoring a model on fixed windows: per-token losses, window sums, the validation loss with its bootstrap interval,
and paired differences between two models scored on the same windows."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from inheritune.data.dataset import TokenData
from inheritune.data.windows import check_ids, fixed_windows, window_rows
from inheritune.data.tokenizer import tokenizer_identity
from inheritune.models.architectures import adapter_for
from inheritune.models.chunked import final_hidden
from inheritune.utils.errors import UserError
from inheritune.utils.progress import progress_bar


def check_tokenizer_matches(tokenizer, data: TokenData, model_name: str) -> None:
    identity = tokenizer_identity(tokenizer)
    if identity["sha256"] != data.tokenizer["sha256"]:
        raise UserError(f"the tokenizer of {model_name} ({identity['name_or_path']}) differs from the one that "
                        f"prepared {data.path} ({data.tokenizer['name_or_path']})")


def token_losses(model, inputs: torch.Tensor, targets: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """Per-token cross-entropy of the last ``targets.shape[1]`` positions, [B, n]. The head runs on chunks of
    ``chunk`` positions, so the full [B, T, vocab] logits tensor is never built: on CPU, where that tensor
    is hundreds of MB, memory traffic rather than FLOPs dominates the loss."""
    hidden = final_hidden(model, inputs)[:, -targets.shape[1]:]
    head = model.get_output_embeddings()
    adapter = adapter_for(model.config)
    flat_hidden, flat_targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    out = torch.empty(flat_targets.shape, dtype=torch.float32, device=inputs.device)
    for first in range(0, len(flat_targets), chunk):
        logits = adapter.soft_cap(model.config, head(flat_hidden[first:first + chunk]).float())
        out[first:first + chunk] = F.cross_entropy(logits, flat_targets[first:first + chunk], reduction="none")
    return out.reshape(targets.shape)


@torch.no_grad()  # not inference_mode: the trainer calls it between steps, FSDP buffers included
def window_losses(model, tokens: np.ndarray, starts: np.ndarray, seq_len: int, stride: int = 0,
                  batch_size: int = 8, device: str = "cpu", dtype: torch.dtype = torch.float32,
                  progress: bool = False, bos: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(sum of token losses, number of scored tokens) per window. With a stride, windows after the first
    score only their last ``stride`` targets (the rest is context already scored by earlier windows). With
    ``bos`` every window is that token followed by seq_len stream tokens (as --bos-windows trains)."""
    vocab = model.get_input_embeddings().num_embeddings
    sums, counts = np.zeros(len(starts)), np.zeros(len(starts), dtype=np.int64)
    scored = stride or seq_len
    autocast = torch.autocast(device_type=torch.device(device).type, dtype=dtype, enabled=dtype != torch.float32)
    for first in progress_bar(range(0, len(starts), batch_size), desc="eval", unit="batch", disable=not progress):
        batch_starts = starts[first:first + batch_size]
        rows = window_rows(tokens, batch_starts, seq_len, bos).to(device)
        check_ids(rows, vocab, "the validation split")
        # Only the scored positions need logits; the very first window of a strided pass is scored whole.
        need = seq_len if (stride and batch_starts[0] == 0) else scored
        with autocast:
            losses = token_losses(model, rows[:, :-1], rows[:, -need:])
        for i, start in enumerate(batch_starts):
            keep = losses[i] if (start == 0 or not stride) else losses[i, -stride:]
            sums[first + i] = float(keep.double().sum())
            counts[first + i] = keep.numel()
    return sums, counts


def paired_delta(a: dict, b: dict, bootstrap: int = 1000, seed: int = 0) -> dict:
    """Loss of ``a`` minus loss of ``b``, both scored on the same windows, with a paired bootstrap 95% interval:
    each resample draws windows once and scores both models on them, so the interval reflects the noise of
    the difference, not of each loss on its own (the windows' shared difficulty cancels)."""
    sums_a, counts_a = np.asarray(a["window_sums"]), np.asarray(a["window_counts"])
    sums_b, counts_b = np.asarray(b["window_sums"]), np.asarray(b["window_counts"])
    if len(sums_a) != len(sums_b) or not np.array_equal(counts_a, counts_b):
        raise UserError("a paired comparison needs both models scored on the same windows")
    delta = float(sums_a.sum() / counts_a.sum() - sums_b.sum() / counts_b.sum())
    picks = np.random.default_rng(seed).integers(0, len(sums_a), size=(bootstrap, len(sums_a)))
    boot = sums_a[picks].sum(1) / counts_a[picks].sum(1) - sums_b[picks].sum(1) / counts_b[picks].sum(1)
    low, high = np.percentile(boot, [2.5, 97.5])
    return {"delta": delta, "ci95": [float(low), float(high)], "significant": bool(low > 0 or high < 0)}


def summarize(sums: np.ndarray, counts: np.ndarray, bootstrap: int = 1000, seed: int = 0) -> dict:
    """Token-weighted mean loss, perplexity and a bootstrap 95% interval over windows."""
    loss = float(sums.sum() / counts.sum())
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(sums), size=(bootstrap, len(sums)))
    boot = sums[picks].sum(1) / counts[picks].sum(1)
    low, high = np.percentile(boot, [2.5, 97.5]) if bootstrap else (loss, loss)
    return {"loss": loss, "perplexity": math.exp(loss), "loss_ci95": [float(low), float(high)],
            "tokens": int(counts.sum()), "windows": int(len(sums))}


def validation_loss(model, data: TokenData, seq_len: int = 512, stride: int = 0, max_windows: int | None = 64,
                    batch_size: int = 8, device: str = "cpu", dtype: torch.dtype = torch.float32,
                    bootstrap: int = 1000, seed: int = 0, progress: bool = False, keep_windows: bool = True,
                    bos_windows: bool = False) -> dict:
    """Loss of ``model`` on the fixed validation windows of ``data`` (same windows for every model). With
    ``keep_windows`` the result keeps each window's start, loss sum and token count, for paired comparisons."""
    tokens = data.split("val")
    starts = fixed_windows(tokens, seq_len, max_windows or None, stride or None)
    sums, counts = window_losses(model, tokens, starts, seq_len, stride, batch_size, device, dtype, progress,
                                 data.bos_id() if bos_windows else None)
    result = summarize(sums, counts, bootstrap, seed)
    if keep_windows:
        result.update(window_starts=starts.tolist(), window_sums=sums.tolist(), window_counts=counts.tolist())
    return result
