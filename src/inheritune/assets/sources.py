"""Where a model or tokenizer named by the user comes from: a built-in asset name (fetched from the package
registries), a local HF directory or GGUF file, or a hub name for users with a network (the hub is probed once,
so an unreachable one fails at once instead of after the hub client's retries)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from huggingface_hub import constants

from inheritune.assets.catalog import asset_path
from inheritune.utils.errors import UserError

# Built-in names resolve to fetched assets: what the demo and tests use on machines with no model hub.
BUILTIN_MODELS = {"smollm2": "smollm2", "smollm2-135m": "smollm2", "smollm2-gguf": "smollm2-gguf"}
BUILTIN_TOKENIZERS = {"gpt2": "gpt2-tokenizer", **BUILTIN_MODELS}


def _looks_local(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or name.endswith(".gguf") or os.sep + os.sep in name \
        or name.count("/") > 1


def resolve_model_path(name_or_path: str | Path, tokenizer_only: bool = False) -> tuple[str, str | None]:
    """(directory or hub name, GGUF file name inside it or None). Raises UserError for paths that are not models."""
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
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise UserError(f"'{name}' is not a local path, and HF_HUB_OFFLINE=1: give a local HF directory, a .gguf "
                        "file or a built-in name (smollm2)")
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
    """One line for a load that failed after the hub was reachable (or for a local directory): the loader's own
    first line."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return UserError(f"cannot load '{name}': {first}")
