"""Byte-level BPE tokenizers trained on a dataset (GPT-2's scheme: bytes as symbols, no unknown token).

GPT-2's own tokenizer, rebuilt from its tiktoken ranks, is in ``assets.tiktoken``.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from inheritune.assets.tiktoken import GPT2_EOS
from inheritune.utils.errors import UserError


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
