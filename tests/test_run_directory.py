"""What a training run may delete and how it goes back to a kept branch (issue 26's review): --overwrite deletes
only the names a run writes, and a checkpoint under the run's own ``abandoned/`` continues that run."""

import json
from pathlib import Path

import pytest
import torch

from test_reliability import _config, _steps

from inheritune.train import train
from inheritune.training.rundir import written_by_a_run
from inheritune.utils.errors import UserError


def test_only_the_temporaries_a_run_writes_count_as_the_runs():
    for name in ("final.tmp", "metrics.tmp", "attention.tmp", "ckpt-0000004.pt.tmp", ".final.old-1234",
                 "ckpt-0000004.pt", "final", "metrics.jsonl"):
        assert written_by_a_run(name), name
    for name in ("my-notes.tmp", "thesis.tmp", "final.tmp.bak", "ckpt-x.pt.tmp", "notes.txt", ".final.old-x"):
        assert not written_by_a_run(name), name


def test_overwrite_never_deletes_a_users_tmp_entries(dataset, tmp_path):
    out = tmp_path / "run"
    train(_config(dataset, out, max_steps=2, warmup_steps=0))
    (out / "my-notes.tmp").write_text("my notes")
    (out / "thesis.tmp").mkdir()
    (out / "thesis.tmp" / "chapter1.tex").write_text("chapter one")
    with pytest.raises(UserError, match="my-notes.tmp|thesis.tmp"):
        train(_config(dataset, out, max_steps=2, warmup_steps=0, seed=3, overwrite=True))
    assert (out / "my-notes.tmp").read_text() == "my notes"
    assert (out / "thesis.tmp" / "chapter1.tex").read_text() == "chapter one"
    # what a killed run leaves behind is still the run's own, and goes with --overwrite
    (out / "my-notes.tmp").unlink()
    (out / "thesis.tmp" / "chapter1.tex").unlink()
    (out / "thesis.tmp").rmdir()
    (out / "final.tmp").mkdir()
    (out / "ckpt-0000002.pt.tmp").write_bytes(b"partial")
    assert train(_config(dataset, out, max_steps=2, warmup_steps=0, seed=3, overwrite=True))["status"] == "finished"
    assert not (out / "final.tmp").exists() and not (out / "ckpt-0000002.pt.tmp").exists()


@pytest.mark.parametrize("overwrite", [False, True])
def test_going_back_to_a_kept_branch_continues_the_run_and_keeps_the_line_left(dataset, tmp_path, overwrite):
    out = tmp_path / "run"
    whole = train(_config(dataset, out))
    first_final = (out / "final" / "model.safetensors").read_bytes()
    train(_config(dataset, out, resume_from=str(out / "ckpt-0000002.pt")))  # step 2 again: 4, 6, final aside
    kept = out / "abandoned" / "after-step-2"
    assert _steps(kept) == [4, 6]
    second_final = (out / "final" / "model.safetensors").read_bytes()

    # back to the first line's step-4 checkpoint: it continues this run (not "another run"), with or without
    # --overwrite, and the line it leaves (the second one's 4, 6 and final) is kept aside, the branch resumed too
    again = train(_config(dataset, out, overwrite=overwrite, resume_from=str(kept / "ckpt-0000004.pt")))
    assert again["status"] == "finished" and again["steps"] == 6
    assert again["final_val_loss"] == pytest.approx(whole["final_val_loss"], abs=1e-6)  # the same trajectory
    assert _steps(kept) == [4, 6] and (kept / "final" / "model.safetensors").read_bytes() == first_final
    left = out / "abandoned" / "after-step-2-2"
    assert _steps(left) == [4, 6] and (left / "final" / "model.safetensors").read_bytes() == second_final
    assert _steps(out) == [2, 6]
    state = torch.load(out / "ckpt-0000006.pt", weights_only=True)
    assert [h["step"] for h in state["history"]] == list(range(0, 7))  # step 0: the loss before training
    logged = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(0, 7))


def test_the_curve_starts_at_step_0_with_the_loss_before_training(dataset, tmp_path):
    from inheritune.analysis.scoring import validation_loss
    from inheritune.data.dataset import TokenData

    out = tmp_path / "run"
    summary = train(_config(dataset, out, checkpoint_interval=0))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["step"] == 0 and records[0]["tokens"] == 0 and "loss" not in records[0]
    assert summary["history"][0] == {"step": 0, "val_loss": records[0]["val_loss"]}
    # the same number as scoring the untrained model on the same windows (same seed: same init)
    from inheritune.train import load_training_model

    model, _ = load_training_model(_config(dataset, tmp_path / "x"), TokenData(dataset))
    before = validation_loss(model.eval(), TokenData(dataset), seq_len=32, max_windows=4, batch_size=4)
    assert records[0]["val_loss"] == pytest.approx(before["loss"], abs=1e-5)
    assert records[0]["val_loss"] > summary["final_val_loss"]


def test_a_model_trained_from_a_runs_final_names_what_that_run_started_from(dataset, tmp_path, tiny_model_dir):
    from inheritune.inherit import InheritConfig, inherit

    def base_model(folder: Path) -> str | None:
        header = (folder / "README.md").read_text().split("---")[1]
        line = next((l for l in header.splitlines() if l.startswith("base_model:")), None)
        return line.split(":", 1)[1].strip() if line else None

    child = inherit(InheritConfig(reference=str(tiny_model_dir), layers="1", out=str(tmp_path / "child")))
    first = tmp_path / "first"
    train(_config(dataset, first, model=str(child), max_steps=2, warmup_steps=0, checkpoint_interval=0))
    assert base_model(first / "final") == "tiny-llama"  # the reference the child came from
    second = tmp_path / "second"
    train(_config(dataset, second, model=str(first / "final"), max_steps=2, warmup_steps=0, checkpoint_interval=0))
    assert base_model(second / "final") == "tiny-llama"  # not "final"
    plain = tmp_path / "plain"
    train(_config(dataset, plain, model=str(tiny_model_dir), max_steps=2, warmup_steps=0, checkpoint_interval=0))
    again = tmp_path / "again"
    train(_config(dataset, again, model=str(plain / "final"), max_steps=2, warmup_steps=0, checkpoint_interval=0))
    assert base_model(plain / "final") == base_model(again / "final") == "tiny-llama"
    scratch = tmp_path / "scratch"
    train(_config(dataset, scratch, max_steps=2, warmup_steps=0, checkpoint_interval=0))
    onward = tmp_path / "onward"
    train(_config(dataset, onward, model=str(scratch / "final"), max_steps=2, warmup_steps=0, checkpoint_interval=0))
    assert base_model(scratch / "final") is None and base_model(onward / "final") is None
    assert json.loads((onward / "final" / "inheritune.json").read_text())["base_model"] is None
