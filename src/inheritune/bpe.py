"""Byte-level BPE tokenizers built here: GPT-2's, rebuilt from its ranks, and new ones trained on a dataset.

``gpt2.tiktoken`` lists each token's bytes (base64) with its rank. Byte-level BPE merges are recovered
exactly by running BPE on each token's bytes with only lower-ranked merges allowed: it must end as two
parts, and that pair is the token's merge (GPT-2 ranks merges in the order their results were added).
"""

from __future__ import annotations

import base64
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from .errors import UserError

GPT2_EOS = "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


def _merge_of(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    parts = [bytes([b]) for b in token]
    limit = ranks[token]
    while len(parts) > 2:
        best, best_rank = None, limit
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < best_rank:
                best, best_rank = i, rank
        if best is None:
            break
        parts[best:best + 2] = [parts[best] + parts[best + 1]]
    if len(parts) != 2:
        raise ValueError(f"cannot recover the merge that builds token {token!r}")
    return parts[0], parts[1]


def gpt2_tokenizer_from_tiktoken(data: bytes):
    """A ``GPT2TokenizerFast`` equal to GPT-2's, from the contents of a ``gpt2.tiktoken`` file."""
    ranks = {}
    for line in data.splitlines():
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    to_char = _bytes_to_unicode()

    def as_text(raw: bytes) -> str:
        return "".join(to_char[b] for b in raw)

    vocab = {as_text(token): rank for token, rank in ranks.items()}
    merges = []
    for token, _ in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) > 1:
            left, right = _merge_of(token, ranks)
            merges.append((as_text(left), as_text(right)))
    vocab[GPT2_EOS] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=GPT2_EOS, eos_token=GPT2_EOS,
                                        unk_token=GPT2_EOS, model_max_length=1024)
    return tokenizer


def train_bpe(documents, vocab_size: int, out: Path):
    """A byte-level BPE (GPT-2's scheme: bytes as symbols, no unknown token) trained on ``documents`` with the
    ``tokenizers`` library, saved as an HF tokenizer in ``out`` and returned as loaded from there. Given the
    same documents in the same order, training is deterministic."""
    if vocab_size < 257 + 1:
        raise UserError(f"a byte-level BPE needs a vocabulary of more than 257 (256 bytes + EOS), got {vocab_size}")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[GPT2_EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(documents, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=GPT2_EOS, eos_token=GPT2_EOS,
                                        unk_token=GPT2_EOS, model_max_length=1 << 20)
    tokenizer.save_pretrained(out)
    return AutoTokenizer.from_pretrained(str(out))  # as every later user loads it
