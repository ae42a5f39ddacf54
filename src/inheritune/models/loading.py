"""Loading any causal LM: a local HF directory, a GGUF file (dequantised), a built-in asset or a hub name."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from inheritune.assets.gguf import load_gguf
from inheritune.assets.sources import check_hub_reachable, resolve_model_path
from inheritune.data.tokenizer import load_tokenizer
from inheritune.utils.errors import UserError, reading

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
    with reading(f"{name_or_path} as a causal LM"):
        if gguf is not None:
            model = load_gguf(Path(path) / gguf, **kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    model.to(device).eval()
    tokenizer = None
    if with_tokenizer:
        tokenizer = load_tokenizer(Path(path) / gguf if gguf else path, trust_remote_code=trust_remote_code)
    return model, tokenizer


def load_config_of(path: str | Path, gguf: str | None = None, trust_remote_code: bool = False):
    """The model config in an HF directory or GGUF file (a hub name: only when the hub can be reached), or a
    one-line error when it is missing, invalid JSON, or of an unknown model_type."""
    if not Path(path).exists():
        check_hub_reachable(str(path))
    with reading(f"the config of {Path(path) / gguf if gguf else path}"):
        if gguf:
            return AutoConfig.from_pretrained(str(path), gguf_file=gguf)
        return AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)


def resolve_device(device: str) -> str:
    """'cuda' or 'cpu' for a --device of auto, cpu or cuda; cuda on a machine without it is refused."""
    if device not in ("auto", "cpu", "cuda"):
        raise UserError(f"device must be auto, cpu or cuda, not {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda, but this machine has no CUDA device (use --device cpu or auto)")
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
