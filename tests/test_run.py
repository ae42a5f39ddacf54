import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
from conftest import small_reference
import torch
from safetensors.torch import load_file

from inheritune.run import RunConfig, run
from inheritune.utils.config import from_dict
from inheritune.utils.errors import UserError


@pytest.fixture
def setup(tmp_path, text_dir, gpt2_tokenizer):
    return small_reference(tmp_path, text_dir, gpt2_tokenizer, layers=6, context=128)


def _config(data, ref, out, **kw):
    base = dict(reference=str(ref), data=str(data), out=str(out), start="2", step=2, max_rounds=2, steps=3,
                seq_len=16, micro_batch_size=4, eval_windows=8, eval_interval=0, lr=1e-3, analyze_n=4, analyze_t=16,
                compare_analysis=False, progress=False, device="cpu")
    return from_dict(RunConfig, {**base, **kw})  # the train section's keys given flat, as flags give them


def test_growth_rounds_reinherit_and_stop_when_matched(setup, tmp_path):
    data, ref = setup
    # A random-weight reference is easy to beat: the tolerance decides whether round 0 "matches".
    report = run(_config(data, ref, tmp_path / "run", tolerance=-100.0))  # nothing can match: 2 rounds
    assert [row["layers"] for row in report["rows"][1:3]] == [2, 4] and not report["matched"]
    reference = load_file(str(ref / "model.safetensors"))
    round1 = load_file(str(tmp_path / "run" / "rounds" / "round-1-l4" / "child" / "model.safetensors"))
    for key, tensor in round1.items():  # round 1 starts from the reference's first 4 layers, not round 0's child
        assert torch.equal(tensor, reference[key]), key
    for name in ("report.md", "report.json", "val_loss.png"):
        assert (tmp_path / "run" / name).is_file()
    assert "Not matched" in (tmp_path / "run" / "report.md").read_text()
    baseline = report["rows"][-1]
    assert baseline["model"] == "baseline random" and baseline["layers"] == 4
    # every finished stage keeps its model and, unless asked, none of its checkpoints (each ~3x the model)
    assert len(list((tmp_path / "run").rglob("final/model.safetensors"))) == 3
    assert not list((tmp_path / "run").rglob("ckpt-*.pt"))

    stopped = run(_config(data, ref, tmp_path / "easy", tolerance=100.0, keep_stage_checkpoints=True))
    assert stopped["matched"] and len([r for r in stopped["rows"] if r["init"] == "inherit"]) == 1  # round 0 did
    assert len(list((tmp_path / "easy").rglob("ckpt-*.pt"))) == 2  # kept: the last step's, of the round and the baseline


def test_resumed_run_skips_finished_rounds_and_gives_the_same_report(setup, tmp_path, monkeypatch):
    data, ref = setup
    first = run(_config(data, ref, tmp_path / "run", tolerance=-100.0))
    import inheritune.train as train_module

    monkeypatch.setattr(train_module, "train", lambda *a, **k: pytest.fail("a finished stage was trained again"))
    again = run(_config(data, ref, tmp_path / "run", tolerance=-100.0))
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_seconds"} for r in rows]  # noqa: E731
    assert strip(first["rows"]) == strip(again["rows"])


def test_interrupted_stage_resumes_and_changed_settings_are_refused(setup, tmp_path, monkeypatch):
    from inheritune.utils.errors import Interrupted

    data, ref = setup
    whole = run(_config(data, ref, tmp_path / "whole", max_rounds=1, steps=60, baselines=[]))
    metrics = tmp_path / "run" / "rounds" / "round-0-l2" / "train" / "metrics.jsonl"

    def interrupt():  # SIGTERM from outside the loop once the first training is under way
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.002)

    watcher = threading.Thread(target=interrupt)
    watcher.start()
    with pytest.raises(Interrupted, match="same 'inheritune run' command"):
        run(_config(data, ref, tmp_path / "run", max_rounds=1, steps=60, baselines=[]))
    watcher.join()
    from inheritune.training.checkpoint import checkpoints

    before = torch.load(checkpoints(metrics.parent)[-1], weights_only=True)["train_seconds"]
    assert before > 0  # the interrupted session's training time is kept with its checkpoint
    first_session = json.loads((tmp_path / "run" / "state.json").read_text())["sessions"]
    assert first_session["count"] == 1 and first_session["seconds"] > before
    with pytest.raises(UserError, match="steps 60 -> 50"):
        run(_config(data, ref, tmp_path / "run", max_rounds=1, steps=50, baselines=[]))
    with pytest.raises(UserError, match="lr 0.001 -> 0.002"):
        run(_config(data, ref, tmp_path / "run", max_rounds=1, steps=60, lr=2e-3, baselines=[]))
    resumed = run(_config(data, ref, tmp_path / "run", max_rounds=1, steps=60, baselines=[]))
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == list(range(0, 61))
    assert abs(resumed["rows"][1]["val_loss"] - whole["rows"][1]["val_loss"]) <= 1e-6
    # The report's train time is the whole training's, both sessions, not only the part after the resume.
    stage = json.loads((tmp_path / "run" / "state.json").read_text())["round-0-l2/train"]
    assert resumed["rows"][1]["wall_seconds"] == stage["train_seconds"] > before
    # ... and the run's wall time adds up both sessions (the refused ones never started one)
    assert resumed["sessions"] == 2 and resumed["wall_seconds"] > first_session["seconds"]
    assert f"{resumed['wall_seconds'] / 60:.1f} min over 2 sessions" in (tmp_path / "run" / "report.md").read_text()
    # Adding a baseline is applied (and said), not refused.
    more = run(_config(data, ref, tmp_path / "run", max_rounds=1, steps=60, baselines=["random"]))
    assert [r["model"] for r in more["rows"]][-1] == "baseline random"


def test_every_baseline_runs_at_the_childs_depth_on_the_same_windows(setup, tmp_path, monkeypatch):
    import inheritune.run as run_module
    from inheritune.data.windows import RandomWindows

    data, ref = setup
    reads, stage = {}, []  # the training batches each stage actually read (global batch index of each micro-batch)
    real_train, real_batch = run_module.train, RandomWindows.batch

    def tracking(config, *args, **kwargs):
        stage[:] = [Path(config.out).relative_to(tmp_path / "run").as_posix()]
        return real_train(config, *args, **kwargs)

    def recording(self, step, offset=0, count=None):
        reads.setdefault(stage[0], []).append(step)
        return real_batch(self, step, offset, count)

    monkeypatch.setattr(run_module, "train", tracking)
    monkeypatch.setattr(RandomWindows, "batch", recording)
    report = run(_config(data, ref, tmp_path / "run", max_rounds=1, start="3",
                         baselines=["random", "random-2x", "stacking", "hybrid-stacking", "half-width", "kd"]))
    rows = {row["model"]: row for row in report["rows"]}
    for name in ("random", "random-2x", "stacking", "hybrid-stacking", "kd"):
        assert rows[f"baseline {name}"]["layers"] == 3, name  # an odd depth: exactly the child's
    assert rows["baseline half-width"]["layers"] == 6  # half the width at the reference's depth, by design
    child = rows["Inheritune round-0-l3"]
    assert rows["baseline random-2x"]["steps"] == 2 * child["steps"]
    stacking = rows["baseline stacking"]  # each stage its full budget, both counted
    assert stacking["steps"] == 2 * child["steps"] and stacking["tokens"] == 2 * child["tokens"]
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["baseline/stacking/small"]["data_offset"] == 0
    assert state["baseline/stacking/train"]["data_offset"] == child["steps"]  # data continues, never replayed
    assert reads["baselines/stacking/small-train"] == list(range(child["steps"]))
    assert reads["baselines/stacking/train"] == list(range(child["steps"], 2 * child["steps"]))
    assert reads["rounds/round-0-l3/train"] == reads["baselines/random/train"] == list(range(child["steps"]))
    stacked = json.loads((tmp_path / "run" / "baselines" / "stacking" / "child" / "inheritune.json").read_text())
    assert stacked["layers"] == [0, 1, 0]
    # KD pays for its teacher's forward passes; the random baseline of the same shape does not.
    assert rows["baseline kd"]["training_flops"] > rows["baseline random"]["training_flops"]
    starts = {key: value["window_starts"] for key, value in state.items() if key.endswith("eval")}
    assert len(starts) == 8 and all(s == starts["reference_eval"] for s in starts.values())
    for row in report["rows"][1:]:
        low, high = row["delta_ci95"]
        assert low <= row["delta_vs_reference"] <= high
    text = (tmp_path / "run" / "report.md").read_text()
    assert "paired 95% CI" in text and "Inheritune spent" in text


def test_bad_run_input_fails_before_training(setup, tmp_path):
    data, ref = setup
    with pytest.raises(UserError, match="between 1 and 5"):
        run(_config(data, ref, tmp_path / "a", start="6"))
    with pytest.raises(UserError, match="step must be > 0"):
        _config(data, ref, tmp_path / "b", step=0)
    with pytest.raises(UserError, match="too small"):
        _config(data, ref, tmp_path / "c", steps=1, budget=0.1)
    with pytest.raises(UserError, match="did you mean 'max_rounds'"):
        from_dict(RunConfig, {"max_round": 3})
    other = tmp_path / "other-tok"
    shutil.copytree(ref, other)
    import base64

    from inheritune.assets.tiktoken import gpt2_tokenizer_from_tiktoken

    gpt2_tokenizer_from_tiktoken(b"\n".join(base64.b64encode(bytes([b])) + b" " + str(b).encode()
                                            for b in range(256))).save_pretrained(other)
    with pytest.raises(UserError, match="differs from the one that prepared"):
        run(_config(data, other, tmp_path / "d"))
    assert not (tmp_path / "d" / "rounds").exists()


def test_grow_continue_keeps_the_trained_child_and_appends_reference_layers(setup, tmp_path):
    data, ref = setup
    run(_config(data, ref, tmp_path / "run", tolerance=-100.0, grow="continue", baselines=[]))
    trained = load_file(str(tmp_path / "run" / "rounds" / "round-0-l2" / "train" / "final" / "model.safetensors"))
    grown = load_file(str(tmp_path / "run" / "rounds" / "round-1-l4" / "child" / "model.safetensors"))
    reference = load_file(str(ref / "model.safetensors"))
    for key, tensor in grown.items():
        if key.startswith(("model.layers.2.", "model.layers.3.")):
            assert torch.equal(tensor, reference[key]), key  # appended from the reference
        else:
            assert torch.equal(tensor, trained[key]), key  # kept from the trained round-0 child


def test_zero_shot_column_when_tasks_are_asked(setup, tmp_path):
    from inheritune.utils.taskfiles import write_task

    data, ref = setup
    items = [{"query": "Q: Is fire hot?\nA: ", "choices": ["yes", "no"], "gold": 0}] * 3
    task = write_task("tiny_run_task", items, tmp_path / "tasks")
    report = run(_config(data, ref, tmp_path / "run", max_rounds=1, baselines=[], tasks=[str(task)]))
    assert all(row["zero_shot_avg"] is not None for row in report["rows"])
    assert "zero-shot avg" in (tmp_path / "run" / "report.md").read_text()


def test_run_from_the_command_line(setup, tmp_path, capsys):
    from inheritune.cli import main

    data, ref = setup
    argv = ["run", "--reference", str(ref), "--data", str(data), "--out", str(tmp_path / "cli"), "--start", "2",
            "--max-rounds", "1", "--steps", "2", "--seq-len", "16", "--micro-batch-size", "4", "--eval-windows", "4",
            "--compare-analysis", "false", "--progress", "false", "--baselines", "random", "--device", "cpu"]
    assert main(argv) == 0
    assert "| Inheritune round-0-l2 | 2 | inherit |" in capsys.readouterr().out
    assert main(["run", "--data", str(data), "--out", str(tmp_path / "x"), "--step", "0"]) == 2
    assert "step must be > 0" in capsys.readouterr().err


def test_verdict_on_an_untrained_reference_carries_the_warning(setup, tmp_path):
    data, _ = setup
    # A reference trained from scratch for 16 tiny steps: its attention is still uniform, its loss still falling.
    report = run(_config(data, None, tmp_path / "run", reference_from_scratch="scratch:llama:layers=4,hidden=32,"
                         "heads=4", start="half", max_rounds=1, steps=16, baselines=[], tolerance=100.0))
    check = report["reference_check"]
    assert report["matched"] and report["meaningful"] is False
    assert not check["attention"]["formed"] and check["attention"]["uniform_share"] >= 0.5
    assert check["training"]["points"] >= 3  # the reference was evaluated often enough to fit a slope
    text = (tmp_path / "run" / "report.md").read_text()
    assert "**Matched**" in text and "not evidence for the recipe" in text and "uniform attention" in text
    assert (tmp_path / "run" / "analysis" / "report.json").is_file()  # analysed once, for the check


def test_verdict_on_a_reference_that_attends_has_no_warning(setup, tmp_path):
    data, ref = setup
    from transformers import AutoModelForCausalLM

    sharp = AutoModelForCausalLM.from_pretrained(ref)  # queries x 400: attention far from uniform
    with torch.no_grad():
        for name, parameter in sharp.named_parameters():
            if "q_proj" in name:
                parameter.mul_(400.0)
    sharp.save_pretrained(tmp_path / "sharp")
    shutil.copy(ref / "tokenizer.json", tmp_path / "sharp")
    shutil.copy(ref / "tokenizer_config.json", tmp_path / "sharp")
    report = run(_config(data, tmp_path / "sharp", tmp_path / "run", max_rounds=1, baselines=[], tolerance=100.0,
                         compare_analysis=True))
    assert report["meaningful"] is True and report["reference_check"]["attention"]["formed"]
    assert report["reference_check"]["training"] is None  # pretrained: no training curve to judge
    text = (tmp_path / "run" / "report.md").read_text()
    assert "passed the checks" in text and "not evidence" not in text
    assert not (tmp_path / "run" / "analysis").exists()  # the final comparison's analysis of it was reused


def test_ctrl_c_under_torchrun_is_an_interruption_that_resumes(setup, tmp_path):
    """`run --nproc-per-node 2` (two gloo processes): a Ctrl-C at the terminal (SIGINT to the foreground process
    group) reaches the run, which forwards it to torchrun; the workers finish their step and checkpoint, the run
    exits 128 + SIGINT saying how to continue, and the same command then finishes from that checkpoint."""
    import subprocess
    import sys

    data, ref = setup
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "inheritune", "run", "--reference", str(ref), "--data", str(data), "--out", str(out),
            "--start", "2", "--max-rounds", "1", "--steps", "40", "--seq-len", "16", "--micro-batch-size", "2",
            "--eval-windows", "4", "--eval-interval", "0", "--lr", "1e-3", "--analyze-n", "4", "--analyze-t", "16",
            "--compare-analysis", "false", "--progress", "false", "--device", "cpu", "--nproc-per-node", "2",
            "--baselines", "none"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    metrics = out / "rounds" / "round-0-l2" / "train" / "metrics.jsonl"
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)  # its own process group, as a terminal's foreground job
    deadline = time.monotonic() + 180
    while process.poll() is None and time.monotonic() < deadline:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:  # step 0's evaluation and step 1
            os.killpg(process.pid, signal.SIGINT)
            break
        time.sleep(0.01)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGINT, stderr[-3000:]
    assert "same 'inheritune run' command" in stderr and "torchrun failed" not in stderr
    summary = json.loads((metrics.parent / "summary.json").read_text())
    assert summary["status"] == "interrupted" and 1 <= summary["steps"] < 40  # stopped after the step under way
    assert list(metrics.parent.glob("ckpt-*.pt"))
    again = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    logged = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert logged == list(range(0, 41))
    assert json.loads((out / "report.json").read_text())["rows"]

