"""Model cards: every model directory inheritune writes carries a README.md in Hugging Face's convention (a YAML
header with ``base_model``, ``library_name`` and tags, then a body), written from the same facts as its
``inheritune.json``, so that a model shared on its own still says how it was made."""

from __future__ import annotations

import json
from pathlib import Path

import yaml


def _header(base_model: str | None, tags: list[str]) -> str:
    meta = {"library_name": "transformers", "tags": ["inheritune", *tags]}
    if base_model:
        meta["base_model"] = base_model
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def _base_name(reference: str | None) -> str | None:
    """A hub-style name stays as it is; a local path becomes its last component (paths mean nothing elsewhere)."""
    if not reference:
        return None
    text = str(reference).rstrip("/")
    if text.count("/") == 1 and not Path(text).exists():
        return text
    return Path(text).name


def base_model_of(model: str | None, depth: int = 0) -> str | None:
    """What a model trained from ``model`` is based on: the reference of an inherited child, what a trained model
    was itself based on (followed through its inheritune.json, never a folder's basename such as ``final``), the
    name of any other model, and nothing for a model trained from scratch."""
    if not model or str(model).startswith("scratch:") or depth > 16:
        return None
    try:
        record = json.loads((Path(str(model)) / "inheritune.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        record = None
    if isinstance(record, dict):
        if "base_model" in record:
            return record["base_model"]
        inherited = record.get("inherited") if "trained" in record else record
        if isinstance(inherited, dict) and inherited.get("reference"):
            return _base_name(inherited["reference"])
        if isinstance(record.get("trained"), dict):
            return base_model_of(record["trained"].get("model"), depth + 1)
    return _base_name(model)


def child_card(record: dict) -> str:
    """The card of an inherited child (``record`` is its inheritune.json)."""
    layers = record["layers"]
    lines = [_header(_base_name(record.get("reference")), ["inherited", record["init"]]),
             f"# {record['family']} child of `{record.get('reference')}`", "",
             f"Built by inheritune {record.get('inheritune_version', '')}: "
             f"{len(layers)} of the reference's {record['reference_layers']} blocks, init `{record['init']}`, "
             f"copy mode `{record['copy']}`, seed {record['seed']}.", "",
             f"- reference: `{record.get('reference')}` (sha256 {str(record.get('reference_sha256'))[:16]}...)",
             f"- reference block behind each child block: {layers}",
             *([f"- blocks chosen by `--select {record['selection']['method']}:{record['selection']['k']}`: "
                f"{record['selection']['reason']}"] if record.get("selection") else []),
             f"- parameters: {record.get('parameters', 0):,}",
             f"- tensors copied: {len(record['copied'])}; freshly initialised: {len(record['fresh'])}"]
    if record.get("folded_position_scaling"):
        lines.append("- GPT-2's per-layer attention scale 1/(layer + 1) is folded into each block's query weights "
                     "(config flag off), so each block computes exactly what it did in the reference")
    lines += ["", "Not trained yet: the inherited blocks come from the reference as they are."]
    return "\n".join(lines) + "\n"


def trained_card(facts: dict, inherited: dict | None, base: str | None) -> str:
    """The card of a trained model: what it started from (``base``: ``base_model_of`` the model it was given), the
    budget and data, and its validation loss."""
    lines = [_header(base, ["trained", *(["distillation"] if facts.get("teacher") else [])]),
             f"# Trained from `{facts['model']}`", "",
             f"- started from: `{facts['model']}`" + (f" (inherited {len(inherited['layers'])} of "
                                                      f"{inherited['reference_layers']} blocks of "
                                                      f"`{inherited['reference']}`, init `{inherited['init']}`)"
                                                      if inherited else ""),
             f"- data: `{facts['data']}` (tokenizer `{facts.get('tokenizer')}`), order {facts['data_order']}, seed "
             f"{facts['seed']}" + (f", starting at step {facts['data_offset']} of the data stream"
                                   if facts.get("data_offset") else ""),
             f"- budget: {facts['steps']} steps x {facts['tokens_per_step']:,} tokens = {facts['tokens']:,} tokens, "
             f"{facts['training_flops']:.3g} training FLOPs",
             f"- recipe: AdamW lr {facts['lr']} (cosine to {facts['min_lr']}, {facts['warmup']} warmup steps), "
             f"betas ({facts['beta1']}, {facts['beta2']}), weight decay {facts['weight_decay']}, clip "
             f"{facts['grad_clip']}, {facts['dtype']}"]
    trained = facts.get("trainable_record") or {}
    if trained and trained.get("trainable") != "all":
        what = (f"LoRA adapters (rank {trained['lora']['rank']}, alpha {trained['lora']['alpha']}) on "
                f"{', '.join(trained['lora']['targets'])}, merged into the weights at the end"
                if "lora" in trained else f"blocks {trained['blocks']}, the final norm and the head only"
                + (" (tied to the embeddings, which so learned too)" if trained.get("tied_head") else ""))
        lines.append(f"- trained: {what}; {trained['trainable_parameters']:,} of {trained['total_parameters']:,} "
                     "parameters learned")
    if facts.get("teacher"):
        lines.append(f"- knowledge distillation from `{facts['teacher']}` (alpha {facts['kd_alpha']}, T "
                     f"{facts['kd_temperature']})")
    if facts.get("final_val_loss") is not None:
        lines.append(f"- validation loss {facts['final_val_loss']:.4f} on {facts['eval_windows']} fixed windows of "
                     f"{facts['seq_len']} tokens of the val split")
    return "\n".join(lines) + "\n"


def converted_card(gguf: str, model_type: str, layers: int) -> str:
    lines = [_header(_base_name(gguf), ["gguf-converted"]), f"# {model_type} converted from `{Path(gguf).name}`", "",
             f"Dequantised to float32 from the GGUF file `{gguf}` ({layers} blocks) by `inheritune assets convert`. "
             "A quantised GGUF gives the dequantised quantised weights, not the original full-precision ones."]
    return "\n".join(lines) + "\n"


def write_card(directory: str | Path, text: str) -> None:
    Path(directory, "README.md").write_text(text)
