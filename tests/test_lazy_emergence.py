"""The emergence search's driver and configs at a tiny budget (two cells, 12-layer references), and the
positive control's synthetic task."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments" / "lazy_emergence"))


def test_emergence_search_smoke(tmp_path, text_dir):
    result = subprocess.run([sys.executable, str(ROOT / "experiments" / "lazy_emergence" / "search.py"), "--out",
                             str(tmp_path / "work"), "--docs", str(tmp_path / "docs"), "--corpus", str(text_dir),
                             "--smoke", "--budget", "0.005", "--cells", "plain-scaled", "bos-noscale-hot-decay"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    results = json.loads((tmp_path / "docs" / "results.json").read_text())
    assert [r["cell"] for r in results] == ["plain-scaled", "bos-noscale-hot-decay"]
    for r in results:
        assert r["layers"] == 12 and len(r["max_rank"]) == 12
        assert r["status"] == "finished" or r["status"].startswith("stopped: flat")
        assert (tmp_path / "docs" / f"emergence-{r['cell']}.png").is_file()
    assert results[1]["settings"]["bos"] and not results[0]["settings"]["bos"]
    assert "| plain-scaled | 12 | off | on |" in (tmp_path / "docs" / "table.md").read_text()
    again = subprocess.run([sys.executable, str(ROOT / "experiments" / "lazy_emergence" / "search.py"), "--out",
                            str(tmp_path / "work"), "--docs", str(tmp_path / "docs"), "--corpus", str(text_dir),
                            "--smoke", "--budget", "0.005", "--cells", "plain-scaled"],
                           capture_output=True, text=True, cwd=tmp_path)
    assert again.returncode == 0 and "cell plain-scaled:" in again.stdout  # finished cells are not trained again
    assert "scratch:gpt2" not in again.stdout


def test_the_synthetic_task_copies_back_after_triggers_and_follows_its_chain():
    from synthetic import TRIGGERS, bigram_copy_sequences

    rows = bigram_copy_sequences(50, 64, seed=1, table_seed=0, successors=3)
    other = bigram_copy_sequences(50, 64, seed=2, table_seed=0, successors=3)
    assert rows.min() >= 1 and rows.max() <= 30  # no BOS inside: --bos-windows puts it at position 0
    after_trigger = np.isin(rows[:, 1:-1], TRIGGERS)
    assert (rows[:, 2:][after_trigger] == rows[:, :-2][after_trigger]).all()
    successors = {}
    for seq in np.concatenate([rows, other]):
        for a, b, c in zip(seq[:-2], seq[1:-1], seq[2:]):
            if b not in TRIGGERS:
                successors.setdefault(b, set()).add(c)
    assert max(len(s) for s in successors.values()) <= 3  # one transition table for every split


def test_positive_control_a_bos_sink_forms_and_the_tracker_sees_it(tmp_path):
    """The whole chain (--bos-windows, training, --track-attention, states) on the synthetic copy task: the one
    head parks on BOS between its copies. Measured: by step 250-400 of 500 in three of three seeds, first-token
    mass 0.92-0.95, about 18 s each on 2 cores."""
    from synthetic import control_config, make_dataset, sink_formed

    from inheritune.analysis.tracker import read_track
    from inheritune.train import train

    data = make_dataset(tmp_path / "data")
    summary = train(control_config(data, tmp_path / "run"))
    records = read_track(tmp_path / "run" / "attention.jsonl")
    found = sink_formed(records)
    assert found["formed"] and found["final_max_first_token_mass"] > 0.8, found
    assert records[0]["layers"][0]["state"] != "lazy"  # it formed during training, not at the start
    assert found["final_states"] == ["lazy"] and summary["final_val_loss"] < 3.3  # and the copy was learned


def test_a_cell_on_more_text_keeps_the_val_windows_and_says_its_epochs(tmp_path, text_dir):
    extra = tmp_path / "extra.jsonl"
    extra.write_text("".join(json.dumps({"text": " ".join(f"Extra page {i} line {j} about widgets {i + j}."
                                                          for j in range(20))}) + "\n" for i in range(30)))
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "lazy_emergence" / "search.py"), "--out",
                           str(tmp_path / "w"), "--docs", str(tmp_path / "docs"), "--corpus", str(text_dir), "--smoke",
                           "--budget", "0.005", "--early-stop", "false", "--cells", "bos-noscale-hot-decay", "--extra",
                           str(extra)], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "the same" in done.stdout and "of extra.jsonl" in done.stdout  # val split checked byte for byte
    (result,) = json.loads((tmp_path / "docs" / "results.json").read_text())
    base, grown = (json.loads((tmp_path / "w" / name / "meta.json").read_text())
                   for name in ("data-bpe300", "data-bpe300+extra"))
    assert result["cell"] == "bos-noscale-hot-decay+extra" and result["settings"]["extra"] == str(extra)
    assert result["unique_train_tokens"] == grown["train_tokens"] == base["train_tokens"] + grown["train_extra_tokens"]
    assert (tmp_path / "w" / "data-bpe300" / "val.bin").read_bytes() == \
        (tmp_path / "w" / "data-bpe300+extra" / "val.bin").read_bytes()
    table = (tmp_path / "docs" / "table.md").read_text()
    assert f"| {result['tokens'] / result['unique_train_tokens']:.2f} |" in table


def test_the_converging_language_has_the_floor_it_claims():
    """converge.py's chain: its entropy rate (from the stationary pairs) is the mean loss of the true chain on a long
    sample, and the floor on BOS windows is the true chain's own loss there, first two targets included."""
    from converge import BOS, chain_table, entropy_rate, oracle_loss, sample, stationary_pairs

    from inheritune.data.windows import fixed_windows, window_rows

    table = chain_table(0)
    nexts, probs = table
    pairs = stationary_pairs(table)
    stream = sample(100_000, 5, table)
    losses = [-np.log(probs[a, b][list(nexts[a, b]).index(c)]) for a, b, c in zip(stream[:-2], stream[1:-1], stream[2:])]
    rate = entropy_rate(table, pairs)
    assert abs(np.mean(losses) - rate) < 0.01 and 0.5 < rate < np.log(4)  # 4 successors: below ln 4
    floor = oracle_loss(stream, 16, 8, table, pairs)
    targets = window_rows(stream, fixed_windows(stream, 16, 8), 16, BOS).numpy()[:, 1:]
    marginal = pairs.sum(0)
    by_hand = []
    for row in targets:
        by_hand.append(-np.log(marginal[row[0]]))
        by_hand.append(-np.log(sum(pairs[a, row[0]] * probs[a, row[0]][list(nexts[a, row[0]]).index(row[1])]
                                   for a in range(1, 33) if row[1] in nexts[a, row[0]]) / marginal[row[0]]))
        by_hand += [-np.log(probs[a, b][list(nexts[a, b]).index(c)]) for a, b, c in zip(row[:-2], row[1:-1], row[2:])]
    assert floor == pytest.approx(np.mean(by_hand), rel=1e-9) and floor > rate


def test_converge_smoke(tmp_path):
    script = ROOT / "experiments" / "lazy_emergence" / "converge.py"
    argv = [sys.executable, str(script), "--smoke", "--out", str(tmp_path / "w"), "--docs", str(tmp_path / "d"),
            "--steps", "8", "--layers", "4", "--depths", "1"]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = json.loads((tmp_path / "d" / "results.json").read_text())
    assert sorted(results["models"]) == ["1", "4"] and len(results["models"]["4"]["max_rank"]) == 4
    models = results["models"]
    for depth, row in models.items():  # each row is its own run's, and the depth needed follows from them
        assert row["val_loss"] == json.loads((tmp_path / "w" / f"layers-{depth}" / "summary.json").read_text())[
            "final_val_loss"]
    assert results["depth_needed"] == (1 if models["1"]["val_loss"] <= models["4"]["val_loss"] + 0.01 else 4)
    assert (tmp_path / "d" / "emergence.png").is_file()
    again = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path)  # finished models are read back
    assert again.returncode == 0 and "final val loss" not in again.stdout and "4 layers: val loss" in again.stdout


# Runs converge.py with train's checkpoint write replaced by a SIGKILL of the process: a real kill at the moment
# the first checkpoint would be written, after run.json, the first metrics and the attention records.
KILLED_AT_FIRST_CHECKPOINT = """
import os, runpy, signal, sys
import inheritune.train
inheritune.train._checkpoint = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_converge_restarts_a_model_killed_before_its_first_checkpoint(tmp_path):
    """Killed before the reference's first checkpoint, the rerun starts that model cleanly and finishes every model;
    nothing of the killed start is kept (each step logged once). Before the fix the rerun stopped with a traceback:
    the folder "already holds a run"."""
    script = ROOT / "experiments" / "lazy_emergence" / "converge.py"
    argv = [str(script), "--smoke", "--steps", "8", "--layers", "4", "--depths", "1", "--out", str(tmp_path / "w"),
            "--docs", str(tmp_path / "d")]
    killed = subprocess.run([sys.executable, "-c", KILLED_AT_FIRST_CHECKPOINT, *argv], capture_output=True, text=True)
    reference = tmp_path / "w" / "layers-4"
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert [json.loads(line)["step"] for line in (reference / "metrics.jsonl").read_text().splitlines()] == [0, 1]
    assert (reference / "run.json").is_file() and (reference / "attention.jsonl").stat().st_size > 0
    assert not list(reference.glob("ckpt-*")) and not (tmp_path / "w" / "layers-1").exists()
    again = subprocess.run([sys.executable, *argv], capture_output=True, text=True)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    logged = [json.loads(line)["step"] for line in (reference / "metrics.jsonl").read_text().splitlines()]
    tracked = [json.loads(line)["step"] for line in (reference / "attention.jsonl").read_text().splitlines()]
    assert logged == list(range(9)) and tracked == sorted(set(tracked)) and tracked[-1] == 8
    summary = json.loads((reference / "summary.json").read_text())
    assert summary["status"] == "finished" and [h["step"] for h in summary["history"]] == list(range(9))
    results = json.loads((tmp_path / "d" / "results.json").read_text())
    assert sorted(results["models"]) == ["1", "4"] and results["models"]["4"]["val_loss"] == summary["final_val_loss"]
