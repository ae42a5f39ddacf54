"""The one place that knows where each HF causal-LM family keeps its parts.

Everything else (inherit, analyze, train) asks the adapter: the state-dict prefix of the block list, of the
token and positional embeddings, of the final norm and of the head; which keys inside a block belong to
attention, to the MLP, or to the block's norms; and which config field holds the MLP width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from inheritune.utils.errors import UserError


@dataclass(frozen=True)
class Adapter:
    family: str
    blocks: str  # state-dict prefix of the block list, e.g. "model.layers"
    embed: str  # token embedding module
    final_norm: str
    head: str = "lm_head"
    pos_embed: str | None = None  # learned positional embedding, where the family has one
    attention: tuple[str, ...] = ("self_attn.",)  # key prefixes inside a block
    mlp: tuple[str, ...] = ("mlp.",)
    ffn_field: str = "intermediate_size"  # config field of the MLP width
    project_out: str | None = None  # a projection between the final norm and the head (OPT-350m style)
    # Fused projections (key suffix inside a block -> layout), which half-width must split before it keeps the
    # first heads of each part: "qkv-columns" (GPT-2's Conv1D [in, 3 * out]), "qkv-rows" (its bias),
    # "qkv-per-head" (GPT-NeoX: [q, k, v] per head), "qkv-split" (Phi-3: q, then k, then v rows), "halves"
    # (Phi-3's gate and up projections stacked).
    fused: tuple[tuple[str, str], ...] = ()

    # ----------------------------------------------------------------------------------- state-dict keys
    def block_key(self, key: str) -> tuple[int, str] | None:
        """(block index, key inside the block) for a block parameter, else None."""
        prefix = self.blocks + "."
        if not key.startswith(prefix):
            return None
        index, _, rest = key[len(prefix):].partition(".")
        return int(index), rest

    def block_part(self, rest: str) -> str:
        """'attention', 'mlp' or 'norm' for a key inside a block."""
        if rest.startswith(self.attention):
            return "attention"
        if rest.startswith(self.mlp):
            return "mlp"
        return "norm"

    def outer_part(self, key: str) -> str:
        """'embed', 'pos_embed', 'final_norm', 'head' or 'other' for a key outside the blocks."""
        for part, prefix in (("embed", self.embed), ("pos_embed", self.pos_embed),
                             ("final_norm", self.final_norm), ("head", self.head)):
            if prefix and (key == prefix or key.startswith(prefix + ".")):
                return part
        return "other"

    # ------------------------------------------------------------------------------------------ modules
    def get(self, model, path: str):
        module = model
        for name in path.split("."):
            module = module[int(name)] if name.isdigit() else getattr(module, name)
        return module

    def block_list(self, model):
        return self.get(model, self.blocks)

    def norm(self, model):
        return self.get(model, self.final_norm)

    def lm_head(self, model):
        return self.get(model, self.head)

    def attention_module(self, block):
        return getattr(block, self.attention[0].rstrip("."))

    # ------------------------------------------------------------------- position-dependent attention scale
    def position_scaled(self, config) -> bool:
        """Whether attention logits are divided by (layer index + 1): GPT-2's scale_attn_by_inverse_layer_idx
        (the authors' option). A block moved to another index then computes something else."""
        return self.family == "gpt2" and bool(getattr(config, "scale_attn_by_inverse_layer_idx", False))

    def fold_position_scale(self, block, source_index: int) -> None:
        """Fold a block's own 1/(source_index + 1) into its query projection, for a model whose config has the
        position scaling switched off: the block then computes what it did at its source index, anywhere."""
        qkv = block.attn.c_attn  # Conv1D: weight [in, 3 * hidden], query first
        hidden = qkv.weight.shape[1] // 3
        with torch.no_grad():
            qkv.weight[:, :hidden] /= source_index + 1
            qkv.bias[:hidden] /= source_index + 1

    def soft_cap(self, config, logits):
        """The family's final-logit soft-capping (Gemma), else the logits unchanged."""
        cap = getattr(config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    def attention_window(self, config, layer: int) -> int | None:
        """How many keys (the query's own included) a query of this layer sees at most: the sliding window of a
        local layer (Gemma 3's layer_types, Mistral's sliding_window), else None (every earlier key)."""
        window = getattr(config, "sliding_window", None)
        if not window:
            return None
        types = getattr(config, "layer_types", None)
        if types is not None:
            return int(window) if types[layer] == "sliding_attention" else None
        return int(window) if getattr(config, "use_sliding_window", True) else None

    # ------------------------------------------------------------------------------------- half-width
    def shrink(self, tensor: torch.Tensor, shape: torch.Size, key: str, ref_config) -> torch.Tensor:
        """Half-width copy of one tensor: the first half of heads and MLP units. Fused projections are split
        into their parts first, so that each part keeps its own first heads."""
        if tensor.shape == shape:
            return tensor
        layout = next((kind for suffix, kind in self.fused if key.endswith(suffix) or suffix in key), None)
        heads = ref_config.num_attention_heads
        head_dim = getattr(ref_config, "head_dim", None) or ref_config.hidden_size // heads
        kv_heads = getattr(ref_config, "num_key_value_heads", None) or heads
        if layout == "qkv-columns":
            return torch.cat([_lead(p, (shape[0], shape[1] // 3)) for p in tensor.chunk(3, dim=1)], dim=1)
        if layout == "qkv-rows":
            return torch.cat([p[: shape[0] // 3] for p in tensor.chunk(3)])
        if layout == "qkv-per-head":
            per_head = tensor.reshape(heads, 3 * head_dim, *tensor.shape[1:])
            return _lead(per_head[: shape[0] // (3 * head_dim)].reshape(-1, *tensor.shape[1:]), shape)
        if layout == "qkv-split":
            q, k, v = tensor.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim])
            child_kv = max(1, kv_heads // 2) * head_dim
            return torch.cat([_lead(q, (heads // 2 * head_dim, shape[1])), _lead(k, (child_kv, shape[1])),
                              _lead(v, (child_kv, shape[1]))])
        if layout == "halves":
            gate, up = tensor.chunk(2)
            return torch.cat([_lead(gate, (shape[0] // 2, shape[1])), _lead(up, (shape[0] // 2, shape[1]))])
        return _lead(tensor, shape)

    def logits(self, model, hidden):
        """What the model's own head makes of a residual-stream state: head(final_norm(x)), with the family's
        extra steps (OPT's output projection, Gemma's logit soft-capping)."""
        x = self.norm(model)(hidden)
        if self.project_out:
            projection = self.get(model, self.project_out)
            if projection is not None:
                x = projection(x)
        return self.soft_cap(model.config, self.lm_head(model)(x))


def _lead(tensor: torch.Tensor, shape) -> torch.Tensor:
    """The leading block of ``tensor`` with the given shape (first heads, first units, first channels)."""
    return tensor[tuple(slice(0, n) for n in shape)]


_LLAMA_LIKE = dict(blocks="model.layers", embed="model.embed_tokens", final_norm="model.norm")

ADAPTERS: dict[str, Adapter] = {
    "gpt2": Adapter("gpt2", blocks="transformer.h", embed="transformer.wte", final_norm="transformer.ln_f",
                    pos_embed="transformer.wpe", attention=("attn.",), mlp=("mlp.",), ffn_field="n_inner",
                    fused=(("attn.c_attn.weight", "qkv-columns"), ("attn.c_attn.bias", "qkv-rows"))),
    "llama": Adapter("llama", **_LLAMA_LIKE),
    "mistral": Adapter("mistral", **_LLAMA_LIKE),
    "qwen2": Adapter("qwen2", **_LLAMA_LIKE),
    "qwen3": Adapter("qwen3", **_LLAMA_LIKE),
    "gemma3_text": Adapter("gemma3_text", **_LLAMA_LIKE),
    "phi3": Adapter("phi3", **_LLAMA_LIKE, fused=(("self_attn.qkv_proj.weight", "qkv-split"),
                                                   ("mlp.gate_up_proj.weight", "halves"))),
    "gpt_neox": Adapter("gpt_neox", blocks="gpt_neox.layers", embed="gpt_neox.embed_in",
                        final_norm="gpt_neox.final_layer_norm", attention=("attention.",),
                        fused=(("attention.query_key_value.", "qkv-per-head"),)),
    "opt": Adapter("opt", blocks="model.decoder.layers", embed="model.decoder.embed_tokens",
                   final_norm="model.decoder.final_layer_norm", pos_embed="model.decoder.embed_positions",
                   mlp=("fc1.", "fc2."), ffn_field="ffn_dim", project_out="model.decoder.project_out"),
}


def adapter_for(config) -> Adapter:
    """The adapter of a model config, or a one-line error naming the supported families."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ADAPTERS:
        raise UserError(f"model family '{model_type}' is not supported; supported: {', '.join(sorted(ADAPTERS))}")
    return ADAPTERS[model_type]
