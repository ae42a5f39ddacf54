"""run --search halving: the rungs, the schedule's rules, the winner against a standalone training, kill -9."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from test_faults import _run_config, reference_setup  # noqa: F401 (a fixture)

from inheritune.analysis.selection import ranges
from inheritune.training.runconfig import check_schedule, rung_steps
from inheritune.utils.errors import UserError


def test_rungs_divide_the_budget_by_eta_until_the_finalists_train_it_all():
    assert rung_steps(4, 2, 8) == [4, 8]
    assert rung_steps(20, 2, 64) == [4, 8, 16, 32, 64]  # 20 -> 10 -> 5 -> 3 -> 2 finalists
    assert rung_steps(9, 3, 90) == [30, 90]
    assert rung_steps(2, 2, 10) == [10]  # two candidates: one rung, both to the end


def test_a_schedule_that_would_score_a_rung_mid_decay_or_mid_warmup_is_refused(tmp_path):
    config = _run_config(tmp_path, tmp_path, tmp_path / "run", steps=20, decay_fraction=0.6)
    with pytest.raises(UserError, match=r"starts the decay at step 8, before the last rung begins \(step 10\)"):
        check_schedule(config, rung_steps(4, 2, 20), 20)
    config = _run_config(tmp_path, tmp_path, tmp_path / "run", steps=20, warmup_steps=12)
    with pytest.raises(UserError, match=r"warmup \(12 steps\) must end before the first rung"):
        check_schedule(config, rung_steps(4, 2, 20), 20)
    with pytest.raises(UserError, match="too short for 5 rungs"):
        check_schedule(config, rung_steps(20, 2, 8), 8)
    # refused when the run's config is made, before any reference is measured
    with pytest.raises(UserError, match="starts the decay at step 8"):
        _run_config(tmp_path, tmp_path, tmp_path / "run", select=["first", "spread"], heal=["ce", "kd"],
                    search="halving", steps=20, decay_fraction=0.6)
    with pytest.raises(UserError, match="needs at least two candidates"):
        _run_config(tmp_path, tmp_path, tmp_path / "run", search="halving", steps=20)
    with pytest.raises(UserError, match="with 2 candidates at --eta 2 has no cut to make"):
        _run_config(tmp_path, tmp_path, tmp_path / "run", heal=["ce", "kd"], search="halving", steps=20)


SEARCH = dict(select=["first", "spread"], heal=["ce", "kd"], search="halving", steps=8, baselines=[])


def _argv(data, ref, out):
    return [sys.executable, "-m", "inheritune", "run", "--reference", str(ref), "--data", str(data), "--out", str(out),
            "--start", "2", "--steps", "8", "--seq-len", "16", "--micro-batch-size", "4", "--eval-windows", "8",
            "--eval-interval", "0", "--lr", "1e-3", "--analyze-n", "4", "--analyze-t", "16", "--compare-analysis",
            "false", "--progress", "false", "--device", "cpu", "--select", "first", "spread", "--heal", "ce", "kd",
            "--search", "halving", "--baselines", "none"]


def _losses(search: dict) -> list[list[tuple[str, float]]]:
    return [[(c["name"], c["val_loss"]) for c in rung["candidates"]] for rung in search["rungs"]]


def test_search_end_to_end_equals_a_standalone_training_and_survives_kill_9(reference_setup, tmp_path):
    from inheritune.inherit import InheritConfig, inherit
    from inheritune.run import run
    from inheritune.train import TrainConfig, train

    data, ref = reference_setup
    out = tmp_path / "search"
    report = run(_run_config(data, ref, out, **SEARCH))
    search = report["search"]
    assert [r["tokens"] for r in search["rungs"]] == [4 * 64, 8 * 64]
    assert [len(r["candidates"]) for r in search["rungs"]] == [4, 2] and search["candidates"] == 4
    first, second = search["rungs"]
    assert [c["name"] for c in first["candidates"] if c["kept"]] == [c["name"] for c in second["candidates"]]
    losses = [c["val_loss"] for c in first["candidates"]]
    assert losses == sorted(losses) and first["candidates"][0]["delta_vs_best"] is None
    assert search["winner"] == second["candidates"][0]["name"]
    # spent: 2 candidates x 4 steps + 2 x 8 of a grid of 4 x 8 (KD candidates cost more per step)
    assert 0.5 < search["fraction_of_grid"] < 0.9 and "## Search" in (out / "report.md").read_text()
    shown = (out / "report.md").read_text()
    for c in second["candidates"]:  # each finalist's row names the blocks its cut kept
        kept = json.loads((out / "children" / c["name"].replace("+", "-") / "child" / "inheritune.json").read_text())
        blocks = ranges(kept["layers"])
        assert f"| {c['name']} | {blocks} |" in shown and f"{c['name']}: {blocks}" in shown  # table, "Blocks kept"
    for c in first["candidates"]:  # the candidates that left kept no checkpoint; the finalists have a model
        folder = out / "children" / c["name"].replace("+", "-") / "train"
        assert not list(folder.glob("ckpt-*.pt")) and (folder / "final").is_dir() == c["kept"]

    method, heal = search["winner"].split("+")
    child = inherit(InheritConfig(reference=str(ref), out=str(tmp_path / "alone" / "child"), select=f"{method}:2",
                                  seed=1337))
    extra = {"teacher": str(ref), "kd_alpha": 0.6, "kd_temperature": 1.0} if heal == "kd" else {}
    train(TrainConfig(model=str(child), data=str(data), out=str(tmp_path / "alone" / "train"), max_steps=8,
                      seq_len=16, micro_batch_size=4, eval_windows=8, eval_interval=0, lr=1e-3, schedule="wsd",
                      progress=False, device="cpu", checkpoint_interval=10, **extra))
    alone = load_file(str(tmp_path / "alone" / "train" / "final" / "model.safetensors"))
    found = load_file(str(out / "children" / f"{method}-{heal}" / "train" / "final" / "model.safetensors"))
    assert max((alone[k] - found[k]).abs().max().item() for k in alone) <= 1e-6

    killed_out = tmp_path / "killed"
    process = subprocess.Popen(_argv(data, ref, killed_out), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while process.poll() is None and time.monotonic() < deadline:  # mid rung 1: two candidates done, a third training
        state = killed_out / "state.json"
        if state.is_file() and state.read_text().count("search/rung-1/") >= 5:
            break
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -9 and not (killed_out / "report.json").exists()
    again = subprocess.run(_argv(data, ref, killed_out), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    resumed = json.loads((killed_out / "report.json").read_text())["search"]
    assert resumed["winner"] == search["winner"]
    for ours, theirs in zip(_losses(resumed), _losses(search)):
        assert [n for n, _ in ours] == [n for n, _ in theirs]
        assert max(abs(a - b) for (_, a), (_, b) in zip(ours, theirs)) <= 1e-6
    again_model = load_file(str(killed_out / "children" / f"{method}-{heal}" / "train" / "final" / "model.safetensors"))
    assert max((again_model[k] - found[k]).abs().max().item() for k in found) <= 1e-6


def test_a_shared_teacher_cache_pays_each_batch_once_and_changes_no_loss(dataset, tmp_path, tiny_model_dir):
    from test_train import _config, _weights

    from inheritune.train import train

    def kd(out, **kw):
        return _config(dataset, out, model=str(tiny_model_dir), max_steps=6, teacher=str(tiny_model_dir),
                       checkpoint_interval=3, **kw)

    cache = tmp_path / "cache"
    alone = train(kd(tmp_path / "alone"))
    first = train(kd(tmp_path / "first", teacher_cache=str(cache)))
    files = sorted(p.name for p in next(cache.iterdir()).glob("*.npy"))
    assert files == [f"step-{s:07d}-row-00000.npy" for s in range(6)]  # one entry per micro-batch, written once
    stamps = {p.name: p.stat().st_mtime_ns for p in next(cache.iterdir()).glob("*.npy")}
    second = train(kd(tmp_path / "second", teacher_cache=str(cache), lr=1e-3))  # another student, same batches
    assert {p.name: p.stat().st_mtime_ns for p in next(cache.iterdir()).glob("*.npy")} == stamps  # only read
    again = train(kd(tmp_path / "again", lr=1e-3))
    assert alone["final_val_loss"] == first["final_val_loss"] and second["final_val_loss"] == again["final_val_loss"]
    a, b = _weights(tmp_path / "again"), _weights(tmp_path / "second")
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = train(kd(tmp_path / "other", teacher_cache=str(cache), seed=7))  # other batches: a cache of its own
    assert len(list(cache.iterdir())) == 2 and other["status"] == "finished"


def test_the_teacher_cache_says_when_it_is_off(dataset, tmp_path, tiny_model_dir, capsys):
    from test_train import _config

    from inheritune.train import train

    plain = train(_config(dataset, tmp_path / "plain", model=str(tiny_model_dir), max_steps=2, eval_interval=0,
                          teacher=str(tiny_model_dir), teacher_cache=str(tmp_path / "cache"), chunked_loss=False))
    assert plain["status"] == "finished" and not (tmp_path / "cache").exists()
    assert "--teacher-cache is off for this training" in capsys.readouterr().out


def test_a_full_disk_turns_the_teacher_cache_off_and_the_training_goes_on(dataset, tmp_path, tiny_model_dir,
                                                                        small_disk, capsys):
    """On a real full disk (a tmpfs): a cache that fills part way stops storing, one that cannot even write its
    setting stores nothing; both trainings finish with the loss of a training without a cache, and no
    half-written entry or staging file is left."""
    from conftest import fill_disk
    from test_train import _config

    from inheritune.train import train

    def kd(out, **kw):
        return _config(dataset, out, model=str(tiny_model_dir), max_steps=6, teacher=str(tiny_model_dir),
                       checkpoint_interval=0, **kw)

    import io

    import numpy as np
    from transformers import AutoConfig

    alone = train(kd(tmp_path / "alone"))
    sizing = io.BytesIO()  # an entry: the teacher's final hidden states of one micro-batch (4 x 32 x d), as .npy
    np.save(sizing, np.zeros((4, 32, AutoConfig.from_pretrained(tiny_model_dir).hidden_size), np.float32))
    entry = len(sizing.getvalue())
    page = 4096
    pages = -(-entry // page)
    for leave, stored in ((page * (1 + 2 * pages) + page // 2, (1, 5)), (0, (0, 0))):
        disk = small_disk("1m")
        fill_disk(disk, leave=leave)
        capsys.readouterr()
        cached = train(kd(tmp_path / f"cached-{leave}", teacher_cache=str(disk / "cache")))
        said = capsys.readouterr().out
        assert cached["status"] == "finished" and cached["final_val_loss"] == alone["final_val_loss"], said
        assert said.count("the teacher cache is off for this training") == 1
        assert "cannot write the teacher cache" in said and "free on its disk" in said
        entries = list(disk.rglob("step-*.npy"))
        assert stored[0] <= len(entries) <= stored[1], [p.name for p in entries]
        assert all(p.stat().st_size == entry for p in entries)  # whole entries only
        assert not [p for p in disk.rglob("*") if ".tmp-" in p.name]


def test_a_finished_rungs_teacher_entries_are_pruned(tmp_path):
    """Later rungs train later steps only: the entries of steps before a rung's end go, the rest stay."""
    from inheritune.training.teacher_cache import prune

    folder = tmp_path / "teacher-cache" / "0123456789abcdef"
    folder.mkdir(parents=True)
    (folder / "setting.json").write_text("{}")
    for step in (0, 3, 4, 9):
        for suffix in ("", "-bf16"):
            (folder / f"step-{step:07d}-row-00000{suffix}.npy").write_bytes(b"x")
    assert prune(tmp_path / "teacher-cache", 4) == 4
    assert sorted(p.name for p in folder.iterdir()) == ["setting.json", "step-0000004-row-00000-bf16.npy",
                                                        "step-0000004-row-00000.npy", "step-0000009-row-00000-bf16.npy",
                                                        "step-0000009-row-00000.npy"]
    assert prune(tmp_path / "missing", 4) == 0


def test_a_search_trains_its_baselines_on_the_candidates_schedule(tmp_path, monkeypatch):
    """One table, one schedule: under --search a baseline trains on warmup-stable-decay like the candidates (also
    where --schedule still trains a from-scratch reference); without a search, on the run's schedule."""
    import inheritune.run as run_module

    asked = []
    monkeypatch.setattr(run_module, "_inherit_stage", lambda *a, **k: tmp_path / "child")
    monkeypatch.setattr(run_module, "_train_stage",
                        lambda *a, **k: asked.append(k.get("schedule")) or {"steps": 1, "model_dir": "m"})
    monkeypatch.setattr(run_module, "_measure", lambda *a, **k: {"layers": 2})
    monkeypatch.setattr(run_module, "_measure_before", lambda *a, **k: {})
    for search in ("halving", ""):
        config = _run_config(tmp_path, tmp_path, tmp_path / "run", select=["first", "spread"], heal=["ce", "kd"],
                             search=search, steps=20)
        run_module._baseline(config, None, "random", "ref", 2, tmp_path, 20)
        assert config.train.schedule == ("wsd" if search else "cosine")  # what run.json records
    assert asked == ["wsd", None]


def test_a_search_run_re_enters_whatever_its_recorded_schedule(tmp_path):
    """Under a search every child and baseline trains warmup-stable-decay (run.json says so), so a search run
    recorded with 'cosine' (as those of 2026-12-07 were) re-enters; a plain run does not, nor a search whose
    reference is trained from scratch on --schedule."""
    from inheritune.training.runstate import check_rerun
    from inheritune.utils.config import to_dict

    cases = (("halving", "", False), ("", "", True), ("halving", "scratch:llama:layers=4,hidden=32,heads=4", True))
    for search, scratch, refused in cases:
        out = tmp_path / f"run-{search or 'plain'}-{bool(scratch)}"
        out.mkdir()
        config = _run_config(tmp_path, tmp_path, out, select=["first", "spread"], heal=["ce", "kd"], search=search,
                             steps=20, reference_from_scratch=scratch)
        assert config.train.schedule == ("wsd" if search and not scratch else "cosine")
        recorded = to_dict(config)
        other = "cosine" if config.train.schedule == "wsd" else "wsd"
        recorded["train"]["schedule"] = other
        (out / "run.json").write_text(json.dumps(recorded))
        if refused:
            with pytest.raises(UserError, match=f"schedule '{other}' -> '{config.train.schedule}'"):
                check_rerun(out, config)
        else:
            check_rerun(out, config)
            assert json.loads((out / "run.json").read_text())["train"]["schedule"] == "wsd"
