"""From-scratch model configs: the paper's GPT-2 shapes and Llama-style shapes, written as short specs.

``scratch:gpt2-medium`` -- 24 layers x 1024 wide x 16 heads, as in the paper
``scratch:gpt2:layers=4,hidden=64,heads=4,scale_attn_by_inverse_layer_idx=false``
``scratch:llama:layers=4,hidden=64,heads=4,kv_heads=2,ffn=176``
or a path to a ``config.json``. The vocabulary comes from the dataset, padded to a multiple of 64.
"""

from __future__ import annotations

import json
from pathlib import Path

from inheritune.utils.errors import UserError, reading

GPT2_SHAPES = {  # layers, width, heads (PAPER.md: Small, Medium, Large, XL)
    "gpt2-small": (12, 768, 12), "gpt2-medium": (24, 1024, 16), "gpt2-large": (36, 1280, 20),
    "gpt2-xl": (48, 1600, 25),
}
KEYS = {"layers", "hidden", "heads", "kv_heads", "ffn", "context", "scale_attn_by_inverse_layer_idx", "tie"}


def is_scratch(spec: str) -> bool:
    return spec.startswith("scratch:") or (spec.endswith(".json") and Path(spec).is_file())


def _options(text: str) -> dict:
    options = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key not in KEYS or not value:
            raise UserError(f"bad scratch option '{item}'; options: {', '.join(sorted(KEYS))} (as key=value)")
        if key in ("scale_attn_by_inverse_layer_idx", "tie"):
            if value.lower() not in ("true", "false", "1", "0"):
                raise UserError(f"scratch option {key} takes true or false, not '{value}'")
            options[key] = value.lower() in ("true", "1")
        else:
            try:
                number = int(value)
            except ValueError:
                raise UserError(f"scratch option {key} takes a whole number, not '{value}'") from None
            if number < 1:
                raise UserError(f"scratch option {key} must be at least 1, got {number}")
            options[key] = number
    return options


def scratch_config(spec: str, vocab_size: int, seq_len: int, eos_token_id: int | None = None):
    """An HF config for a fresh model described by ``spec`` (see the module docstring)."""
    from transformers import AutoConfig, GPT2Config, LlamaConfig

    vocab = (vocab_size + 63) // 64 * 64  # padded like nanoGPT's 50304: faster matmuls
    if spec.endswith(".json"):
        with reading(f"the model config {spec}"):
            data = json.loads(Path(spec).read_text())
            model_type = data.pop("model_type", None) if isinstance(data, dict) else None
            if not model_type:
                raise UserError(f"{spec} has no model_type")
            config = AutoConfig.for_model(model_type, **data)
        if config.vocab_size < vocab_size:
            config.vocab_size = vocab
        return config
    body = spec[len("scratch:"):]
    family, _, rest = body.partition(":")
    if family in GPT2_SHAPES:
        layers, hidden, heads = GPT2_SHAPES[family]
        options = {"layers": layers, "hidden": hidden, "heads": heads, **_options(rest)}
        family = "gpt2"
    elif family in ("gpt2", "llama"):
        options = _options(rest)
        missing = {"layers", "hidden", "heads"} - set(options)
        if missing:
            raise UserError(f"scratch:{family} needs {', '.join(sorted(missing))} (e.g. scratch:{family}:layers=4,"
                            "hidden=64,heads=4)")
    else:
        raise UserError(f"unknown scratch family '{family}'; use gpt2, llama or one of {', '.join(GPT2_SHAPES)}")
    layers, hidden, heads = int(options["layers"]), int(options["hidden"]), int(options["heads"])
    kv_heads = int(options.get("kv_heads", heads))
    if hidden % heads:
        raise UserError(f"hidden size {hidden} is not divisible by {heads} heads")
    if heads % kv_heads:
        raise UserError(f"{heads} attention heads are not divisible by {kv_heads} key-value heads")
    context = int(options.get("context", max(1024, seq_len)))
    if family == "gpt2":
        # nanoGPT recipe (PAPER.md §2): pre-LN, GELU, tied embeddings, no dropout; the authors also scale
        # attention logits by 1/(layer_idx + 1).
        return GPT2Config(n_layer=layers, n_embd=hidden, n_head=heads, vocab_size=vocab, n_positions=context,
                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                          scale_attn_by_inverse_layer_idx=options.get("scale_attn_by_inverse_layer_idx", True),
                          tie_word_embeddings=options.get("tie", True), bos_token_id=eos_token_id,
                          eos_token_id=eos_token_id)
    ffn = int(options.get("ffn", 256 * ((8 * hidden // 3 + 255) // 256)))
    return LlamaConfig(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                       num_key_value_heads=kv_heads, intermediate_size=ffn,
                       vocab_size=vocab, max_position_embeddings=context, tie_word_embeddings=options.get("tie", True),
                       bos_token_id=eos_token_id, eos_token_id=eos_token_id)
