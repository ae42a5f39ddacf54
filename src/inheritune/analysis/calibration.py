"""Blocks chosen by measured loss: the calibration loss of the reference with one block removed (Shortened LLaMA's
one-shot criterion, Kim et al. 2024) and SLEB's iterative elimination (Song et al., ICML 2024).

The blocks are the model's own modules, called with the arguments the model itself gave each of them (position
embeddings, attention masks, caught by a hook in one full pass), so removing a block is exactly what a model built
without it computes. Nothing before a removed block changes: the states entering every block are kept from one
pass, and removing block i costs blocks i+1..L-1 only. One-shot removal of each of L blocks is then L + L(L-1)/2
block passes (about L/2 full passes) and L + 1 heads; SLEB repeats that on the shrinking model until one block is
left (``pass_counts`` gives the formula), and its order of removal gives the kept set for every K at once.

Calibration windows come from the train split, seeded: never the validation windows every comparison is scored on,
so a choice made on them is not graded on its own data. The record says which data, how much, and what it cost.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from inheritune.data.dataset import TokenData
from inheritune.data.windows import check_ids, window_rows
from inheritune.models.architectures import adapter_for
from inheritune.utils.errors import UserError
from inheritune.utils.progress import progress_bar, recorded_seconds

# What SLEB costs sets the default: on SmolLM2-135M (30 blocks, and a 49K-vocabulary head that costs as much as 8
# of them) it is 4,931 block and 465 head passes, about 61 GFLOP per calibration token. 4 windows of 32 tokens took
# 809 s on this project's 2-core CPU while it was shared (about one core for us; an estimated 3-4 minutes on two idle
# cores). One-shot removal alone costs a twelfth of that, so `loss` alone can afford more windows.
DEFAULT_WINDOWS = 4
DEFAULT_SEQ_LEN = 32
HEAD_CHUNK = 512  # positions per head call: the [positions, vocab] logits of a whole batch are never built


def calibration_rows(data: TokenData, windows: int = DEFAULT_WINDOWS, seq_len: int = DEFAULT_SEQ_LEN, seed: int = 0,
                     bos_windows: bool = False) -> torch.Tensor:
    """``windows`` distinct, non-overlapping windows of the train split, chosen with ``seed``, as rows
    [windows, seq_len + 1] (inputs and shifted targets; with ``bos_windows`` each starts with BOS, as
    ``window_rows`` makes them for training and scoring)."""
    if windows < 1 or seq_len < 1:
        raise UserError(f"calibration needs at least one window of at least one token, not {windows} x {seq_len}")
    tokens = data.split("train")
    span = seq_len + 1
    available = len(tokens) // span
    if windows > available:
        raise UserError(f"asked for {windows} calibration windows of {seq_len} tokens, but the train split of "
                        f"{data.path} holds only {available}")
    chosen = np.sort(np.random.default_rng(seed).choice(available, size=windows, replace=False))
    rows = window_rows(tokens, chosen * span, seq_len, data.bos_id() if bos_windows else None)
    check_ids(rows, data.vocab_size, "the calibration windows (train split)")
    return rows


def pass_counts(n_layers: int, sleb: bool) -> dict:
    """Block and head passes over the calibration set that ``measure_removals`` makes: one full pass and the
    one-shot removals, then for SLEB each step on n kept blocks (n = L-1 .. 2) re-runs the n - 1 blocks whose
    input states it needs and removes each of the n in turn (its loss after the step is the candidate's)."""
    blocks, heads = n_layers + n_layers * (n_layers - 1) // 2, n_layers + 1
    if sleb:
        for n in range(2, n_layers):
            blocks += (n - 1) + n * (n - 1) // 2
            heads += n
    return {"block_passes": blocks, "head_passes": heads, "full_passes": round(blocks / n_layers, 2)}


class _Stack:
    """The reference's blocks, callable one by one on one batch of calibration rows, with the arguments the model
    gave each of them, and the loss of the model's own head on any residual-stream state."""

    def __init__(self, model, rows: torch.Tensor, batch_size: int, device: str, bar):
        self.model, self.adapter = model, adapter_for(model.config)
        self.blocks = self.adapter.block_list(model)
        self.bar, self.block_calls, self.head_calls = bar, 0, 0
        self.batches = [rows[i:i + batch_size].to(device) for i in range(0, len(rows), batch_size)]
        self.tokens = sum(batch[:, 1:].numel() for batch in self.batches)
        self.calls: list[list] = []  # per batch, per block: (arguments after the hidden states, keyword arguments)
        self.first_inputs: list[torch.Tensor] = []  # per batch: the state entering block 0

    def capture(self, index: int) -> list[torch.Tensor]:
        """One full pass of batch ``index`` through the model; returns the state entering each block and the last
        block's output (L + 1 states), and keeps every block's arguments for the passes that follow."""
        states, calls = [], []

        def before(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            rest, named = (args[1:], dict(kwargs)) if args else ((), {k: v for k, v in kwargs.items()
                                                                       if k != "hidden_states"})
            states.append(hidden)
            calls.append((rest, named))
            self._count_block()

        def after(module, args, kwargs, output):
            states.append(output[0] if isinstance(output, tuple) else output)

        hooks = [block.register_forward_pre_hook(before, with_kwargs=True) for block in self.blocks]
        hooks.append(self.blocks[-1].register_forward_hook(after, with_kwargs=True))
        try:
            self.model.base_model(input_ids=self.batches[index][:, :-1], use_cache=False)
        finally:
            for hook in hooks:
                hook.remove()
        if len(calls) != len(self.blocks):
            raise UserError(f"{type(self.model).__name__} ran {len(calls)} of its {len(self.blocks)} blocks in one "
                            "pass; its blocks cannot be measured one by one")
        self.calls.append(calls)
        self.first_inputs.append(states[0])
        return states

    def run(self, index: int, blocks: list[int], hidden: torch.Tensor) -> torch.Tensor:
        """``hidden`` through ``blocks`` (reference indices, in order) of batch ``index``."""
        for block in blocks:
            rest, named = self.calls[index][block]
            out = self.blocks[block](hidden, *rest, **named)
            hidden = out[0] if isinstance(out, tuple) else out
            self._count_block()
        return hidden

    def loss_sum(self, index: int, hidden: torch.Tensor) -> float:
        """Sum of next-token losses of the model's own final norm and head (with the family's extra steps)
        reading ``hidden``, in chunks of positions."""
        targets = self.batches[index][:, 1:].reshape(-1)
        flat = hidden.reshape(-1, hidden.shape[-1])
        total = 0.0
        for first in range(0, len(targets), HEAD_CHUNK):
            logits = self.adapter.logits(self.model, flat[first:first + HEAD_CHUNK]).float()
            total += float(F.cross_entropy(logits, targets[first:first + HEAD_CHUNK], reduction="sum").double())
        self.head_calls += 1
        return total

    def _count_block(self) -> None:
        self.block_calls += 1
        self.bar.update(1)


def _removal_sums(stack: _Stack, index: int, kept: list[int], states: list[torch.Tensor]) -> list[float]:
    """Loss sums of batch ``index`` with each of ``kept`` removed in turn, from the states entering each kept
    block: removing kept[p] feeds its input to kept[p + 1:], so only those blocks run again."""
    return [stack.loss_sum(index, stack.run(index, kept[p + 1:], states[p])) for p in range(len(kept))]


def _states(stack: _Stack, index: int, kept: list[int]) -> list[torch.Tensor]:
    """The states entering each of ``kept`` in the model made of those blocks only (all but the last block run)."""
    states = [stack.first_inputs[index]]
    for p in range(len(kept) - 1):
        states.append(stack.run(index, kept[p:p + 1], states[-1]))
    return states


@torch.no_grad()
def measure_removals(model, data: TokenData, windows: int = DEFAULT_WINDOWS, seq_len: int = DEFAULT_SEQ_LEN,
                     seed: int = 0, bos_windows: bool = False, device: str = "cpu", sleb: bool = False,
                     batch_size: int = 8, progress: bool = False) -> dict:
    """The reference's mean next-token loss on calibration windows of ``data`` (train split), the loss with each
    block removed on its own, and with ``sleb`` SLEB's order of removal; with the calibration record (data
    fingerprint, windows, T, seed, BOS windows, split, passes and seconds). Keys: ``reference_loss``,
    ``removal_loss`` (one per block), ``sleb`` (``order``: blocks in the order removed, L - 1 of them;
    ``losses``: the calibration loss after each removal; ``last``: the block left) and ``calibration``."""
    started = time.perf_counter()
    rows = calibration_rows(data, windows, seq_len, seed, bos_windows)
    n_layers = len(adapter_for(model.config).block_list(model))
    if sleb and n_layers < 2:
        raise UserError("SLEB needs a reference with at least two blocks")
    was_training = model.training
    model.eval()  # dropout would make every removal look different by chance
    expected = pass_counts(n_layers, sleb)
    n_batches = math.ceil(len(rows) / batch_size)
    bar = progress_bar(total=expected["block_passes"] * n_batches, desc="calibration", unit="block",
                       disable=not progress)
    try:
        stack = _Stack(model, rows, batch_size, device, bar)
        reference, removal = 0.0, np.zeros(n_layers)
        for index in range(len(stack.batches)):
            states = stack.capture(index)
            reference += stack.loss_sum(index, states[-1])
            removal += _removal_sums(stack, index, list(range(n_layers)), states)
        result = {"reference_loss": reference / stack.tokens, "removal_loss": (removal / stack.tokens).tolist()}
        if sleb:
            result["sleb"] = _sleb(stack, result["removal_loss"])
    finally:
        bar.close()
        model.train(was_training)
    # Every batch runs the same passes: the counts per calibration set are the calls over the number of batches.
    counts = {"block_passes": stack.block_calls // n_batches, "head_passes": stack.head_calls // n_batches}
    counts["full_passes"] = round(counts["block_passes"] / n_layers, 2)
    result["calibration"] = {
        "data": str(data.path), "fingerprint": data.meta.get("fingerprint"), "split": "train", "windows": len(rows),
        "seq_len": seq_len, "tokens": stack.tokens, "seed": seed, "bos_windows": bool(bos_windows),
        "selection": "seeded non-overlapping windows of the train split, never the validation windows that "
                     "comparisons are scored on",
        "reference_loss": result["reference_loss"], "sleb": bool(sleb), **counts,
        "seconds": recorded_seconds(time.perf_counter() - started), "device": str(device),
    }
    return result


def _sleb(stack: _Stack, first_step: list[float]) -> dict:
    """SLEB: remove the block whose removal raises the calibration loss least, measure again, until one block is
    left. The first step's losses are the one-shot removals, already measured."""
    kept, order, losses = list(range(len(stack.blocks))), [], []
    step = first_step
    while True:
        best = min(range(len(kept)), key=lambda p: (step[p], p))  # ties remove the earlier block
        order.append(kept.pop(best))
        losses.append(step[best])
        if len(kept) == 1:
            break
        sums = np.zeros(len(kept))
        for index in range(len(stack.batches)):
            sums += _removal_sums(stack, index, kept, _states(stack, index, kept))
        step = (sums / stack.tokens).tolist()
    return {"order": order, "losses": losses, "last": kept[0]}


def report_fields(measured: dict) -> tuple[list[dict], dict]:
    """What a measurement adds to an analysis report: a row per layer (``removal_loss``, and ``removal_delta``,
    the rise over the reference's loss) and the model entry's ``calibration`` and, where measured, ``sleb``.
    ``select_layers`` reads exactly these keys."""
    reference = measured["reference_loss"]
    rows = [{"removal_loss": loss, "removal_delta": loss - reference} for loss in measured["removal_loss"]]
    fields = {"calibration": measured["calibration"]}
    if "sleb" in measured:
        fields["sleb"] = measured["sleb"]
    return rows, fields


def as_report(measured: dict) -> dict:
    """A measurement in the shape of a report's model entry, for ``select_layers`` when nothing was analysed."""
    rows, fields = report_fields(measured)
    return {"layers": rows, **fields}
