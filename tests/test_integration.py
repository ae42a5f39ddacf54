"""Integration tests on the real SmolLM2-135M (fetched by `make test` before pytest runs)."""

import numpy as np
import pytest
import torch

from inheritune.analysis.scoring import validation_loss
from inheritune.assets.catalog import asset_path
from inheritune.data.dataset import PrepareConfig, TokenData, prepare
from inheritune.models.loading import load_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2")


@pytest.fixture(scope="module")
def english(tmp_path_factory):
    return TokenData(prepare(PrepareConfig(input=[str(asset_path("corpus"))], out=str(tmp_path_factory.mktemp("en")),
                                           tokenizer="smollm2"), progress=False))


def test_smollm2_perplexity_on_held_out_corpus_text(smollm2, english):
    model, tokenizer = smollm2
    data = english
    assert data.meta["train_tokens"] + data.meta["val_tokens"] > 2_000_000
    torch.set_num_threads(2)
    result = validation_loss(model, data, seq_len=512, max_windows=16, batch_size=8)
    print(f"SmolLM2-135M held-out perplexity: {result['perplexity']:.2f} over {result['tokens']} tokens")
    assert result["perplexity"] < 60


def test_gguf_load_matches_the_converted_directory(smollm2):
    model, tokenizer = smollm2
    gguf_model, gguf_tokenizer = load_model(asset_path("smollm2-gguf"))
    ids = torch.tensor([tokenizer("The capital of France is Paris, a city on the Seine.")["input_ids"]])
    assert ids.tolist() == [gguf_tokenizer("The capital of France is Paris, a city on the Seine.")["input_ids"]]
    with torch.no_grad():
        difference = (model(ids).logits - gguf_model(ids).logits).abs().max().item()
    assert difference < 1e-4
    assert model.config.num_hidden_layers == 30 and model.config.tie_word_embeddings


def test_converted_tensors_equal_ggufs_own_dequantisation(smollm2):
    """Not circular: the converted directory's tensors against the gguf library's dequantisation of the file."""
    import gguf

    model, _ = smollm2
    reader = gguf.GGUFReader(str(asset_path("smollm2-gguf")))
    tensors = {t.name: t for t in reader.tensors}
    state = model.state_dict()
    for gguf_name, hf_name in (("token_embd.weight", "model.embed_tokens.weight"),
                               ("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight"),
                               ("blk.29.ffn_gate.weight", "model.layers.29.mlp.gate_proj.weight"),
                               ("blk.0.attn_norm.weight", "model.layers.0.input_layernorm.weight")):
        tensor = tensors[gguf_name]
        expected = torch.from_numpy(np.array(gguf.quants.dequantize(tensor.data, tensor.tensor_type),
                                               dtype=np.float32))
        assert torch.equal(state[hf_name].float(), expected.reshape(state[hf_name].shape)), hf_name


def test_smollm2_first_k_child_equals_early_exit(smollm2, tmp_path):
    from transformers import AutoModelForCausalLM

    from inheritune.inherit import InheritConfig, inherit

    model, tokenizer = smollm2
    k = 8
    out = inherit(InheritConfig(reference="smollm2", layers=str(k), out=str(tmp_path / "child")))
    child = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.tensor([tokenizer("It is a truth universally acknowledged, that a single man in possession of a "
                                  "good fortune, must be in want of a wife.")["input_ids"]])
    captured = {}
    hook = model.model.layers[k - 1].register_forward_hook(
        lambda module, args, output: captured.__setitem__("x", output[0] if isinstance(output, tuple) else output))
    with torch.no_grad():
        model(ids)
        hook.remove()
        early = model.lm_head(model.model.norm(captured["x"]))
        difference = (child(ids).logits - early).abs().max().item()
    print(f"SmolLM2 first-{k} child vs early exit: max abs difference {difference:.2e}")
    assert difference <= 1e-5
    assert child.config.num_hidden_layers == k and child.config.tie_word_embeddings


def test_smollm2_lazy_layers(tmp_path):
    from inheritune.analysis.attention import AnalyzeConfig
    from inheritune.analyze import analyze

    data = tmp_path / "austen.txt"
    lines = asset_path("corpus").read_text().splitlines()
    import json as _json

    data.write_text("\n\n".join(_json.loads(line)["text"] for line in lines[:40]))
    report = analyze(AnalyzeConfig(model="smollm2", data=str(data), n=50, t=100, lens_sequences=5), progress=False)
    layers = report["models"][0]["layers"]
    assert len(layers) == 30 and all(layer["max_rank"] >= 1 for layer in layers)
    last_third = layers[20:]
    assert min(layer["max_rank"] for layer in last_third) < 1.5
    first_three_sink = max(layer["sink_mass"] for layer in layers[:3])
    assert np.mean([layer["sink_mass"] for layer in last_third]) > first_three_sink
    print("SmolLM2 MaxRank by layer:", [round(layer["max_rank"], 2) for layer in layers])
    print("SmolLM2 sink mass layer 0 vs last third:", round(layers[0]["sink_mass"], 3),
          [round(layer["sink_mass"], 2) for layer in last_third])


def test_smollm2_is_above_chance_on_the_offline_tasks_and_its_random_init_is_not(smollm2, english):
    """The offline zero-shot tasks (built from the corpus's held-out split, no download): SmolLM2's 95% interval
    lies above chance on each; a random init of its shape is not clearly above chance on either. 40 items a task
    (SmolLM2 scores about 80% and 96% on them, so even 40 items put its interval clear of chance; 100 items
    took 4.5 minutes of make test)."""
    from transformers import AutoModelForCausalLM

    from inheritune.analysis.zeroshot import zero_shot

    model, tokenizer = smollm2
    torch.manual_seed(0)
    random_init = AutoModelForCausalLM.from_config(model.config).eval()
    for name, candidate in (("SmolLM2-135M", model), ("random init", random_init)):
        result = zero_shot(candidate, tokenizer, ["cloze", "word-order"], batch_size=16, limit=40, data=english)
        for task, chance in (("cloze", 0.25), ("word-order", 0.5)):
            scores = result[task]
            low, high = scores["acc_ci"]
            print(f"{name} {task}: {100 * scores['acc']:.1f}% [{100 * low:.1f}, {100 * high:.1f}] over "
                  f"{scores['n']} items (chance {100 * chance:.0f}%)")
            assert scores["n"] == 40 and scores["chance"] == chance
            if candidate is model:
                assert low > chance + 0.1, (task, scores)
            else:
                assert low <= chance, (task, scores)
