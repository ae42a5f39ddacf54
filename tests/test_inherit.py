import json

import pytest
import torch
from families import family_configs, trained_like
from transformers import AutoModelForCausalLM

from inheritune.inherit import InheritConfig, build_child, inherit, parse_layers
from inheritune.models.architectures import adapter_for
from inheritune.utils.errors import UserError

FAMILIES = family_configs()


def _block_output(output):
    return output[0] if isinstance(output, tuple) else output


def early_exit_logits(model, ids, k):
    """head(final_norm(hidden state after block k)), captured with a hook on block k-1."""
    adapter = adapter_for(model.config)
    captured = {}
    hook = adapter.block_list(model)[k - 1].register_forward_hook(
        lambda module, args, output: captured.__setitem__("x", _block_output(output)))
    with torch.no_grad():
        model(ids)
        hook.remove()
        return adapter.lm_head(model)(adapter.norm(model)(captured["x"]))


def skipping(model, keep):
    """Hooks that make every block not in ``keep`` return its input: the reference runs only ``keep``."""
    hooks = []
    for index, block in enumerate(adapter_for(model.config).block_list(model)):
        if index in keep:
            continue

        def identity(module, args, kwargs, output):
            hidden = args[0] if args else kwargs["hidden_states"]
            return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden

        hooks.append(block.register_forward_hook(identity, with_kwargs=True))
    return hooks


def running_only(model, keep, ids):
    """The logits of ``model`` when only the blocks in ``keep`` run (the others pass their input through)."""
    hooks = skipping(model, keep)
    try:
        with torch.no_grad():
            return model(ids).logits
    finally:
        for hook in hooks:
            hook.remove()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_first_k_child_equals_early_exit_and_reloads(family, tmp_path):
    reference = trained_like(FAMILIES[family])
    ids = torch.randint(0, 128, (2, 20))
    for k in (1, 3):
        child, record = build_child(reference, list(range(k)))
        with torch.no_grad():
            logits = child(ids).logits
        assert (logits - early_exit_logits(reference, ids, k)).abs().max().item() <= 1e-5
        assert record["fresh"] == []
    child.save_pretrained(tmp_path / "child")
    reloaded, info = AutoModelForCausalLM.from_pretrained(tmp_path / "child", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        assert torch.equal(reloaded.eval()(ids).logits, logits)
    generated = reloaded.generate(ids[:1, :5], max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert generated.shape == (1, 9)


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "gpt_neox", "opt"])
def test_chosen_layers_equal_running_those_blocks(family):
    reference = trained_like(FAMILIES[family])
    ids = torch.randint(0, 128, (2, 20))
    child, _ = build_child(reference, [0, 2, 4])
    with torch.no_grad():
        assert (child(ids).logits - running_only(reference, {0, 2, 4}, ids)).abs().max().item() <= 1e-5
        assert (child(ids).logits - reference(ids).logits).abs().max().item() > 1e-3  # the skip mattered


def _equal(a, b):
    return a.shape == b.shape and torch.equal(a, b)


@pytest.mark.parametrize("copy_mode,copied_parts", [("attention", {"attention"}), ("mlp", {"mlp"}),
                                                    ("attention-mlp", {"attention", "mlp"}),
                                                    ("full", {"attention", "mlp", "norm"})])
def test_copy_modes_copy_exactly_their_parts(copy_mode, copied_parts):
    reference = trained_like(FAMILIES["llama"])
    adapter = adapter_for(reference.config)
    child, record = build_child(reference, [0, 1, 2], copy_mode=copy_mode)
    ref_state, checked = reference.state_dict(), set()
    for key, tensor in child.state_dict().items():
        block = adapter.block_key(key)
        if block is None:
            assert _equal(tensor, ref_state[key]), key  # embeddings, final norm, head always inherited
            continue
        part = adapter.block_part(block[1])
        assert _equal(tensor, ref_state[key]) == (part in copied_parts), key
        checked.add(part)
    assert checked == {"attention", "mlp", "norm"}
    assert all(adapter.block_part(adapter.block_key(k)[1]) not in copied_parts for k in record["fresh"])


def test_authors_variant_leaves_positional_embedding_and_final_norm_fresh():
    reference = trained_like(FAMILIES["gpt2"])
    child, record = build_child(reference, [0, 1], copy_mode="authors")
    ref_state = reference.state_dict()
    state = child.state_dict()
    assert record["fresh"] == ["transformer.ln_f.bias", "transformer.ln_f.weight", "transformer.wpe.weight"]
    assert torch.equal(state["transformer.ln_f.weight"], torch.ones(32))
    assert not torch.equal(state["transformer.wpe.weight"], ref_state["transformer.wpe.weight"])
    assert torch.equal(state["transformer.wte.weight"], ref_state["transformer.wte.weight"])
    assert torch.equal(state["transformer.h.1.attn.c_attn.weight"], ref_state["transformer.h.1.attn.c_attn.weight"])


def test_random_init_copies_nothing_and_is_seeded():
    reference = trained_like(FAMILIES["llama"])
    a, record = build_child(reference, [0, 1, 2], init="random", seed=1)
    b, _ = build_child(reference, [0, 1, 2], init="random", seed=1)
    c, _ = build_child(reference, [0, 1, 2], init="random", seed=2)
    ref_state = reference.state_dict()
    assert record["copied"] == []
    for key, tensor in a.state_dict().items():
        assert not _equal(tensor, ref_state[key]), key
        assert torch.equal(tensor, b.state_dict()[key])
    assert not torch.equal(a.state_dict()["model.embed_tokens.weight"], c.state_dict()["model.embed_tokens.weight"])


@pytest.mark.parametrize("init,layers,expected", [("stacking", "3", [0, 1, 2, 0, 1, 2]),
                                                  ("hybrid-stacking", "4", [0, 1, 0, 1]),
                                                  ("distil", "3", [0, 2, 4])])
def test_stacking_baselines_map_the_documented_layers(init, layers, expected, tmp_path):
    reference = trained_like(FAMILIES["llama"])
    reference.save_pretrained(tmp_path / "ref")
    out = inherit(InheritConfig(reference=str(tmp_path / "ref"), layers=layers, init=init, out=str(tmp_path / "c")))
    record = json.loads((out / "inheritune.json").read_text())
    assert record["layers"] == expected
    child = AutoModelForCausalLM.from_pretrained(out)
    ref_blocks, child_blocks = reference.model.layers, child.model.layers
    assert len(child_blocks) == len(expected)
    for child_index, ref_index in enumerate(expected):
        for (name, p_child), (_, p_ref) in zip(child_blocks[child_index].named_parameters(),
                                               ref_blocks[ref_index].named_parameters()):
            assert torch.equal(p_child, p_ref), (child_index, name)


def test_half_width_copies_first_heads_and_units():
    reference = trained_like(FAMILIES["llama"])
    child, _ = build_child(reference, init="half-width")
    assert child.config.hidden_size == 16 and child.config.num_attention_heads == 2
    assert child.config.num_key_value_heads == 1 and child.config.intermediate_size == 32
    assert child.config.num_hidden_layers == 6
    ref_state = reference.state_dict()
    for key, tensor in child.state_dict().items():
        lead = ref_state[key][tuple(slice(0, n) for n in tensor.shape)]
        assert torch.equal(tensor, lead), key
        assert tensor.numel() < ref_state[key].numel()
    ids = torch.randint(0, 128, (1, 8))
    assert child(ids).logits.shape == (1, 8, 128)


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "phi3"])
def test_half_width_splits_fused_projections_by_part(family):
    reference = trained_like(FAMILIES[family])
    child, _ = build_child(reference, init="half-width")
    ref_state, state = reference.state_dict(), child.state_dict()
    if family == "gpt2":
        q_ref = ref_state["transformer.h.0.attn.c_attn.weight"][:, 64:96]  # value part, [in, out]
        assert torch.equal(state["transformer.h.0.attn.c_attn.weight"][:, 32:48], q_ref[:16, :16])
    elif family == "gpt_neox":
        per_head = ref_state["gpt_neox.layers.0.attention.query_key_value.weight"].reshape(4, 24, 32)
        assert torch.equal(state["gpt_neox.layers.0.attention.query_key_value.weight"].reshape(2, 24, 16),
                           per_head[:2, :, :16])
    else:
        weight = ref_state["model.layers.0.self_attn.qkv_proj.weight"]  # q: 4x8 rows, k: 2x8, v: 2x8
        assert torch.equal(state["model.layers.0.self_attn.qkv_proj.weight"][16:24], weight[32:40, :16])
    assert child(torch.randint(0, 128, (1, 8))).logits.shape == (1, 8, 128)


def test_sharded_reference_gives_the_same_child(tmp_path):
    reference = trained_like(FAMILIES["qwen3"])
    reference.save_pretrained(tmp_path / "ref", max_shard_size="20KB")
    assert len(list((tmp_path / "ref").glob("model-*.safetensors"))) > 3
    out = inherit(InheritConfig(reference=str(tmp_path / "ref"), layers="0-1,4", out=str(tmp_path / "c")))
    from_disk = AutoModelForCausalLM.from_pretrained(out)
    in_memory, _ = build_child(reference, [0, 1, 4])
    for key, tensor in in_memory.state_dict().items():
        assert torch.equal(tensor, from_disk.state_dict()[key]), key
    record = json.loads((out / "inheritune.json").read_text())
    assert record["layers"] == [0, 1, 4] and len(record["reference_sha256"]) == 64
    assert record["config"]["init"] == "inherit"


def test_from_report_and_default_half(tmp_path):
    reference = trained_like(FAMILIES["llama"])
    reference.save_pretrained(tmp_path / "ref")
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"recommendation": {"k": 2, "reason": "test"}}))
    out = inherit(InheritConfig(reference=str(tmp_path / "ref"), from_report=str(report), out=str(tmp_path / "a")))
    assert json.loads((out / "inheritune.json").read_text())["layers"] == [0, 1]
    out = inherit(InheritConfig(reference=str(tmp_path / "ref"), out=str(tmp_path / "b")))
    assert json.loads((out / "inheritune.json").read_text())["layers"] == [0, 1, 2]


def test_layer_specs():
    assert parse_layers("12", 30) == list(range(12))
    assert parse_layers("0-7,10,12-13", 30) == [0, 1, 2, 3, 4, 5, 6, 7, 10, 12, 13]
    assert parse_layers("4,2,0", 6) == [4, 2, 0]
    for spec, message in [("0", "0 layers"), ("31", "from a reference with 30"), ("1,1", "selected twice"),
                          ("0-30", "out of range"), ("5-3", "backwards"), ("a-b", "cannot read")]:
        with pytest.raises(UserError, match=message):
            parse_layers(spec, 30)


def test_bad_input_writes_nothing(tmp_path):
    from transformers import BloomConfig

    reference = trained_like(FAMILIES["llama"])
    reference.save_pretrained(tmp_path / "ref")
    cases = [
        (dict(layers="0"), "0 layers"),
        (dict(layers="7"), "reference with 6"),
        (dict(layers="1,1"), "selected twice"),
        (dict(layers="2-9"), "out of range"),
    ]
    for overrides, message in cases:
        with pytest.raises(UserError, match=message):
            inherit(InheritConfig(reference=str(tmp_path / "ref"), out=str(tmp_path / "out"), **overrides))
    odd = trained_like(type(FAMILIES["llama"])(intermediate_size=64, num_hidden_layers=2, hidden_size=36,
                                               num_attention_heads=3, num_key_value_heads=3, vocab_size=128))
    odd.save_pretrained(tmp_path / "odd")
    with pytest.raises(UserError, match="even head count"):
        inherit(InheritConfig(reference=str(tmp_path / "odd"), init="half-width", out=str(tmp_path / "out")))
    bloom = AutoModelForCausalLM.from_config(BloomConfig(n_layer=2, hidden_size=32, n_head=4, vocab_size=128))
    bloom.save_pretrained(tmp_path / "bloom")
    with pytest.raises(UserError, match="'bloom' is not supported; supported: gemma3_text, gpt2, gpt_neox"):
        inherit(InheritConfig(reference=str(tmp_path / "bloom"), out=str(tmp_path / "out")))
    with pytest.raises(UserError, match="no config.json"):
        inherit(InheritConfig(reference=str(tmp_path), out=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="--overwrite"):
        inherit(InheritConfig(reference=str(tmp_path / "ref"), out=str(tmp_path / "busy")))
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


@pytest.mark.slow
def test_sharded_inheritance_memory_is_child_plus_a_shard(tmp_path):
    """A 16-layer reference of ~270 MB in ~34 MB shards; inheriting 2 layers must stay far below loading it all."""
    import sys
    from pathlib import Path

    from transformers import LlamaConfig

    sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
    import inherit_memory

    config = LlamaConfig(num_hidden_layers=16, hidden_size=512, intermediate_size=2048, num_attention_heads=8,
                         num_key_value_heads=8, vocab_size=1024)
    reference = AutoModelForCausalLM.from_config(config)
    reference.save_pretrained(tmp_path / "ref", max_shard_size="34MB")
    del reference
    files = list((tmp_path / "ref").glob("*.safetensors"))
    reference_mb = sum(p.stat().st_size for p in files) / 2**20
    shard_mb = max(p.stat().st_size for p in files) / 2**20
    result = inherit_memory.run_isolated("lazy", str(tmp_path / "ref"), "2", str(tmp_path / "child"))
    child_mb = sum(p.stat().st_size for p in (tmp_path / "child").glob("*.safetensors")) / 2**20
    print(f"reference {reference_mb:.0f} MB in {len(files)} shards, child {child_mb:.0f} MB, "
          f"peak RSS growth {result['peak_rss_growth_mb']:.0f} MB")
    assert len(files) >= 8
    assert result["peak_rss_growth_mb"] < 2 * child_mb + shard_mb + 64
    assert result["peak_rss_growth_mb"] < reference_mb / 2


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_inherits_from_a_saved_directory(family, tmp_path):
    """References as users have them: written by save_pretrained (GPT-NeoX stores its head as embed_out)."""
    reference = trained_like(FAMILIES[family])
    reference.save_pretrained(tmp_path / "ref")
    out = inherit(InheritConfig(reference=str(tmp_path / "ref"), layers="0,2,4", out=str(tmp_path / "child")))
    child = AutoModelForCausalLM.from_pretrained(out).eval()
    in_memory, _ = build_child(reference, [0, 2, 4])
    ids = torch.randint(0, 128, (2, 12))
    with torch.no_grad():
        assert torch.equal(child(ids).logits, in_memory(ids).logits)
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: transformers" in card and "base_model: ref" in card


def test_gpt2_position_scaled_blocks_keep_their_function_anywhere():
    config = FAMILIES["gpt2"].__class__(**{**FAMILIES["gpt2"].to_dict(), "scale_attn_by_inverse_layer_idx": True})
    reference = trained_like(config)
    ids = torch.randint(0, 128, (2, 20))
    child, record = build_child(reference, [0, 2, 4])
    assert record["folded_position_scaling"] and not child.config.scale_attn_by_inverse_layer_idx
    with torch.no_grad():
        assert (child(ids).logits - running_only(reference, {0, 2, 4}, ids)).abs().max().item() <= 1e-5
    prefix, record = build_child(reference, [0, 1, 2])  # a prefix keeps its indices: nothing to fold
    assert not record["folded_position_scaling"] and prefix.config.scale_attn_by_inverse_layer_idx
    with torch.no_grad():
        assert (prefix(ids).logits - early_exit_logits(reference, ids, 3)).abs().max().item() <= 1e-5
    # Stacking: block i of the small model sits at i + depth in the stack and still computes block i.
    stacked, record = build_child(reference, [0, 1, 0, 1], init="stacking")
    assert record["folded_position_scaling"]
    with torch.no_grad():
        assert (stacked(ids).logits - running_twice(reference, 2, ids)).abs().max().item() <= 1e-5


def running_twice(model, first, ids):
    """The logits of ``model`` running its blocks 0..first-1, then the same blocks again, then its final norm and
    head (each block with its own layer index, hence its own GPT-2 position scale, both times)."""
    blocks = adapter_for(model.config).block_list(model)
    inside = []

    def again(module, args, kwargs, output):
        if inside:  # the repeated pass calls this block again: leave that call alone
            return output
        inside.append(True)
        try:
            hidden = _block_output(output)
            for block in blocks[:first]:
                hidden = _block_output(block(hidden, *args[1:], **kwargs))
        finally:
            inside.clear()
        return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden

    hooks = skipping(model, set(range(first))) + [blocks[first - 1].register_forward_hook(again, with_kwargs=True)]
    try:
        with torch.no_grad():
            return model(ids, use_cache=False).logits  # no cache: the repeated blocks would append to it
    finally:
        for hook in hooks:
            hook.remove()


def test_stacking_depth_and_from_report(tmp_path):
    reference = trained_like(FAMILIES["llama"])
    reference.save_pretrained(tmp_path / "ref")
    out = inherit(InheritConfig(reference=str(tmp_path / "ref"), layers="3", init="stacking", depth=5,
                                out=str(tmp_path / "stacked")))
    assert json.loads((out / "inheritune.json").read_text())["layers"] == [0, 1, 2, 0, 1]
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"config": {"model": str(tmp_path / "ref")}, "recommendation": {"k": 2}}))
    out = inherit(InheritConfig(reference=str(tmp_path / "ref"), from_report=str(report), init="stacking",
                                out=str(tmp_path / "from-report")))
    assert json.loads((out / "inheritune.json").read_text())["layers"] == [0, 1, 0, 1]
    with pytest.raises(UserError, match="depth between 4 and 6"):
        inherit(InheritConfig(reference=str(tmp_path / "ref"), layers="3", init="stacking", depth=7,
                              out=str(tmp_path / "x")))
    odd = inherit(InheritConfig(reference=str(tmp_path / "ref"), layers="3", init="hybrid-stacking",
                                out=str(tmp_path / "hybrid")))
    assert json.loads((odd / "inheritune.json").read_text())["layers"] == [0, 1, 0]


def test_output_over_the_reference_is_refused_and_nothing_is_lost(tmp_path):
    reference = trained_like(FAMILIES["llama"])
    reference.save_pretrained(tmp_path / "ref")
    before = sorted(p.name for p in (tmp_path / "ref").iterdir())
    for out in (tmp_path / "ref", tmp_path / "ref" / "inside", tmp_path):
        with pytest.raises(UserError, match="would overwrite the input"):
            inherit(InheritConfig(reference=str(tmp_path / "ref"), layers="2", out=str(out), overwrite=True))
    assert sorted(p.name for p in (tmp_path / "ref").iterdir()) == before
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        inherit(InheritConfig(reference=str(tmp_path / "ref"), layers="2", out=str(tmp_path / "file")))
    with pytest.raises(UserError, match="empty item"):
        parse_layers("0-1,,3", 6)


def test_report_about_another_model_is_refused(tmp_path):
    for name in ("ref", "other"):
        trained_like(FAMILIES["llama"]).save_pretrained(tmp_path / name)
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"config": {"model": str(tmp_path / "other")}, "recommendation": {"k": 2}}))
    with pytest.raises(UserError, match="analyses"):
        inherit(InheritConfig(reference=str(tmp_path / "ref"), from_report=str(report), out=str(tmp_path / "c")))
