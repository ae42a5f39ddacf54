"""Loading any causal LM: a local HF directory, a GGUF file (dequantised), a built-in asset or a hub name."""

from __future__ import annotations

import struct
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM

from .errors import UserError
from .gguf_convert import load_gguf
from .sources import check_hub_reachable, hub_error, resolve_model_path
from .tokenizer import load_tokenizer

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_model(name_or_path: str | Path, dtype: str | torch.dtype = "float32", device: str = "cpu",
               attn_implementation: str | None = None, trust_remote_code: bool = False, with_tokenizer: bool = True):
    """Load a causal LM and its tokenizer. GGUF weights are dequantised into a plain model that can be saved."""
    torch_dtype = parse_dtype(dtype)
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda, but this machine has no CUDA device (use --device cpu)")
    path, gguf = resolve_model_path(name_or_path)
    if not Path(path).exists():
        check_hub_reachable(str(name_or_path))
    kwargs = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        if gguf is not None:
            model = load_gguf(Path(path) / gguf, **kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as exc:
        raise hub_error(str(name_or_path), exc) from None
    except (ValueError, KeyError, EOFError, struct.error, SafetensorError) as exc:  # bad config, damaged weights
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"cannot load {name_or_path} as a causal LM (damaged or not a model?): {first}") from None
    model.to(device).eval()
    tokenizer = None
    if with_tokenizer:
        tokenizer = load_tokenizer(Path(path) / gguf if gguf else path, trust_remote_code=trust_remote_code)
    return model, tokenizer
