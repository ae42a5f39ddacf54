"""Loading any causal LM: a local HF directory, a GGUF file (dequantised), a built-in asset or a hub name."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError

from .cards import converted_card, write_card
from .errors import UserError, refuse_output_over_input, replace_dir

# Built-in names resolve to fetched assets: what the demo and tests use on machines with no model hub.
BUILTIN_MODELS = {"smollm2": "smollm2", "smollm2-135m": "smollm2", "smollm2-gguf": "smollm2-gguf"}
BUILTIN_TOKENIZERS = {"gpt2": "gpt2-tokenizer", **BUILTIN_MODELS}

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _looks_local(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or name.endswith(".gguf") or os.sep + os.sep in name \
        or name.count("/") > 1


def resolve_model_path(name_or_path: str | Path, tokenizer_only: bool = False) -> tuple[str, str | None]:
    """(directory or hub name, GGUF file name inside it or None). Raises UserError for paths that are not models."""
    from .assets import asset_path

    name = str(name_or_path)
    builtins = BUILTIN_TOKENIZERS if tokenizer_only else BUILTIN_MODELS
    if name in builtins:
        path = asset_path(builtins[name])
        return (str(path.parent), path.name) if path.suffix == ".gguf" else (str(path), None)
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise UserError(f"GGUF file not found: {path}")
        return str(path.resolve().parent), path.name
    if path.is_dir():
        wanted = ("tokenizer.json", "tokenizer_config.json", "vocab.json") if tokenizer_only else ("config.json",)
        if not any((path / f).is_file() for f in wanted):
            raise UserError(f"{path} is not a Hugging Face {'tokenizer' if tokenizer_only else 'model'} directory "
                            f"(no {' or '.join(wanted)})")
        return str(path), None
    if path.exists():
        raise UserError(f"{path} is a file but not a model: give a model directory or a .gguf file")
    if _looks_local(name):
        raise UserError(f"no such model path: {path}")
    return name, None  # a hub name, for users with a network


_HUB_REACHABLE: dict[str, bool] = {}


def check_hub_reachable(name: str, timeout: float = 3.0) -> None:
    """A name that is not a local path means the model hub: say at once when it cannot be reached, instead of
    letting the hub client retry for half a minute before failing."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise UserError(f"'{name}' is not a local path, and HF_HUB_OFFLINE=1: give a local HF directory, a .gguf "
                        "file or a built-in name (smollm2)")
    from huggingface_hub import constants

    endpoint = urlparse(constants.ENDPOINT)
    host, port = endpoint.hostname, endpoint.port or (443 if endpoint.scheme == "https" else 80)
    if host not in _HUB_REACHABLE:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            _HUB_REACHABLE[host] = True
        except OSError:
            _HUB_REACHABLE[host] = False
    if not _HUB_REACHABLE[host]:
        raise UserError(f"'{name}' is not a local path and the model hub ({host}) cannot be reached: give a local "
                        "HF directory, a .gguf file or a built-in name (smollm2)")


def hub_error(name: str, exc: Exception) -> UserError:
    """One line for a failed load: the hub is unreachable (no network), or the loader's own first line."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    if any(word in text.lower() for word in ("offline", "connect", "resolve", "internet", "network", "hub")):
        return UserError(f"'{name}' is not a local path and the model hub cannot be reached (no network?): "
                         "give a local HF directory, a .gguf file or a built-in name (smollm2)")
    return UserError(f"cannot load '{name}': {first}")


def load_model(name_or_path: str | Path, dtype: str | torch.dtype = "float32", device: str = "cpu",
               attn_implementation: str | None = None, trust_remote_code: bool = False, with_tokenizer: bool = True):
    """Load a causal LM and its tokenizer. GGUF weights are dequantised into a plain model that can be saved."""
    from transformers import AutoModelForCausalLM

    from .tokenizer import load_tokenizer

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
            model = _plain_copy(AutoModelForCausalLM.from_pretrained(path, gguf_file=gguf, **kwargs), torch_dtype)
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


def _plain_copy(model, dtype: torch.dtype):
    """The same weights in a fresh model of the same class, without the GGUF quantisation record.

    ``save_pretrained`` refuses models that carry a quantisation config, so we rebuild from the config.
    """
    from transformers import AutoModelForCausalLM

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


def convert_gguf(gguf_path: str | Path, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write a GGUF causal LM as a plain fp32 safetensors HF directory (config, weights, tokenizer)."""
    gguf_path, out = Path(gguf_path), Path(out_dir)
    if not gguf_path.is_file():
        raise UserError(f"GGUF file not found: {gguf_path}")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} is not empty; pass --overwrite to replace it")
    refuse_output_over_input(out, gguf_path)
    model, tokenizer = load_model(gguf_path, dtype="float32")
    staging = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        write_card(staging, converted_card(str(gguf_path), model.config.model_type, model.config.num_hidden_layers))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replace_dir(staging, out)
    return out
