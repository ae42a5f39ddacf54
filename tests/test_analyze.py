import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from families import family_configs, trained_like

from inheritune.analysis import metrics
from inheritune.analysis.attention import AnalyzeConfig, measure, sample_sequences, with_bos
from inheritune.analyze import analyze
from inheritune.inherit import InheritConfig, build_child, inherit
from inheritune.utils.errors import UserError


def svd_energy_rank(attn: torch.Tensor, tau: float) -> torch.Tensor:
    """The definition (PAPER.md §1), one matrix at a time: smallest k whose top-k squared singular values
    reach tau of their sum."""
    flat = attn.reshape(-1, *attn.shape[-2:]).double()
    ranks = []
    for matrix in flat:
        s2 = torch.linalg.svdvals(matrix) ** 2
        share = torch.cumsum(s2, 0) / s2.sum()
        ranks.append(int((share < tau - 1e-6).sum()) + 1)
    return torch.tensor(ranks).reshape(attn.shape[:-2])

T = 100


def one_column(t=T, column=0):
    a = torch.zeros(t, t)
    a[column:, column] = 1.0
    a[:column, 0] = 1.0  # rows before the column cannot see it: park them on token 0
    return a


def test_energy_rank_of_constructed_matrices():
    assert metrics.energy_rank(one_column(), 0.9).item() == 1
    eye = torch.eye(T)
    # Identity: s_i = 1 for all i, so the top-k energy is k/T and k* = ceil(tau * T); tau = 1 gives T.
    assert metrics.energy_rank(eye, [0.8, 0.9, 0.95, 1.0], dtype=torch.float64).tolist() == [80, 90, 95, 100]
    blocks = torch.zeros(T, T)  # four blocks of 25 rows, each attending only to its block's first token
    for b in range(4):
        blocks[25 * b:25 * (b + 1), 25 * b] = 1.0
    assert metrics.energy_rank(blocks, 0.9).item() == 4
    assert metrics.energy_rank(blocks, 0.7).item() == 3


def test_batched_rank_equals_the_numpy_loop():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 40, 40) * torch.tensor([0.5, 2.0, 5.0, 9.0]).view(1, 4, 1, 1)
    causal = torch.ones(40, 40).tril().bool()
    attn = torch.softmax(logits.masked_fill(~causal, float("-inf")), -1)
    assert torch.equal(metrics.energy_rank(attn, 0.9), svd_energy_rank(attn, 0.9))
    assert metrics.energy_rank(attn, [0.8, 0.9]).shape == (3, 4, 2)


def test_mass_entropy_and_sink_of_constructed_matrices():
    assert metrics.column_mass(one_column(), 0.9).item() == 1
    assert metrics.column_mass(torch.eye(T), 0.9).item() == 90
    assert metrics.row_entropy(one_column()).item() == pytest.approx(0.0)
    uniform = torch.ones(T, T).tril()
    uniform = uniform / uniform.sum(-1, keepdim=True)
    assert metrics.row_entropy(uniform).item() == pytest.approx(1.0)
    assert metrics.sink_mass(one_column()).item() == pytest.approx(1.0)
    assert metrics.sink_mass(torch.eye(T)).item() == pytest.approx(1.0 / T)


@pytest.fixture(scope="module")
def tiny():
    return trained_like(family_configs()["llama"], seed=3)


def _config(**kw):
    return AnalyzeConfig(**{"n": 6, "t": 24, "batch_size": 4, "lens_sequences": 0, **kw})


def test_block_influence_and_angular_distance_by_hand(tiny):
    sequences = torch.randint(0, 128, (6, 24), generator=torch.Generator().manual_seed(0))
    raw = measure(tiny, sequences, _config(span=2), progress=False)
    with torch.no_grad():
        out = tiny(sequences, output_hidden_states=True)
        last = {}
        hook = tiny.model.norm.register_forward_pre_hook(lambda m, args: last.__setitem__("x", args[0]))
        tiny(sequences)
        hook.remove()
    states = list(out.hidden_states[:-1]) + [last["x"]]  # hidden_states[-1] is after the final norm
    for l in range(6):
        cos = F.cosine_similarity(states[l].double(), states[l + 1].double(), dim=-1)
        assert raw["block_influence"][l] == pytest.approx(float(1 - cos.mean()), abs=1e-9)
    for l in range(5):
        cos = F.cosine_similarity(states[l][:, -1].double(), states[l + 2][:, -1].double(), dim=-1)
        expected = float((torch.arccos(cos.clamp(-1, 1)) / math.pi).mean())
        assert raw["angular_distance"][l] == pytest.approx(expected, abs=1e-9)
    assert len(raw["angular_distance"]) == 5


def test_logit_lens_equals_the_loss_of_the_inherited_child(tiny):
    sequences = torch.randint(0, 128, (6, 24), generator=torch.Generator().manual_seed(1))
    raw = measure(tiny, sequences, _config(), progress=False)
    for k in (1, 3, 6):
        child, _ = build_child(tiny, list(range(k)))
        with torch.no_grad():
            logits = child(sequences).logits[:, :-1]
        loss = F.cross_entropy(logits.reshape(-1, 128), sequences[:, 1:].reshape(-1)).item()
        assert raw["logit_lens"][k - 1] == pytest.approx(loss, abs=1e-5)


@pytest.mark.parametrize("family", list(family_configs()))
def test_every_family_yields_attention_metrics(family):
    model = trained_like(family_configs()[family])
    sequences = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(0))
    raw = measure(model, sequences, _config(n=4, t=16), progress=False)
    assert raw["rank_mean"].shape[:2] == (6, 4) and raw["mass"].shape == (6, 4)
    with torch.no_grad():  # the SVD definition, one matrix at a time, on the model's own attention probabilities
        attentions = model(sequences, output_attentions=True).attentions
    expected = torch.stack([svd_energy_rank(a, 0.9).double().mean(0) for a in attentions]).numpy()
    assert np.allclose(raw["rank_mean"][..., 0], expected)
    assert np.isfinite(raw["logit_lens"]).all() and (raw["block_influence"] > 0).all()


def test_report_plots_and_inherit_from_report(tmp_path, tiny_model_dir, text_dir):
    text = tmp_path / "book.txt"
    text.write_text(" ".join(p.read_text() for p in sorted(text_dir.iterdir())))
    report = analyze(_config(model=str(tiny_model_dir), data=str(text), out=str(tmp_path / "a"), n=8, t=32,
                             compare=str(tiny_model_dir), tau=[0.9, 0.8]), progress=False)
    out = tmp_path / "a"
    for name in ("report.json", "layers.csv", "heads.csv", "maxrank.png", "mass.png", "rank_heatmap.png",
                 "sink_influence.png", "logit_lens.png", "attention_maps.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    saved = json.loads((out / "report.json").read_text())
    assert len(saved["models"]) == 2 and saved["models"][0]["layers"] == saved["models"][1]["layers"]
    assert set(saved["models"][0]["layers"][0]["max_rank_by_tau"]) == {"0.9", "0.8"}
    k = saved["recommendation"]["k"]
    child = inherit(InheritConfig(reference=str(tiny_model_dir), from_report=str(out / "report.json"),
                                  out=str(tmp_path / "child")))
    assert json.loads((child / "inheritune.json").read_text())["layers"] == list(range(k))
    assert report["recommendation"]["paper_default"] == 1


def test_sequences_are_seeded_and_bad_input_is_refused(tmp_path, tiny_model_dir):
    tokens = np.arange(1000)
    assert torch.equal(sample_sequences(tokens, 5, 100, 0), sample_sequences(tokens, 5, 100, 0))
    assert not torch.equal(sample_sequences(tokens, 5, 100, 0), sample_sequences(tokens, 5, 100, 1))
    with pytest.raises(UserError, match="holds only 10"):
        sample_sequences(tokens, 11, 100, 0)
    for tau in (0.0, 1.5):
        with pytest.raises(UserError, match="tau must be in"):
            AnalyzeConfig(tau=[tau])
    empty = tmp_path / "empty.txt"
    empty.write_text("   ")
    with pytest.raises(UserError, match="no text"):
        analyze(_config(model=str(tiny_model_dir), data=str(empty)), progress=False)
    long_text = tmp_path / "long.txt"
    long_text.write_text("word " * 3000)
    with pytest.raises(UserError, match="exceeds the model's context of 256"):
        analyze(_config(model=str(tiny_model_dir), data=str(long_text), n=2, t=300), progress=False)
    with pytest.raises(UserError, match="data not found"):
        analyze(_config(model=str(tiny_model_dir), data=str(tmp_path / "nope")), progress=False)


def test_recommendation_is_the_prefix_before_the_first_lazy_group():
    from inheritune.analysis.attention import recommend

    def layers(ranks):
        return [{"max_rank": r, "lazy": r <= 1.25, "logit_lens_loss": 10.0 - i} for i, r in enumerate(ranks)]

    # An isolated near-rank-1 layer early on (layer 2) does not start the tail; layers 6-7 do (mean 1.22).
    ranks = [30, 50, 1.0, 20, 40, 12, 1.16, 1.28, 10, 30]
    result = recommend(layers(ranks), AnalyzeConfig())
    assert result["k"] == 6 and result["layers"] == list(range(6)) and result["paper_default"] == 5
    assert result["lazy_layers"] == [2, 6]
    assert recommend(layers([30, 2.5, 2.2, 40]), AnalyzeConfig())["k"] == 2  # fallback L/2
    assert "falling back" in recommend(layers([30, 2.5, 2.2, 40]), AnalyzeConfig())["reason"]
    assert recommend(layers(ranks), AnalyzeConfig(lazy_run=3))["k"] == 5  # no group of 3 has mean < 2: fallback to L/2


# ------------------------------------------------------------------ uniform (untrained) vs lazy vs attentive
def test_uniform_reference_is_exact_and_the_three_states_are_told_apart():
    reference = metrics.uniform_reference(100, [0.9, 0.8])
    assert reference["rank"] == [5, 3] and reference["entropy"] == pytest.approx(1.0)
    uniform = metrics.uniform_attention(100)
    assert svd_energy_rank(uniform, 0.9).item() == 5  # the SVD definition agrees
    windowed = metrics.uniform_attention(100, window=32)
    assert torch.allclose(windowed.sum(-1), torch.ones(100, dtype=torch.float64))
    assert (windowed > 0).sum(-1).tolist() == [min(i + 1, 32) for i in range(100)]
    local = metrics.uniform_reference(100, 0.9, window=32)
    assert local["rank"] == [svd_energy_rank(windowed, 0.9).item()] and local["entropy"] < 0.95
    state = lambda a: metrics.attention_state(float(metrics.energy_rank(a, 0.9)),  # noqa: E731
                                              float(metrics.row_entropy(a)), reference, 1.25)
    assert state(uniform.float()) == "uniform"
    assert state(one_column()) == "lazy"  # a rank-1 head: every query on one column
    assert state(torch.eye(T)) == "attentive"
    tiny = metrics.uniform_reference(2, 0.8)  # at T = 2 uniform attention has rank 1, yet it is not lazy
    assert tiny["rank"] == [1] and metrics.attention_state(1.0, 1.0, tiny, 1.25) == "uniform"


def _blind(model, scale=0.0):
    """Scale every query projection: 0 makes every attention logit 0, i.e. exactly uniform causal attention."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "q_proj" in name:
                parameter.mul_(scale)
    return model


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_a_model_with_uniform_attention_is_uniform_not_lazy(family):
    from inheritune.analysis.attention import recommend, summarize

    model = _blind(trained_like(family_configs()[family], seed=2))
    sequences = torch.randint(0, 128, (6, 16), generator=torch.Generator().manual_seed(0))
    config = _config(n=6, t=16)
    raw = measure(model, sequences, config, progress=False)
    if family == "gemma3_text":  # sliding layers (window 8) get the uniform matrix of their window
        windows = [u["window"] for u in raw["uniform"]]
        assert 8 in windows and None in windows
    summary = summarize(raw, config)
    assert {h["state"] for h in summary["heads"]} == {"uniform"}
    assert all(layer["state"] == "uniform" and not layer["lazy"] for layer in summary["layers"])
    advice = recommend(summary["layers"], config)
    assert advice["uniform_layers"] == list(range(6)) and "has not formed" in advice["reason"]
    if family == "llama":  # (Gemma 3 normalises its queries: scaling them changes nothing)
        sharp = summarize(measure(_blind(trained_like(family_configs()[family], seed=2), 400.0), sequences, config,
                                  progress=False), config)
        assert sum(layer["state"] == "uniform" for layer in sharp["layers"]) < 3  # attention that has formed


def test_logit_lens_reads_a_seeded_random_subset_and_its_last_layer_is_the_models_loss(tiny):
    sequences = torch.randint(0, 128, (20, 24), generator=torch.Generator().manual_seed(4))
    raw = measure(tiny, sequences, _config(n=20, lens_sequences=5, batch_size=6), progress=False)
    chosen = raw["lens_sequences"]
    assert len(chosen) == 5 and chosen != list(range(5))  # not the start of the split
    assert chosen == measure(tiny, sequences, _config(n=20, lens_sequences=5), progress=False)["lens_sequences"]
    with torch.no_grad():
        subset = sequences[chosen]
        logits = tiny(subset).logits[:, :-1]
    loss = F.cross_entropy(logits.reshape(-1, 128), subset[:, 1:].reshape(-1)).item()
    assert raw["logit_lens"][-1] == pytest.approx(loss, abs=1e-5)
    assert raw["lens_tokens"] == 5 * 23


def test_fast_energy_rank_equals_the_svd_definition():
    torch.manual_seed(7)
    t = 60
    causal = torch.ones(t, t).tril().bool()
    logits = torch.randn(48, t, t) * torch.linspace(0.1, 30.0, 48).view(-1, 1, 1)
    logits[::3, :, 0] += 10.0  # attention sinks: rank 1 and 2 heads, the ones the bounds settle
    random = torch.softmax(logits.masked_fill(~causal, float("-inf")), -1)
    blocks = torch.zeros(t, t)
    for b in range(4):
        blocks[15 * b:15 * (b + 1), 15 * b] = 1.0
    constructed = torch.stack([one_column(t), one_column(t, 7), blocks, torch.eye(t),
                               metrics.uniform_attention(t).float()])
    taus = [0.8, 0.9, 0.95]
    for batch in (random, constructed):
        fast = metrics.energy_rank(batch, taus)
        expected = torch.stack([svd_energy_rank(batch, tau) for tau in taus], -1)
        assert torch.equal(fast, expected)
        assert torch.equal(fast, metrics.energy_rank(batch, taus, fast=False))
    _, settled = metrics._bounded_ranks(random, torch.tensor(taus, dtype=torch.float64))
    assert 0 < int(settled.sum()) < len(random)  # both paths ran


def test_bos_windows_put_the_tokenizers_bos_in_front_of_the_same_seeded_text(tmp_path, tiny_model_dir, text_dir):
    tokens = np.arange(1000)
    windows = with_bos(tokens, 5, 100, 0, bos=7)
    assert windows.shape == (5, 100) and (windows[:, 0] == 7).all()
    assert torch.equal(windows[:, 1:], sample_sequences(tokens, 5, 99, 0))
    text = tmp_path / "book.txt"
    text.write_text(" ".join(p.read_text() for p in sorted(text_dir.iterdir())))
    plain = analyze(_config(model=str(tiny_model_dir), data=str(text), n=4, t=32), progress=False)
    bos = analyze(_config(model=str(tiny_model_dir), data=str(text), n=4, t=32, bos_windows=True,
                          out=str(tmp_path / "bos")), progress=False)
    assert json.loads((tmp_path / "bos" / "report.json").read_text())["sequences"]["bos_windows"] is True
    assert plain["sequences"]["bos_windows"] is False
    assert bos["models"][0]["layers"] != plain["models"][0]["layers"]  # other sequences, other numbers
