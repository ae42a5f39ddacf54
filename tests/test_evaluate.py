import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_llama

from inheritune.analysis.scoring import check_tokenizer_matches, summarize, validation_loss
from inheritune.data.dataset import PrepareConfig, TokenData, prepare
from inheritune.data.windows import fixed_windows
from inheritune.evaluate import EvalConfig, evaluate
from inheritune.utils.errors import UserError


@pytest.fixture
def dataset(text_dir, tmp_path, gpt2_tokenizer_dir):
    return TokenData(prepare(PrepareConfig(input=[str(text_dir)], out=str(tmp_path / "ds"),
                                           tokenizer=str(gpt2_tokenizer_dir), val_fraction=0.3), progress=False))


def test_loss_equals_a_hand_computation(dataset):
    model = tiny_llama()
    result = validation_loss(model, dataset, seq_len=32, max_windows=0, batch_size=3, bootstrap=200)
    tokens = dataset.split("val")
    losses = []
    with torch.no_grad():
        for start in fixed_windows(tokens, 32):
            row = torch.tensor(np.asarray(tokens[start:start + 33], dtype=np.int64))
            logits = model(row[None, :-1]).logits[0]
            losses.append(F.cross_entropy(logits, row[1:], reduction="none"))
    expected = torch.cat(losses).double().mean().item()
    assert abs(result["loss"] - expected) < 1e-5
    assert result["tokens"] == 32 * len(losses) and result["windows"] == len(losses)
    low, high = result["loss_ci95"]
    assert low < result["loss"] < high
    assert validation_loss(model, dataset, seq_len=32, max_windows=0, batch_size=5, bootstrap=200) == result


def test_strided_windows_score_each_target_once(dataset):
    model = tiny_llama()
    tokens = dataset.split("val")
    result = validation_loss(model, dataset, seq_len=32, stride=16, max_windows=0, batch_size=3)
    starts = fixed_windows(tokens, 32, stride=16)
    assert result["tokens"] == 32 + 16 * (len(starts) - 1)
    # By hand: the first window scores its 32 targets, each later one only its last 16 (the positions no earlier
    # window scored), each with its own 32 tokens of context; every target position of the span exactly once.
    positions, total = [], 0.0
    with torch.no_grad():
        for i, start in enumerate(starts):
            row = torch.tensor(np.asarray(tokens[start:start + 33], dtype=np.int64))
            losses = F.cross_entropy(model(row[None, :-1]).logits[0], row[1:], reduction="none")
            scored = slice(0, 32) if i == 0 else slice(16, 32)
            positions += list(range(start + 1, start + 33))[scored]
            total += losses[scored].double().sum().item()
    assert positions == list(range(1, starts[-1] + 33))
    assert sum(result["window_sums"]) == pytest.approx(total, rel=1e-6)
    assert result["window_counts"] == [32] + [16] * (len(starts) - 1)


def test_bootstrap_interval_narrows_with_more_windows():
    rng = np.random.default_rng(0)
    few = summarize(rng.normal(3.0, 0.5, 10) * 100, np.full(10, 100))
    many = summarize(rng.normal(3.0, 0.5, 1000) * 100, np.full(1000, 100))
    assert (many["loss_ci95"][1] - many["loss_ci95"][0]) < (few["loss_ci95"][1] - few["loss_ci95"][0]) / 3


def test_evaluate_command_and_tokenizer_mismatch(dataset, tiny_model_dir, tmp_path, capsys):
    results = evaluate(EvalConfig(models=[str(tiny_model_dir), str(tiny_model_dir)], data=str(dataset.path),
                                  seq_len=32, out=str(tmp_path / "ev")), progress=False)
    assert results[0]["loss"] == results[1]["loss"] and (tmp_path / "ev" / "results.json").is_file()
    assert results[1]["paired_vs_first"]["ci95"] == [0.0, 0.0]  # the same model: a paired delta of exactly 0
    assert "+0.0000 [+0.000, +0.000]" in capsys.readouterr().out
    import base64

    from inheritune.assets.tiktoken import gpt2_tokenizer_from_tiktoken

    other = gpt2_tokenizer_from_tiktoken(b"\n".join(base64.b64encode(bytes([b])) + b" " + str(b).encode()
                                                    for b in range(256)))
    with pytest.raises(UserError, match="differs"):
        check_tokenizer_matches(other, dataset, "other")
    with pytest.raises(UserError, match="exceeds the context"):
        evaluate(EvalConfig(models=[str(tiny_model_dir)], data=str(dataset.path), seq_len=1024), progress=False)
    with pytest.raises(UserError, match="stride"):
        EvalConfig(models=["x"], data="d", seq_len=32, stride=64)


def test_train_and_evaluate_report_the_same_validation_loss(dataset, tmp_path):
    from inheritune.train import TrainConfig, train

    summary = train(TrainConfig(model="scratch:llama:layers=2,hidden=32,heads=4", data=str(dataset.path),
                                out=str(tmp_path / "run"), max_steps=3, seq_len=32, micro_batch_size=4, eval_windows=6,
                                progress=False, device="cpu"))
    model_dir = tmp_path / "run" / "final"
    from inheritune.models.loading import load_model

    model, _ = load_model(model_dir)
    result = validation_loss(model, dataset, seq_len=32, max_windows=6)
    assert result["loss"] == pytest.approx(summary["final_val_loss"], abs=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma3_text", "gpt_neox", "opt", "phi3"])
def test_chunked_token_losses_equal_the_full_logits_path(family):
    from families import family_configs, trained_like

    from inheritune.analysis.scoring import token_losses

    model = trained_like(family_configs()[family])
    if family == "gemma3_text":
        model.config.final_logit_softcapping = 5.0  # exercise the soft-capping branch
    ids = torch.randint(0, 128, (3, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = F.cross_entropy(model(ids[:, :-1]).logits.transpose(1, 2), ids[:, 1:], reduction="none")
        chunked = token_losses(model, ids[:, :-1], ids[:, 1:], chunk=7)
        tail = token_losses(model, ids[:, :-1], ids[:, -5:], chunk=4)
    assert (full - chunked).abs().max().item() < 1e-5
    assert (full[:, -5:] - tail).abs().max().item() < 1e-5


def test_paired_interval_sees_a_consistent_gap_that_separate_intervals_miss():
    from inheritune.analysis.scoring import paired_delta

    rng = np.random.default_rng(0)
    difficulty = rng.uniform(2.0, 6.0, size=40)  # windows differ a lot; model b is 0.05 nats better on every one
    counts = np.full(40, 100)
    a = {"window_sums": (difficulty * 100).tolist(), "window_counts": counts.tolist()}
    b = {"window_sums": ((difficulty - 0.05) * 100).tolist(), "window_counts": counts.tolist()}
    pair = paired_delta(a, b, bootstrap=2000)
    assert pair["delta"] == pytest.approx(0.05) and pair["significant"] and pair["ci95"][0] > 0.04
    alone_a = summarize(np.array(a["window_sums"]), counts, 2000)["loss_ci95"]
    alone_b = summarize(np.array(b["window_sums"]), counts, 2000)["loss_ci95"]
    assert alone_a[0] < alone_b[1]  # the unpaired intervals overlap: they would call it noise
    with pytest.raises(UserError, match="same windows"):
        paired_delta(a, {"window_sums": [1.0], "window_counts": [100]})


def test_a_full_disk_leaves_no_partial_results_and_the_same_command_then_finishes(dataset, tiny_model_dir,
                                                                                   small_disk):
    """A real full filesystem (a tmpfs): one line naming the file and the free space, no empty or half-written
    results.* (01426a4 left a zero-byte results.json and raised a bare OSError), and the same command finishes
    once space is freed."""
    import json
    import os

    from conftest import fill_disk

    disk = small_disk("1m")
    out = disk / "ev"
    config = EvalConfig(models=[str(tiny_model_dir)], data=str(dataset.path), seq_len=32, out=str(out),
                        inference=False)
    fill_disk(disk, leave=0)
    with pytest.raises(UserError) as caught:
        evaluate(config, progress=False)
    message = str(caught.value)
    assert "\n" not in message and "free on its disk" in message and "run the same command again" in message
    assert re.search(r"^cannot write the results table \S+/ev/results\.md: .*\(0 B free on its disk, it needs about "
                     r"\d+ B\)", message), message
    left = [p for p in out.rglob("*")] if out.exists() else []
    assert [p.name for p in left if p.name.startswith("results") or p.stat().st_size == 0] == [], left
    os.remove(disk / ".filler")
    evaluate(config, progress=False)
    saved = json.loads((out / "results.json").read_text())
    assert saved["results"][0]["model"] == str(tiny_model_dir)
    assert sorted(p.name for p in out.iterdir()) == ["comparison.png", "results.csv", "results.json", "results.md"]


def test_the_table_reads_offline_accuracy_against_chance_and_the_context_free_baseline():
    from inheritune.evaluate import _csv, side_by_side

    result = {"model": "m", "parameters": 2e6, "loss": 3.0, "loss_ci95": [2.9, 3.1], "perplexity": 20.1,
              "tokens": 100, "zero_shot": {"cloze": {"acc": 0.4, "acc_stderr": 0.02, "acc_ci": [0.357, 0.445],
                                                     "n": 500, "chance": 0.25,
                                                     "context_free": {"acc": 0.271, "heuristic": "least long",
                                                                      "n": 500}},
                                           "average": {"acc": 0.4}}}
    table = side_by_side([result])
    assert "cloze % [95% CI] (chance 25, best context-free heuristic 27.1)" in table
    assert "| 40.0 [35.7, 44.5] |" in table
    header, row = _csv([result]).splitlines()
    assert dict(zip(header.split(","), row.split(",")))["cloze_acc_context_free"] == "0.271"
