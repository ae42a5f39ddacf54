"""Reading a reference's tensors without loading the whole model.

A reference on disk in safetensors (one file or sharded with an index) is read key by key, one shard open
at a time; anything else (GGUF, .bin checkpoints, hub names, model objects) is loaded whole and read from
its state dict.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from inheritune.assets.sources import resolve_model_path
from inheritune.data.tokenizer import load_tokenizer
from inheritune.models.architectures import adapter_for
from inheritune.models.loading import load_config_of, load_model
from inheritune.utils.errors import reading
from inheritune.utils.hashing import sha256_file


class ModelSource:
    """Tensors of a model that is already in memory."""

    def __init__(self, model):
        self.state = model.state_dict()

    def read(self, keys: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
        for key in keys:
            if key in self.state:
                yield key, self.state[key]


class SafetensorsSource:
    """Tensors of a safetensors checkpoint directory, read lazily and grouped by shard."""

    def __init__(self, directory: Path, base_prefix: str = "", config=None):
        self.directory = Path(directory)
        self.aliases: dict[str, str] = {}
        index = self.directory / "model.safetensors.index.json"
        with reading(f"the weights in {self.directory}"):
            if index.is_file():
                weight_map = dict(json.loads(index.read_text())["weight_map"])
            else:
                from safetensors import safe_open

                with safe_open(self.directory / "model.safetensors", framework="pt") as handle:
                    weight_map = {key: "model.safetensors" for key in handle.keys()}
        # Checkpoints may store keys under older names that transformers renames when it loads (GPT-NeoX's
        # `embed_out` is the model's `lm_head`): apply the same renamings, so the model's names find them.
        renames = _load_renamings(config) if config is not None else []
        for stored in list(weight_map):
            renamed = stored
            for pattern, target in renames:
                renamed = pattern.sub(target, renamed)
            if renamed != stored and renamed not in weight_map:
                weight_map[renamed] = weight_map[stored]
                self.aliases[renamed] = stored
        self.weight_map = weight_map
        self.base_prefix = base_prefix

    def files(self) -> list[Path]:
        return [self.directory / name for name in sorted(set(self.weight_map.values()))]

    def _stored_name(self, key: str) -> str | None:
        if key in self.aliases:
            return self.aliases[key]
        if key in self.weight_map:
            return key
        # Older checkpoints store keys without the base model prefix ("h.0..." for "transformer.h.0...").
        if self.base_prefix and key.startswith(self.base_prefix + "."):
            bare = key[len(self.base_prefix) + 1:]
            if bare in self.weight_map:
                return bare
        return None

    def read(self, keys: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
        from safetensors import safe_open

        by_shard: dict[str, list[tuple[str, str]]] = {}
        for key in keys:
            stored = self._stored_name(key)
            if stored is not None:
                by_shard.setdefault(self.weight_map[stored], []).append((key, stored))
        for shard in sorted(by_shard):
            with reading(f"the weights file {self.directory / shard}"):
                with safe_open(self.directory / shard, framework="pt") as handle:
                    tensors = [(key, handle.get_tensor(stored)) for key, stored in by_shard[shard]]
            yield from tensors


@dataclass
class Reference:
    """What inheritance needs of a reference: its config, a tensor source, tokenizer, generation config."""

    config: object
    source: object
    tokenizer: object = None
    generation_config: object = None
    files: list[Path] = field(default_factory=list)

    def checksum(self) -> str | None:
        """sha256 over the reference's weight files (None for a model given as an object)."""
        if not self.files:
            return None

        digest = hashlib.sha256()
        for path in self.files:
            digest.update(path.name.encode() + sha256_file(path).encode())
        return digest.hexdigest()


def open_reference(reference, trust_remote_code: bool = False) -> Reference:
    """A Reference from a model object, a safetensors HF directory (read lazily), or anything load_model takes."""
    from transformers import GenerationConfig


    if isinstance(reference, Reference):
        return reference
    if isinstance(reference, torch.nn.Module):
        return Reference(reference.config, ModelSource(reference), None, getattr(reference, "generation_config", None))
    path, gguf = resolve_model_path(reference)
    directory = Path(path)
    has_safetensors = directory.is_dir() and gguf is None and (
        (directory / "model.safetensors").is_file() or (directory / "model.safetensors.index.json").is_file())
    if not has_safetensors:
        model, tokenizer = load_model(reference, trust_remote_code=trust_remote_code)
        files = [Path(path) / gguf] if gguf else []
        return Reference(model.config, ModelSource(model), tokenizer, model.generation_config, files)
    config = load_config_of(directory, trust_remote_code=trust_remote_code)
    tokenizer = None
    if any((directory / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        tokenizer = load_tokenizer(directory, trust_remote_code=trust_remote_code)
    generation = None
    if (directory / "generation_config.json").is_file():
        with reading(f"the generation config of {directory}"):
            generation = GenerationConfig.from_pretrained(directory)

    prefix = adapter_for(config).blocks.split(".")[0]
    source = SafetensorsSource(directory, base_prefix=prefix, config=config)
    return Reference(config, source, tokenizer, generation, source.files())


def _load_renamings(config) -> list:
    """The plain key renamings transformers applies when it loads a checkpoint of this family, as compiled
    (pattern, replacement) pairs."""
    import re

    from transformers.conversion_mapping import get_checkpoint_conversion_mapping
    from transformers.core_model_loading import WeightRenaming
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    class_name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.model_type)
    transforms = (class_name and get_checkpoint_conversion_mapping(class_name)) or \
        get_checkpoint_conversion_mapping(config.model_type) or []
    pairs = []
    for transform in transforms:
        if type(transform) is WeightRenaming and len(transform.source_patterns) == 1:
            pairs.append((re.compile(transform.source_patterns[0]), transform.target_patterns[0]))
    return pairs
