"""GGUF files as plain Hugging Face models: loaded through transformers (which dequantises them), rebuilt without
the quantisation record so that they can be saved, and written out as safetensors directories."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from inheritune.utils.cards import converted_card, write_card
from inheritune.utils.errors import (
    UserError,
    reading,
    refuse_output_over_input,
    replace_dir,
    staging_name,
    writing,
)
from inheritune.utils.memory import payload_bytes
from inheritune.utils.outputs import CONVERTED, holds_own_kind


def load_gguf(path: str | Path, dtype: torch.dtype = torch.float32, **kwargs):
    """The model in a GGUF file, dequantised into a plain model of its class."""
    path = Path(path)
    return _plain_copy(AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype,
                                                            **kwargs), dtype)


def _plain_copy(model, dtype: torch.dtype):
    """The same weights in a fresh model of the same class, without the GGUF quantisation record.

    ``save_pretrained`` refuses models that carry a quantisation config, so we rebuild from the config.
    """
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = fresh.load_state_dict(model.state_dict(), strict=False)
    missing = [k for k in missing if k not in _tied_keys(fresh)]
    if missing or unexpected:
        raise UserError(f"GGUF weights do not fit {type(fresh).__name__}: missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}")
    fresh.tie_weights()
    fresh.generation_config = model.generation_config
    return fresh


def _tied_keys(model) -> set[str]:
    tied = getattr(model, "_tied_weights_keys", None) or {}
    return set(tied.keys() if isinstance(tied, dict) else tied)


def convert_gguf(gguf_path: str | Path, out_dir: str | Path, overwrite: bool = False, fallback: str = "") -> Path:
    """Write a GGUF causal LM as a plain fp32 safetensors HF directory (config, weights, tokenizer). A full disk is
    one line naming the folder, the free space and what the weights need; nothing half-written is left."""
    gguf_path, out = Path(gguf_path), Path(out_dir)
    if not gguf_path.is_file():
        raise UserError(f"GGUF file not found: {gguf_path}")
    refuse_output_over_input(out, gguf_path)
    # only a model this command converted is ever replaced: a run, a dataset or a user's files are refused
    # even with --overwrite, since replacing the folder would lose them
    if holds_own_kind(out, CONVERTED, "assets convert") and not overwrite:
        raise UserError(f"{out} holds a converted model; pass --overwrite to replace it")
    with reading(f"the GGUF file {gguf_path}"):
        model = load_gguf(gguf_path)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    staging = staging_name(out)
    shutil.rmtree(staging, ignore_errors=True)
    needed = payload_bytes(model.state_dict()) + (16 << 20)  # the tokenizer files (a few MB) and the config
    # writing() outside the cleanup: the partial files are gone when it measures the free space it reports.
    with writing("the converted model", out, needed,
                 fallback or "Nothing half-written was kept: free some space and run the same command again."):
        try:
            model.save_pretrained(staging, safe_serialization=True)
            tokenizer.save_pretrained(staging)
            write_card(staging, converted_card(str(gguf_path), model.config.model_type,
                                               model.config.num_hidden_layers))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    replace_dir(staging, out)
    return out
