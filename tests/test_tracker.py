"""The attention tracker (train --track-attention), BOS-first windows and the warmup-stable-decay schedule."""


import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from inheritune.analysis.attention import AnalyzeConfig, measure, summarize
from inheritune.analysis.metrics import first_query_of
from inheritune.analysis.tracker import measure_attention, read_track, tracking_rows
from inheritune.data.dataset import TokenData
from inheritune.data.windows import RandomWindows, window_rows
from inheritune.train import train
from inheritune.training.optim import lr_at
from inheritune.training.recipe import TrainConfig

T = 48


def _gpt2(layers=3):
    torch.manual_seed(0)
    config = GPT2Config(n_layer=layers, n_embd=32, n_head=4, vocab_size=128, n_positions=64, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config).eval()


def test_an_untrained_model_tracks_as_uniform_with_the_uniform_matrixs_first_token_mass():
    model = _gpt2()
    with torch.no_grad():
        for block in model.transformer.h:  # zero queries: every head averages evenly over the keys it sees
            block.attn.c_attn.weight[:, :32] = 0
            block.attn.c_attn.bias[:32] = 0
    layers = measure_attention(model, torch.randint(0, 128, (4, T)))
    start = first_query_of(T)
    uniform_mass = float(np.mean([1.0 / (i + 1) for i in range(start, T)]))
    for layer in layers:
        assert layer["state"] == "uniform" and layer["max_rank"] == pytest.approx(layer["uniform_rank"], abs=1e-9)
        assert layer["first_token_mass"] == pytest.approx(uniform_mass, abs=1e-6)
        assert layer["first_token_sink_heads"] == 0.0


def test_a_model_that_attends_to_position_0_tracks_as_lazy_with_every_head_a_sink():
    model = _gpt2()
    with torch.no_grad():
        model.transformer.wpe.weight.zero_()
        model.transformer.wpe.weight[0, 0] = 30.0  # position 0 stands out along dimension 0 after the norm
        for block in model.transformer.h:
            block.attn.c_attn.weight.zero_()
            block.attn.c_attn.bias.zero_()
            for head in range(4):  # each head's query is constant, its key reads dimension 0
                block.attn.c_attn.bias[head * 8] = 40.0
                block.attn.c_attn.weight[0, 32 + head * 8] = 1.0
            block.attn.c_proj.weight.zero_()  # the stream never changes: every layer sees the same thing
            block.mlp.c_proj.weight.zero_()
    layers = measure_attention(model, torch.randint(0, 128, (4, T)))
    for layer in layers:
        assert layer["state"] == "lazy" and layer["max_rank"] == pytest.approx(1.0)
        assert layer["first_token_sink_heads"] == 1.0 and layer["first_token_mass"] > 0.99


def test_tracking_during_training_ends_with_what_analyze_sees_in_the_saved_model(dataset, tmp_path):
    out = tmp_path / "run"
    summary = train(TrainConfig(model="scratch:gpt2:layers=2,hidden=32,heads=4", data=str(dataset), out=str(out),
                                max_steps=6, seq_len=32, micro_batch_size=4, lr=3e-3, eval_windows=4,
                                track_attention=2, track_windows=4, bos_windows=True, progress=False,
                                checkpoint_interval=2, keep_checkpoints=5))
    records = read_track(out / "attention.jsonl")
    assert [r["step"] for r in records] == [2, 4, 6] and (out / "emergence.png").is_file()
    assert records[-1]["tokens"] == summary["tokens"] and summary["track_seconds"] > 0
    data = TokenData(dataset)
    rows = tracking_rows(data.split("val"), 32, 4, 1337, data.bos_id())
    assert (rows[:, 0] == data.bos_id()).all()
    model = AutoModelForCausalLM.from_pretrained(out / "final", attn_implementation="eager").eval()
    config = AnalyzeConfig(n=4, t=32, batch_size=4, lens_sequences=0)
    layers = summarize(measure(model, rows, config, progress=False, lens=False), config)["layers"]
    for tracked, analysed in zip(records[-1]["layers"], layers):
        for key in ("max_rank", "entropy", "first_token_mass", "first_token_sink_heads"):
            assert tracked[key] == pytest.approx(analysed[key], abs=1e-5), key
        assert tracked["state"] == analysed["state"]
    # a resumed run drops the measurements past its checkpoint, like its metrics
    with open(out / "attention.jsonl", "a") as handle:
        handle.write('{"step": 99, "tokens": 1, "layers": []}\n{"step": 7, "cut')
    train(TrainConfig(model="scratch:gpt2:layers=2,hidden=32,heads=4", data=str(dataset), out=str(out),
                      max_steps=6, seq_len=32, micro_batch_size=4, lr=3e-3, eval_windows=4, track_attention=2,
                      track_windows=4, bos_windows=True, progress=False, checkpoint_interval=2, keep_checkpoints=5,
                      resume_from=str(out / "ckpt-0000004.pt")))
    assert [r["step"] for r in read_track(out / "attention.jsonl")] == [2, 4, 6]
    assert len(read_track(out / "abandoned" / "after-step-4" / "attention.jsonl")) == 4  # the old branch's, kept


def test_bos_windows_put_the_bos_first_in_training_and_validation(dataset):
    data = TokenData(dataset)
    tokens = data.split("train")
    bos = data.bos_id()
    plain = window_rows(tokens, np.array([5, 100]), 16)
    first = window_rows(tokens, np.array([5, 100]), 16, bos)
    assert first.shape == plain.shape and (first[:, 0] == bos).all()
    assert torch.equal(first[:, 1:], plain[:, :-1])  # BOS, then seq_len stream tokens from the same start
    x, y = RandomWindows(tokens, 16, 4, seed=3, bos=bos).batch(0)
    assert (x[:, 0] == bos).all() and torch.equal(x[:, 1:], y[:, :-1])


def test_wsd_is_constant_then_decays_linearly_over_its_last_fraction():
    lrs = [lr_at(s, 100, 1e-3, 1e-5, 10, "wsd", 0.2) for s in range(100)]
    assert lrs[9] == pytest.approx(1e-3) and lrs[10:80] == [1e-3] * 70
    decay = lrs[80:]
    assert all(a > b for a, b in zip(decay, decay[1:])) and decay[-1] == pytest.approx(1e-5)
    steps = np.diff(decay)
    assert np.allclose(steps, steps[0])  # linear
    assert lr_at(50, 100, 1e-3, 1e-5, 10) < 1e-3  # cosine (the default) is already decaying there


def test_the_trackers_first_token_mass_matches_a_hand_computed_attention():
    """Only position 0 carries a signal (token embeddings and every other position are zero), so each head's
    score is z on key 0 and 0 elsewhere: query i puts e^z / (e^z + i) on position 0, computed here by hand."""
    model = _gpt2()
    scale = 0.7
    with torch.no_grad():
        model.transformer.wte.weight.zero_()
        model.transformer.wpe.weight.zero_()
        model.transformer.wpe.weight[0, 0] = 30.0
        for block in model.transformer.h:
            block.attn.c_attn.weight.zero_()
            block.attn.c_attn.bias.zero_()
            for head in range(4):
                block.attn.c_attn.bias[head * 8] = 1.0                 # query: 1 on the head's first dimension
                block.attn.c_attn.weight[0, 32 + head * 8] = scale     # key: scale x the normed dimension 0
            block.attn.c_proj.weight.zero_()
            block.attn.c_proj.bias.zero_()
            block.mlp.c_proj.weight.zero_()
            block.mlp.c_proj.bias.zero_()
    x0 = np.zeros(32)
    x0[0] = 30.0
    normed = (x0[0] - x0.mean()) / np.sqrt(x0.var() + 1e-5)  # GPT-2's LayerNorm (weight 1, bias 0, eps 1e-5)
    z = scale * normed / np.sqrt(8)
    mass = np.mean([np.exp(z) / (np.exp(z) + i) for i in range(first_query_of(T), T)])
    assert 0.05 < mass < 0.95  # neither uniform nor a full sink: the formula is what is tested
    for layer in measure_attention(model, torch.randint(0, 128, (3, T))):
        assert layer["first_token_mass"] == pytest.approx(mass, abs=1e-6)
        assert layer["max_first_token_mass"] == pytest.approx(mass, abs=1e-6)
        assert layer["first_token_sink_heads"] == (1.0 if mass > 0.3 else 0.0)


def _tiny_run(dataset, out, **kw):
    base = dict(model="scratch:gpt2:layers=2,hidden=32,heads=4", data=str(dataset), out=str(out), max_steps=6,
                seq_len=32, micro_batch_size=4, lr=3e-3, eval_windows=4, eval_interval=2, progress=False,
                checkpoint_interval=0)
    return train(TrainConfig(**{**base, **kw}))


def test_tracking_does_not_change_the_training(dataset, tmp_path):
    tracked = _tiny_run(dataset, tmp_path / "tracked", track_attention=2, track_windows=4)
    plain = _tiny_run(dataset, tmp_path / "plain")
    assert tracked["track_seconds"] > 0 and plain["track_seconds"] == 0
    assert tracked["history"] == plain["history"]  # every train and validation loss, exactly
    assert tracked["final_val_loss"] == plain["final_val_loss"]


def test_bos_windows_are_what_validation_scores(dataset, tmp_path):
    from inheritune.analysis.scoring import validation_loss
    from inheritune.train import load_training_model

    with_bos = _tiny_run(dataset, tmp_path / "bos", bos_windows=True, max_steps=2, warmup_steps=0)
    without = _tiny_run(dataset, tmp_path / "plain", max_steps=2, warmup_steps=0)
    data = TokenData(dataset)
    config = TrainConfig(model="scratch:gpt2:layers=2,hidden=32,heads=4", data=str(dataset), out=str(tmp_path / "x"),
                         max_steps=2, seq_len=32)
    model = load_training_model(config, data)[0].eval()  # the same seeded init both runs started from
    scored = {bos: validation_loss(model, data, seq_len=32, max_windows=4, batch_size=4, bos_windows=bos)["loss"]
              for bos in (True, False)}
    assert with_bos["history"][0]["val_loss"] == pytest.approx(scored[True], abs=1e-5)
    assert without["history"][0]["val_loss"] == pytest.approx(scored[False], abs=1e-5)
    assert abs(scored[True] - scored[False]) > 1e-4  # the two kinds of window really differ
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "bos" / "final").eval()
    after = validation_loss(final, data, seq_len=32, max_windows=4, batch_size=4, bos_windows=True)["loss"]
    assert with_bos["final_val_loss"] == pytest.approx(after, abs=1e-5)
