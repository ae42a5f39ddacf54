"""Tokenizers named by the user (built-in, local directory, GGUF file, hub name) and an identity fingerprint."""

from __future__ import annotations

import hashlib
from pathlib import Path

from transformers import AutoTokenizer

from inheritune.assets.sources import check_hub_reachable, hub_error, resolve_model_path
from inheritune.utils.errors import UserError


def load_tokenizer(name_or_path: str | Path, trust_remote_code: bool = False):
    """A fast tokenizer from a built-in asset name (``gpt2``, ``smollm2``), an HF dir, a GGUF file or a hub name."""
    path, gguf = resolve_model_path(name_or_path, tokenizer_only=True)
    if not Path(path).exists():
        check_hub_reachable(str(name_or_path))
    try:
        if gguf is not None:
            tokenizer = AutoTokenizer.from_pretrained(str(path), gguf_file=gguf)
        else:
            tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise hub_error(str(name_or_path), exc) from None
    except (ValueError, KeyError) as exc:
        raise UserError(f"cannot load a tokenizer from {name_or_path}: {str(exc).splitlines()[0]}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(f"the tokenizer of {name_or_path} has no fast (Rust) version; inheritune needs one")
    return tokenizer


def tokenizer_identity(tokenizer) -> dict:
    """What makes two tokenizers interchangeable: vocab size, special tokens and a hash of the whole Rust
    tokenizer (normaliser, pre-tokeniser, model, added tokens)."""
    digest = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()
    return {
        "name_or_path": str(tokenizer.name_or_path),
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "eos_token": tokenizer.eos_token,
        "eos_token_id": tokenizer.eos_token_id,
        "sha256": digest,
    }
