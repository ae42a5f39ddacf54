"""GPT-2's tokenizer rebuilt from its tiktoken ranks.

``gpt2.tiktoken`` lists each token's bytes (base64) with its rank. Byte-level BPE merges are recovered
exactly by running BPE on each token's bytes with only lower-ranked merges allowed: it must end as two
parts, and that pair is the token's merge (GPT-2 ranks merges in the order their results were added)."""

from __future__ import annotations

import base64

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

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
