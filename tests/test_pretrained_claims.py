"""Smoke run of experiments/pretrained_claims at a tiny budget on a tiny 8-layer Llama (no SmolLM2, no Gemma)."""

import json
import subprocess
import sys
from pathlib import Path

from conftest import tiny_llama

from inheritune.data.dataset import PrepareConfig, prepare

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "pretrained_claims" / "claims.py"


def test_the_experiment_runs_every_group_and_reruns_to_the_same_numbers(tmp_path, dataset, gpt2_tokenizer, text_dir,
                                                                        gpt2_tokenizer_dir):
    reference = tmp_path / "ref"
    tiny_llama(layers=8).save_pretrained(reference)
    gpt2_tokenizer.save_pretrained(reference)
    command = [sys.executable, str(SCRIPT), "--smoke", "--reference", str(reference), "--data", str(dataset),
               "--out", str(tmp_path / "out"), "--docs", str(tmp_path / "docs")]
    made = subprocess.run(command, check=True, capture_output=True, text=True)
    assert made.stdout.count("] val loss") >= 12  # every child trained once and said so
    results = json.loads((tmp_path / "docs" / "results.json").read_text())
    assert set(results["which"]) == {"first", "bi", "angular", "drop-lazy", "spread", "random"}
    assert results["which"]["first"]["layers"] == [0, 1, 2, 3]
    assert results["which"]["spread"]["layers"] == [0, 2, 5, 7]
    assert results["transfer"]["last"]["layers"] == [4, 5, 6, 7] and results["transfer"]["random"]["init"] == "random"
    assert {results["ablation"][m]["copy"] for m in ("attention", "mlp", "attention-mlp")} == \
        {"attention", "mlp", "attention-mlp"}
    for group in ("which", "transfer", "ablation"):
        for row in results[group].values():  # every child trained the same budget with the chosen recipe
            assert row["tokens"] == results["which"]["first"]["tokens"] > 0
            assert (row["lr"], row["batch"]) == (results["chosen"]["lr"], results["chosen"]["batch"])
    for name in ("tables.md", "curves.png", "maxrank_by_depth.png"):
        assert (tmp_path / "docs" / name).stat().st_size > 0
    first = (tmp_path / "docs" / "tables.md").read_text()
    # a rerun finds every child done: it trains nothing and writes the same tables
    rerun = subprocess.run(command, check=True, capture_output=True, text=True)
    assert "] val loss" not in rerun.stdout and "starting it again" not in rerun.stdout
    assert (tmp_path / "docs" / "tables.md").read_text().split("Stage times")[0] == first.split("Stage times")[0]
    # a fresh seeded run in new folders at the lr and batch the sweep chose (no sweep) retrains those children from
    # nothing and gets the same numbers
    chosen = results["chosen"]
    given = [*command[:-4], "--out", str(tmp_path / "out2"), "--docs", str(tmp_path / "docs2"),
             "--lr", str(chosen["lr"]), "--batch", str(chosen["batch"])]
    fresh = subprocess.run(given, check=True, capture_output=True, text=True)
    assert fresh.stdout.count("] val loss") >= 12  # which, transfer and ablation trained again here
    again = json.loads((tmp_path / "docs2" / "results.json").read_text())
    assert again["sweep"] == {}
    for method in results["which"]:
        assert again["which"][method]["after"]["loss"] == results["which"][method]["after"]["loss"], method
    assert "**Verdict.**" in (tmp_path / "docs2" / "tables.md").read_text()
    # the same --out with other data (and another lr): a work folder of its own, trained and scored afresh; the
    # first configuration's children are neither reused nor deleted nor touched
    kept = {f: f.stat().st_mtime_ns for f in (tmp_path / "out2").rglob("*") if f.is_file()}
    other_data = prepare(PrepareConfig(input=[str(text_dir)], out=str(tmp_path / "other"),
                                       tokenizer=str(gpt2_tokenizer_dir), val_fraction=0.3), progress=False)
    other = [*given[:-10], "--data", str(other_data), "--out", str(tmp_path / "out2"), "--docs",
             str(tmp_path / "docs3"), "--lr", str(chosen["lr"] * 2), "--batch", str(chosen["batch"])]
    rerun = subprocess.run(other, check=True, capture_output=True, text=True)
    assert rerun.stdout.count("] val loss") >= 12
    assert all(f.is_file() and f.stat().st_mtime_ns == t for f, t in kept.items())
    assert len([d for d in (tmp_path / "out2").iterdir() if d.is_dir()]) == 2
    changed = json.loads((tmp_path / "docs3" / "results.json").read_text())
    assert all(row["lr"] == chosen["lr"] * 2 for row in changed["which"].values())
    assert changed["ref_score"]["loss"] != again["ref_score"]["loss"]  # scored on the other data's val split
