"""Smoke run of experiments/budget_curve at two tiny budgets on a tiny 8-layer Llama: one run per budget (and
seed at the smallest), the thinned grid above --thin-above, and a table whose intervals are the runs' own."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_llama

from inheritune.analysis.scoring import paired_delta

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "budget_curve" / "budget.py"


def test_the_budget_grid_runs_resumes_and_reports_paired_intervals(tmp_path, dataset, gpt2_tokenizer):
    reference = tmp_path / "ref"
    tiny_llama(layers=8).save_pretrained(reference)
    gpt2_tokenizer.save_pretrained(reference)
    out, docs = tmp_path / "out", tmp_path / "docs"
    command = [sys.executable, str(SCRIPT), "--smoke", "--reference", str(reference), "--data", str(dataset),
               "--out", str(out), "--docs", str(docs), "--k", "4", "--budgets", "128", "64", "--seeds", "1", "2",
               "--methods", "first", "bi", "--thin-above", "64", "--thin-methods", "first", "--baselines", "random",
               "--lr-check", "0.003"]
    # the full grid at (64, seed 1); first-K with a random baseline at (64, seed 2); first-K alone at 128; and
    # first-K by CE at 128 with lr 3e-3
    subprocess.run(command, check=True, capture_output=True, text=True)
    assert sorted(p.name for p in out.iterdir()) == ["t128-seed1", "t128-seed1-lr0.003", "t64-seed1", "t64-seed2"]
    rows = json.loads((docs / "budget.json").read_text())
    at = {(r["tokens"], r["seed"]): sorted(x["model"] for x in rows if (x["tokens"], x["seed"]) == (r["tokens"], r["seed"]))
          for r in rows}
    assert at[(64, 1)] == ["bi ce", "bi kd", "first ce", "first kd", "random init ce"]
    assert at[(64, 2)] == ["first ce", "first kd", "random init ce"]
    assert at[(128, 1)] == ["first ce", "first ce, lr 0.003", "first kd"]  # above --thin-above: no baselines
    check = json.loads((out / "t128-seed1-lr0.003" / "state.json").read_text())
    main = json.loads((out / "t128-seed1" / "state.json").read_text())
    assert json.loads((out / "t128-seed1-lr0.003" / "run.json").read_text())["train"]["lr"] == 0.003
    lr_row = next(r for r in rows if r["model"] == "first ce, lr 0.003")
    paired = paired_delta(check["round-0-l4/eval"], main["child/first-ce/eval"], 2000)
    assert lr_row["vs_first"]["delta"] == pytest.approx(paired["delta"]) and lr_row["vs_first"]["delta"] != 0
    state = json.loads((out / "t64-seed1" / "state.json").read_text())
    expected = paired_delta(state["child/bi-kd/eval"], state["child/first-kd/eval"], 2000)
    bi_kd = next(r for r in rows if (r["tokens"], r["seed"], r["model"]) == (64, 1, "bi kd"))
    assert bi_kd["vs_first"]["delta"] == pytest.approx(expected["delta"])  # against first-K healed the same way
    gain = paired_delta(state["child/bi-kd/eval"], state["child/bi-ce/eval"], 2000)
    assert bi_kd["kd_minus_ce"]["ci95"] == pytest.approx(gain["ci95"])  # KD against CE on the same blocks
    assert bi_kd["flops"] > next(r for r in rows if (r["tokens"], r["seed"], r["model"]) == (64, 1, "bi ce"))["flops"]
    assert "| 64 | 1 | " in (docs / "budget.md").read_text() and (docs / "budget.png").stat().st_size > 0
    # a rerun finds every run finished: nothing is trained again, the table is the same
    finals = {f: f.stat().st_mtime_ns for f in out.glob("*/children/*/train/final/*")}
    assert len(finals) >= 3 * 2
    subprocess.run(command, check=True, capture_output=True, text=True)
    assert {f: f.stat().st_mtime_ns for f in out.glob("*/children/*/train/final/*")} == finals
    assert json.loads((docs / "budget.json").read_text()) == rows


def test_every_baseline_is_its_own_row_with_its_own_healing(tmp_path):
    """Each baseline of `run` gets its own row: random init healed by CE and by KD (a "kd - ce" pair), and the
    others under their own names. Before the fix every baseline but kd was "random init ce", each overwriting the
    last, so the table showed one of them under the wrong name."""
    spec = importlib.util.spec_from_file_location("budget", SCRIPT)
    budget = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(budget)
    sums = {"child/first-ce": [50.0, 52, 54, 56], "child/first-kd": [40.0, 41, 42, 43],
            "baseline/random": [70.0, 71, 72, 73], "baseline/kd": [60.0, 62, 61, 63],
            "baseline/random-2x": [65.0, 66, 67, 68], "baseline/stacking": [55.0, 57, 56, 58],
            "baseline/half-width": [45.0, 44, 47, 46]}
    state = {}
    for i, (key, window_sums) in enumerate(sums.items()):
        state[f"{key}/eval"] = {"loss": sum(window_sums) / 40, "loss_ci95": [0.0, 9.9], "window_sums": window_sums,
                                "window_counts": [10] * 4, "window_starts": [0, 16, 32, 48]}
        state[f"{key}/train"] = {"tokens": 256, "training_flops": 1e6 * (i + 1), "train_seconds": 2.0}
    state["baseline/stacking/small/train"] = {"tokens": 256, "training_flops": 1.0}  # a stage, not a model
    folder = tmp_path / "out" / "t256-seed1"
    folder.mkdir(parents=True)
    (folder / "state.json").write_text(json.dumps(state))
    (folder / "report.json").write_text("{}")
    budget.collect(tmp_path / "out", tmp_path / "docs", [256], [1])
    rows = {r["model"]: r for r in json.loads((tmp_path / "docs" / "budget.json").read_text())}
    assert sorted(rows) == ["first ce", "first kd", "half-width ce", "random init 2x budget ce", "random init ce",
                            "random init kd", "stacking ce"]
    # each row carries its own numbers (loss = window sums / 40 tokens), compared by hand
    assert [rows[n]["loss"] for n in ("random init ce", "random init 2x budget ce", "stacking ce", "half-width ce")] \
        == [286 / 40, 266 / 40, 226 / 40, 182 / 40]
    assert rows["stacking ce"]["flops"] == 6e6 and rows["random init ce"]["flops"] == 3e6
    assert rows["stacking ce"]["vs_first"]["delta"] == pytest.approx((226 - 212) / 40)  # against first-K by CE
    assert rows["random init kd"]["vs_first"]["delta"] == pytest.approx((246 - 166) / 40)  # against first-K by KD
    assert rows["random init kd"]["kd_minus_ce"]["delta"] == pytest.approx((246 - 286) / 40)  # random init, kd - ce
    assert rows["half-width ce"]["kd_minus_ce"] is None and rows["first kd"]["vs_best"] is None  # first kd is best
