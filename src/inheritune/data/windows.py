"""Token windows: how a flat token split becomes model rows, for training (random or sequential windows, a pure
function of seed and step) and for evaluation (the fixed validation windows every model is scored on)."""

from __future__ import annotations

import numpy as np
import torch

from inheritune.utils.errors import UserError


def window_rows(tokens: np.ndarray, starts: np.ndarray, seq_len: int, bos: int | None = None) -> torch.Tensor:
    """The windows starting at ``starts`` as one int64 tensor [n, seq_len + 1] (inputs and shifted targets): the
    one place where token windows become model rows, for training and evaluation alike. With ``bos`` each row
    is that token followed by seq_len stream tokens (inputs: BOS and seq_len - 1 stream tokens)."""
    if bos is None:
        return torch.from_numpy(np.stack([np.asarray(tokens[s:s + seq_len + 1], dtype=np.int64) for s in starts]))
    rows = np.empty((len(starts), seq_len + 1), dtype=np.int64)
    rows[:, 0] = bos
    for i, s in enumerate(starts):
        rows[i, 1:] = tokens[s:s + seq_len]
    return torch.from_numpy(rows)


def check_ids(rows: torch.Tensor, vocab: int | None, where: str) -> None:
    """Token ids beyond the vocabulary would index past the embeddings (a crash deep in the model): refuse them."""
    if vocab is not None and rows.numel() and int(rows.max()) >= vocab:
        raise UserError(f"token id {int(rows.max())} in {where} does not fit the vocabulary of {vocab}: the dataset "
                        "is damaged or was made for another model; prepare it again")


def _as_batch(tokens: np.ndarray, starts: np.ndarray, seq_len: int, vocab: int | None = None,
              bos: int | None = None):
    rows = window_rows(tokens, starts, seq_len, bos)
    check_ids(rows, vocab, "the training split")
    return rows[:, :-1], rows[:, 1:]


def _check_length(tokens: np.ndarray, seq_len: int) -> None:
    if len(tokens) < seq_len + 1:
        raise UserError(f"split has {len(tokens)} tokens, too few for one window of {seq_len} + 1")


class RandomWindows:
    """Windows drawn uniformly with replacement. Global batch ``step`` is a pure function of (seed, step), and
    each process or micro-step takes a slice of it, so the data is the same for any number of processes or
    accumulation steps, and resuming at any step reproduces it exactly."""

    def __init__(self, tokens: np.ndarray, seq_len: int, global_batch: int, seed: int = 0, vocab: int | None = None,
                 bos: int | None = None):
        _check_length(tokens, seq_len)
        self.tokens, self.seq_len, self.global_batch, self.seed = tokens, seq_len, global_batch, seed
        self.vocab, self.bos = vocab, bos

    def starts(self, step: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, step])
        return rng.integers(0, len(self.tokens) - self.seq_len, size=self.global_batch)

    def batch(self, step: int, offset: int = 0, count: int | None = None):
        """Rows [offset, offset + count) of global batch ``step`` as (inputs, targets)."""
        count = self.global_batch - offset if count is None else count
        return _as_batch(self.tokens, self.starts(step)[offset:offset + count], self.seq_len, self.vocab, self.bos)


class SequentialWindows:
    """Non-overlapping windows in order, without replacement: global batch ``step`` holds windows
    [step * G, (step + 1) * G); ranks and micro-steps take slices of it (so the split is sharded by rank).
    Wraps to the start (a new epoch) after the last full window."""

    def __init__(self, tokens: np.ndarray, seq_len: int, global_batch: int, vocab: int | None = None,
                 bos: int | None = None):
        _check_length(tokens, seq_len)
        self.tokens, self.seq_len, self.global_batch, self.vocab, self.bos = tokens, seq_len, global_batch, vocab, bos
        self.n_windows = (len(tokens) - 1) // seq_len

    def epoch(self, step: int) -> int:
        return (step * self.global_batch) // self.n_windows

    def starts(self, step: int) -> np.ndarray:
        windows = (step * self.global_batch + np.arange(self.global_batch)) % self.n_windows
        return windows * self.seq_len

    def batch(self, step: int, offset: int = 0, count: int | None = None):
        count = self.global_batch - offset if count is None else count
        return _as_batch(self.tokens, self.starts(step)[offset:offset + count], self.seq_len, self.vocab, self.bos)


def fixed_windows(tokens: np.ndarray, seq_len: int, max_windows: int | None = None,
                  stride: int | None = None) -> np.ndarray:
    """Start offsets of the fixed validation windows: every ``stride`` tokens (default: non-overlapping)
    from the beginning of the split, at most ``max_windows`` spread evenly over it. Same tokens and
    arguments always give the same windows, whichever model is evaluated."""
    _check_length(tokens, seq_len)
    stride = stride or seq_len
    starts = np.arange(0, len(tokens) - seq_len, stride, dtype=np.int64)
    if max_windows is not None and len(starts) > max_windows:
        starts = starts[np.linspace(0, len(starts) - 1, max_windows).round().astype(np.int64)]
    return starts
