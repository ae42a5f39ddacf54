"""Blocks chosen by measured loss (analysis/calibration.py): the removal losses are what models actually built
without those blocks score, in every supported family; SLEB's steps are brute force's; the passes are counted."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from families import family_configs, trained_like
from inheritune.analysis.calibration import (as_report, calibration_rows, measure_removals, pass_counts,
                                             report_fields)
from inheritune.analysis.selection import parse_select, select_layers
from inheritune.data.dataset import TokenData, write_token_dataset
from inheritune.models.architectures import adapter_for
from inheritune.utils.errors import UserError

WINDOWS, T = 3, 16


@pytest.fixture
def data(tmp_path):
    """Train tokens 1..63, validation tokens 64..127: a calibration row holding a token >= 64 came from val."""
    rng = np.random.default_rng(0)
    return TokenData(write_token_dataset(tmp_path / "cal", train=rng.integers(1, 64, 4000),
                                         val=rng.integers(64, 128, 600), vocab_size=128, eos=0, name="synthetic",
                                         bos=0))


def _config(family: str, layers: int):
    config = family_configs()[family]
    config.num_hidden_layers = layers
    if getattr(config, "layer_types", None) is not None:  # Gemma 3: five local layers, then a global one
        config.layer_types = [config.layer_types[i % len(config.layer_types)] for i in range(layers)]
    return config


def _without(model, drop):
    """A copy of ``model`` built without the blocks ``drop``: removed from its ModuleList, with the config and the
    layer indices of the rest made consistent, as a user would build it."""
    pruned = copy.deepcopy(model)
    blocks = adapter_for(pruned.config).block_list(pruned)
    for index in sorted(drop, reverse=True):
        del blocks[index]
    pruned.config.num_hidden_layers = len(blocks)
    if getattr(pruned.config, "layer_types", None) is not None:
        pruned.config.layer_types = [t for i, t in enumerate(pruned.config.layer_types) if i not in drop]
    for index, block in enumerate(blocks):
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = index
    return pruned


@torch.no_grad()
def _own_loss(model, rows):
    logits = model(input_ids=rows[:, :-1]).logits.float()
    return float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1)))


@pytest.mark.parametrize("family", sorted(family_configs()))
def test_removal_losses_are_those_of_models_built_without_the_block(family, data):
    model = trained_like(_config(family, 6))
    measured = measure_removals(model, data, windows=WINDOWS, seq_len=T, seed=3, batch_size=2)
    rows = calibration_rows(data, WINDOWS, T, seed=3)
    assert measured["reference_loss"] == pytest.approx(_own_loss(model, rows), abs=1e-5)
    built = [_own_loss(_without(model, [i]), rows) for i in range(6)]
    assert measured["removal_loss"] == pytest.approx(built, abs=1e-5)
    # the measurement means something: the blocks matter, and not all equally
    assert max(abs(b - measured["reference_loss"]) for b in built) > 1e-3
    assert max(built) - min(built) > 1e-4


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_sleb_steps_are_brute_forces(family, data):
    model = trained_like(_config(family, 4), seed=1)
    measured = measure_removals(model, data, windows=WINDOWS, seq_len=T, sleb=True)
    rows = calibration_rows(data, WINDOWS, T)
    order, losses = measured["sleb"]["order"], measured["sleb"]["losses"]
    assert sorted(order + [measured["sleb"]["last"]]) == [0, 1, 2, 3]
    # step 1: the argmin of the one-shot removal losses
    one_shot = measured["removal_loss"]
    assert order[0] == int(np.argmin(one_shot)) and losses[0] == min(one_shot)
    # step 2: among models built without order[0] and one more block, the one of lowest loss
    rest = [b for b in range(4) if b != order[0]]
    brute = {b: _own_loss(_without(model, [order[0], b]), rows) for b in rest}
    assert order[1] == min(brute, key=brute.get)
    assert losses[1] == pytest.approx(brute[order[1]], abs=1e-5)
    gaps = sorted(brute.values())
    assert gaps[1] - gaps[0] > 1e-4  # a choice, not a tie broken by rounding
    assert losses[2] == pytest.approx(_own_loss(_without(model, order), rows), abs=1e-5)


def test_passes_follow_the_formula_and_are_counted_on_the_blocks(data):
    model = trained_like(_config("llama", 6))
    calls = []
    for block in model.model.layers:
        block.register_forward_hook(lambda *args: calls.append(1))
    # 3 windows in batches of 2: two batches, each running every pass once
    one_shot = measure_removals(model, data, windows=WINDOWS, seq_len=T, batch_size=2)["calibration"]
    assert (one_shot["block_passes"], one_shot["head_passes"]) == (6 + 15, 7)  # L + L(L-1)/2, L + 1
    assert len(calls) == 2 * 21
    calls.clear()
    sleb = measure_removals(model, data, windows=WINDOWS, seq_len=T, batch_size=2, sleb=True)["calibration"]
    # steps on n = 5, 4, 3, 2 kept blocks: (n - 1) + n(n - 1)/2 blocks and n heads each
    assert (sleb["block_passes"], sleb["head_passes"]) == (21 + 14 + 9 + 5 + 2, 7 + 5 + 4 + 3 + 2)
    assert len(calls) == 2 * 51
    assert {k: sleb[k] for k in ("block_passes", "head_passes", "full_passes")} == pass_counts(6, sleb=True)
    assert pass_counts(30, sleb=True)["block_passes"] == 4931  # SmolLM2: the figure in the default's comment


def test_calibration_windows_are_seeded_train_windows_and_recorded(data):
    rows = calibration_rows(data, 5, T, seed=7)
    assert rows.shape == (5, T + 1) and int(rows.max()) < 64  # train tokens only, never the val split's
    train = np.asarray(data.split("train"))
    assert all(any(np.array_equal(train[s:s + T + 1], row) for s in range(0, len(train), T + 1))
               for row in rows.numpy())  # whole, aligned, non-overlapping windows
    assert torch.equal(rows, calibration_rows(data, 5, T, seed=7))
    assert not torch.equal(rows, calibration_rows(data, 5, T, seed=8))
    bos = calibration_rows(data, 5, T, seed=7, bos_windows=True)
    assert (bos[:, 0] == 0).all() and torch.equal(bos[:, 1:], rows[:, :-1])
    model = trained_like(_config("llama", 2))
    model.train()
    record = measure_removals(model, data, windows=5, seq_len=T, seed=7, bos_windows=True)["calibration"]
    assert model.training  # put back as it was
    assert {k: record[k] for k in ("fingerprint", "split", "windows", "seq_len", "tokens", "seed", "bos_windows")} \
        == {"fingerprint": data.meta["fingerprint"], "split": "train", "windows": 5, "seq_len": T, "tokens": 5 * T,
            "seed": 7, "bos_windows": True}
    assert record["seconds"] > 0
    with pytest.raises(UserError, match="holds only"):
        calibration_rows(data, 4000, T)


def test_selection_reads_the_measurements(data):
    model = trained_like(_config("llama", 6))
    measured = measure_removals(model, data, windows=WINDOWS, seq_len=T, sleb=True)
    report = as_report(measured)
    rows, fields = report_fields(measured)
    assert [r["removal_loss"] for r in rows] == measured["removal_loss"] and fields["sleb"] == measured["sleb"]
    assert parse_select("sleb:3") == ("sleb", 3) and parse_select("loss:2") == ("loss", 2)
    by_loss = select_layers("loss", 3, 6, report)
    assert by_loss["layers"] == sorted(np.argsort(measured["removal_loss"])[::-1][:3].tolist())
    order = measured["sleb"]["order"]
    for k in range(1, 7):
        assert select_layers("sleb", k, 6, report)["layers"] == sorted(set(range(6)) - set(order[:6 - k]))
    assert select_layers("sleb", 1, 6, report)["layers"] == [measured["sleb"]["last"]]


def test_reasons_name_each_kept_block_and_the_calibration():
    layers = [{"removal_loss": v} for v in (5.0, 3.1, 3.0, 4.5, 3.05)]
    report = {"layers": layers, "sleb": {"order": [2, 4, 1, 0], "losses": [3.0, 3.2, 3.6, 4.9], "last": 3},
              "calibration": {"reference_loss": 2.9, "windows": 4, "seq_len": 32, "split": "train", "seed": 0,
                              "data": "data/english", "fingerprint": "f132045cf6e71d1d"}}
    by_loss = select_layers("loss", 2, 5, report)
    assert by_loss["layers"] == [0, 3]
    assert "0 (+2.1000), 3 (+1.6000)" in by_loss["reason"] and "drops 1-2, 4" in by_loss["reason"]
    assert "at most +0.2000" in by_loss["reason"] and "4 windows of 32 tokens" in by_loss["reason"]
    assert "f132045cf6e7" in by_loss["reason"]
    sleb = select_layers("sleb", 3, 5, report)
    assert sleb["layers"] == [0, 1, 3]
    assert "removed blocks 2, 4 in that order" in sleb["reason"] and "3.2000 nats" in sleb["reason"]
    assert "order 1, 0, 3" in sleb["reason"]


@pytest.mark.parametrize("method", ["loss", "sleb"])
def test_a_report_without_measurements_is_refused_in_one_line(method):
    report = {"layers": [{"block_influence": 0.1}] * 4}
    with pytest.raises(UserError, match="--data DATASET") as caught:
        select_layers(method, 2, 4, report)
    assert "\n" not in str(caught.value)
    with pytest.raises(UserError, match="--from-report, or measure them on the spot"):
        select_layers(method, 2, 4, None)


def test_inherit_run_and_analyze_choose_by_measured_loss(tmp_path, text_dir, gpt2_tokenizer):
    """inherit --select loss/sleb --data measures on the spot, analyze --removal records the same measurement for
    --from-report, and run --select loss sleb measures once and keeps the blocks the measurement names."""
    import json

    from conftest import small_reference
    from test_faults import _run_config

    from inheritune.analysis.attention import AnalyzeConfig
    from inheritune.analyze import analyze
    from inheritune.inherit import InheritConfig, inherit
    from inheritune.run import run

    data, ref = small_reference(tmp_path, text_dir, gpt2_tokenizer, layers=4, context=128)
    spot = inherit(InheritConfig(reference=str(ref), out=str(tmp_path / "spot"), select="sleb:2", data=str(data)))
    chosen = json.loads((spot / "inheritune.json").read_text())["selection"]
    assert chosen["method"] == "sleb" and chosen["calibration"]["split"] == "train"
    assert not chosen["calibration"]["bos_windows"]
    bos = inherit(InheritConfig(reference=str(ref), out=str(tmp_path / "bos"), select="loss:2", data=str(data),
                                bos_windows=True, calibration_windows=2, calibration_t=16))
    assert {k: json.loads((bos / "inheritune.json").read_text())["selection"]["calibration"][k]
            for k in ("bos_windows", "windows", "seq_len")} == {"bos_windows": True, "windows": 2, "seq_len": 16}
    report = analyze(AnalyzeConfig(model=str(ref), data=str(data), out=str(tmp_path / "analysis"), n=4, t=16,
                                   removal="sleb", progress=False))
    entry = report["models"][0]
    assert entry["sleb"]["order"] and all("removal_loss" in row for row in entry["layers"])
    assert "removal_loss" in (tmp_path / "analysis" / "layers.csv").read_text().splitlines()[0]
    again = inherit(InheritConfig(reference=str(ref), out=str(tmp_path / "again"), select="sleb:2",
                                  from_report=str(tmp_path / "analysis" / "report.json")))
    kept = json.loads((again / "inheritune.json").read_text())["selection"]
    assert kept["layers"] == chosen["layers"] == sorted(set(range(4)) - set(entry["sleb"]["order"][:2]))
    found = run(_run_config(data, ref, tmp_path / "run", select=["loss", "sleb"], baselines=[], steps=2,
                            calibration_windows=3, calibration_t=24))
    children = {r["model"]: r for r in found["rows"]}
    run_entry = json.loads((tmp_path / "run" / "analysis" / "report.json").read_text())["models"][0]
    assert (run_entry["calibration"]["windows"], run_entry["calibration"]["seq_len"]) == (3, 24)  # as asked
    by_loss = sorted(sorted(range(4), key=lambda i: -run_entry["layers"][i]["removal_loss"])[:2])
    assert json.loads((tmp_path / "run" / "children" / "loss-ce" / "child" / "inheritune.json").read_text())[
        "layers"] == by_loss and "child loss" in children and "child sleb" in children
    assert json.loads((tmp_path / "run" / "children" / "sleb-ce" / "child" / "inheritune.json").read_text())[
        "layers"] == sorted(set(range(4)) - set(run_entry["sleb"]["order"][:2]))


def test_analyze_removal_without_a_dataset_is_refused_before_the_analysis(tmp_path):
    """Refused first (the model path here does not even exist: an analysis run first would fail on that)."""
    from inheritune.analysis.attention import AnalyzeConfig
    from inheritune.analyze import analyze

    with pytest.raises(UserError, match="--removal measures on a prepared dataset's train split"):
        analyze(AnalyzeConfig(model=str(tmp_path / "no-model"), removal="sleb", data=str(tmp_path)), progress=False)
