"""Tiny random configs of every supported family (real HF config classes, 6 layers, width 32)."""

import torch
import transformers as T

COMMON = dict(num_hidden_layers=6, hidden_size=32, num_attention_heads=4, vocab_size=128)


def family_configs():
    return {
        "gpt2": T.GPT2Config(n_layer=6, n_embd=32, n_head=4, vocab_size=128, n_positions=64, bos_token_id=0,
                             eos_token_id=0),
        "llama": T.LlamaConfig(intermediate_size=64, num_key_value_heads=2, **COMMON),
        "mistral": T.MistralConfig(intermediate_size=64, num_key_value_heads=2, **COMMON),
        "qwen2": T.Qwen2Config(intermediate_size=64, num_key_value_heads=2, **COMMON),
        "qwen3": T.Qwen3Config(intermediate_size=64, num_key_value_heads=2, head_dim=8, **COMMON),
        "gemma3_text": T.Gemma3TextConfig(intermediate_size=64, num_key_value_heads=2, head_dim=8, sliding_window=8,
                                          **COMMON),
        "gpt_neox": T.GPTNeoXConfig(intermediate_size=64, **COMMON),
        "opt": T.OPTConfig(ffn_dim=64, word_embed_proj_dim=32, **COMMON),
        "phi3": T.Phi3Config(intermediate_size=64, num_key_value_heads=2, pad_token_id=0, **COMMON),
    }


def trained_like(config, seed=0):
    """A random model whose every tensor (norms included) is perturbed away from its init, as training would."""
    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return model
