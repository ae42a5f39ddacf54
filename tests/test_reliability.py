"""The review's defects (issue 19), each a test that failed before its fix: resumed branches never mix with
abandoned ones, settings are checked wherever a run is resumed, a finished run always writes its report, a
re-entered run keeps its trajectory, and config values are coerced or refused with the key named."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import small_reference
import torch

from inheritune.analysis.verdict import reference_check, warning_text
from inheritune.cli import main
from inheritune.data.dataset import PrepareConfig
from inheritune.run import RunConfig, run
from inheritune.train import train
from inheritune.training.recipe import TrainConfig
from inheritune.utils.config import from_dict, load_config
from inheritune.utils.errors import UserError

TINY = "scratch:llama:layers=2,hidden=32,heads=4,kv_heads=2,ffn=64"


def _config(dataset, out, **kw):
    base = dict(model=TINY, data=str(dataset), out=str(out), max_steps=6, seq_len=32, micro_batch_size=4, lr=3e-3,
                eval_interval=3, eval_windows=4, checkpoint_interval=2, keep_checkpoints=5, progress=False,
                device="cpu")
    return TrainConfig(**{**base, **kw})


def _steps(folder: Path) -> list[int]:
    return [int(p.stem.split("-")[1]) for p in sorted(folder.glob("ckpt-*.pt"))]


# ------------------------------------------------------------------------------------------- --resume-from
def test_resume_from_refuses_changed_settings_and_keeps_the_abandoned_branch_apart(dataset, tmp_path):
    out = tmp_path / "run"
    whole = train(_config(dataset, out))
    assert _steps(out) == [2, 4, 6]
    final_before = (out / "final" / "model.safetensors").read_bytes()
    with pytest.raises(UserError, match="lr 0.003 -> 0.01"):  # the settings check applies to --resume-from too
        train(_config(dataset, out, lr=1e-2, resume_from=str(out / "ckpt-0000002.pt")))
    assert _steps(out) == [2, 4, 6] and (out / "final" / "model.safetensors").read_bytes() == final_before
    with pytest.raises(UserError, match="past this run's 1 steps|max_steps 6 -> 1"):
        train(_config(dataset, out, max_steps=1, warmup_steps=0, resume_from=str(out / "ckpt-0000004.pt")))

    # resuming the same run at step 2 with keep_checkpoints=1: the new branch's checkpoints are kept, and the
    # abandoned branch's later checkpoints and final model are moved aside, not mixed in and not deleted
    again = train(_config(dataset, out, keep_checkpoints=1, resume_from=str(out / "ckpt-0000002.pt")))
    assert _steps(out) == [6]
    aside = out / "abandoned" / "after-step-2"
    assert sorted(p.name for p in aside.iterdir()) == ["ckpt-0000004.pt", "ckpt-0000004.pt.sha256", "ckpt-0000006.pt",
                                                       "ckpt-0000006.pt.sha256", "final", "metrics.jsonl",
                                                       "summary.json"]
    assert (aside / "final" / "model.safetensors").read_bytes() == final_before
    assert again["final_val_loss"] == pytest.approx(whole["final_val_loss"], abs=1e-6)  # the same trajectory
    state = torch.load(out / "ckpt-0000006.pt", weights_only=True)
    assert [h["step"] for h in state["history"]] == list(range(0, 7))  # step 0: the loss before training
    logged = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(0, 7))


def test_resume_from_another_runs_checkpoint_needs_a_free_out(dataset, tmp_path):
    train(_config(dataset, tmp_path / "a"))
    train(_config(dataset, tmp_path / "b", seed=7))
    final_b = (tmp_path / "b" / "final" / "model.safetensors").read_bytes()
    with pytest.raises(UserError, match="already holds a run"):
        train(_config(dataset, tmp_path / "b", resume_from=str(tmp_path / "a" / "ckpt-0000004.pt")))
    assert (tmp_path / "b" / "final" / "model.safetensors").read_bytes() == final_b
    with pytest.raises(UserError, match="seed 1337 -> 7"):  # and it keeps the settings of the run it continues
        train(_config(dataset, tmp_path / "c", seed=7, resume_from=str(tmp_path / "a" / "ckpt-0000004.pt")))
    assert train(_config(dataset, tmp_path / "c", resume_from=str(tmp_path / "a" / "ckpt-0000004.pt")))["steps"] == 6


def test_settings_are_checked_against_the_checkpoint_when_run_json_is_gone(dataset, tmp_path):
    out = tmp_path / "run"
    train(_config(dataset, out, max_steps=4))
    (out / "run.json").unlink()
    with pytest.raises(UserError, match="lr 0.003 -> 0.002"):
        train(_config(dataset, out, max_steps=4, lr=2e-3, resume=True))
    with pytest.raises(UserError, match="eval_windows 4 -> 6"):  # a changed validation set mixes two runs too
        train(_config(dataset, out, max_steps=4, eval_windows=6, resume=True))


def test_a_cut_metrics_line_does_not_stop_a_resume(dataset, tmp_path):
    out = tmp_path / "run"
    train(_config(dataset, out, max_steps=4))
    (out / "ckpt-0000004.pt").unlink()
    with open(out / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 5, "loss": 1.2')  # the process was killed mid-line
    summary = train(_config(dataset, out, max_steps=4, resume=True))
    assert summary["status"] == "finished"
    logged = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------------------------------- train refusals
def test_train_refuses_what_it_cannot_finish_before_writing(dataset, tmp_path, tiny_model_dir):
    from transformers import BloomConfig, BloomForCausalLM

    BloomForCausalLM(BloomConfig(vocab_size=50257, hidden_size=32, n_layer=2, n_head=4)).save_pretrained(
        tmp_path / "bloom")
    with pytest.raises(UserError, match="model family 'bloom' is not supported"):
        train(_config(dataset, tmp_path / "b", model=str(tmp_path / "bloom")))
    assert not (tmp_path / "b").exists()
    other = tmp_path / "other-tokenizer"
    shutil.copytree(tiny_model_dir, other)
    vocab = json.loads((other / "tokenizer.json").read_text())
    vocab["model"]["vocab"]["zzzz-new"] = len(vocab["model"]["vocab"])
    (other / "tokenizer.json").write_text(json.dumps(vocab))
    with pytest.raises(UserError, match="differs from the one that prepared"):
        train(_config(dataset, tmp_path / "t", model=str(other)))
    assert not (tmp_path / "t").exists()


def test_overwrite_replaces_only_a_run_never_the_users_files(dataset, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes")
    with pytest.raises(UserError, match="not a training run"):
        train(_config(dataset, folder, overwrite=True))
    assert (folder / "notes.txt").read_text() == "my notes"
    out = tmp_path / "run"
    train(_config(dataset, out, max_steps=2, warmup_steps=0))
    (out / "notes.txt").write_text("kept")  # a file of the user's beside a run is not the run's to delete
    with pytest.raises(UserError, match="notes.txt"):
        train(_config(dataset, out, max_steps=2, warmup_steps=0, overwrite=True))
    (out / "notes.txt").unlink()
    assert train(_config(dataset, out, max_steps=2, warmup_steps=0, seed=3, overwrite=True))["status"] == "finished"


# --------------------------------------------------------------------------------------------- configs
def test_config_values_are_coerced_to_their_fields_or_refused_with_the_key(tmp_path):
    def from_yaml(text):
        path = tmp_path / "c.yaml"
        path.write_text(text)
        return load_config(TrainConfig, path)

    config = from_yaml('overwrite: "false"\nresume: "no"\nlr: 3e-4\nmax_steps: "40"\ntensorboard: "yes"\n')
    assert config.overwrite is False and config.resume is False and config.tensorboard is True
    assert config.lr == 3e-4 and config.max_steps == 40  # YAML 1.1 reads 3e-4 as a string
    assert from_yaml("max_steps: 4.0\n").max_steps == 4
    assert from_dict(PrepareConfig, {"input": 5}).input == ["5"]  # then "input not found: 5"
    cases = [("max_steps: 4.7\n", "'max_steps' \\(--max-steps\\) must be a whole number, got 4.7"),
             ("lr: [1, 2]\n", "'lr' \\(--lr\\) must be a number"),
             ("micro_batch_size: {a: 1}\n", "'micro_batch_size' \\(--micro-batch-size\\) must be a whole number"),
             ('overwrite: "maybe"\n', "'overwrite' \\(--overwrite\\) must be true or false"),
             ("lr: .nan\n", "'lr' \\(--lr\\) must be a finite number"),
             ("seed: -1\n", "'seed' \\(--seed\\) must be between 0 and"),
             (f"seed: {2 ** 70}\n", "'seed' \\(--seed\\) must be between 0 and"),
             ("model: [a, b]\n", "'model' \\(--model\\) must be a string")]
    for text, message in cases:
        with pytest.raises(UserError, match=message.replace("[", r"\[")):
            from_yaml(text)
    with pytest.raises(UserError, match="'kd_alpha' \\(--kd-alpha\\) must be between 0 and 1"):
        from_dict(RunConfig, {"kd_alpha": 2})
    for key, value in (("budget", float("inf")), ("tolerance", float("nan")), ("analyze_n", 0), ("task_limit", -1),
                       ("bootstrap", 10 ** 12)):
        with pytest.raises(UserError, match=f"'{key}'"):
            from_dict(RunConfig, {key: value})
    assert from_dict(RunConfig, {"eval_windows": 0}).train.eval_windows == 0  # all windows, as train reads it


# ------------------------------------------------------------------------------------------------ verdict
def test_a_verdict_whose_reference_could_not_be_checked_says_so():
    check = reference_check({"skipped": "the val split is too short"}, None, 0.01)
    assert check["meaningful"] is None and warning_text(check) == ""
    falling = {"history": [{"step": s, "val_loss": 5.0 - 0.1 * s} for s in range(1, 11)], "max_steps": 10}
    check = reference_check(None, falling, 0.01)
    assert check["meaningful"] is False and "0.01 nats per 10% of the budget" in warning_text(check)
    flat = {"history": [{"step": s, "val_loss": 5.0 + 0.001 * (-1) ** s} for s in range(1, 11)], "max_steps": 10}
    assert reference_check(None, flat, 0.01)["meaningful"] is True


# ----------------------------------------------------------------------------------------------------- run
@pytest.fixture
def setup(tmp_path, text_dir, gpt2_tokenizer):
    return small_reference(tmp_path, text_dir, gpt2_tokenizer, layers=4, context=64)


def _run_config(data, ref, out, **kw):
    base = dict(reference=str(ref), data=str(data), out=str(out), start="2", step=2, max_rounds=1, steps=2,
                seq_len=16, micro_batch_size=4, eval_windows=4, eval_interval=0, lr=1e-3, analyze_n=4, analyze_t=16,
                compare_analysis=False, progress=False, device="cpu", baselines=[])
    return from_dict(RunConfig, {**base, **kw})


def test_a_finished_run_writes_its_report_when_the_val_split_is_short_for_its_analyses(setup, tmp_path):
    data, ref = setup
    report = run(_run_config(data, ref, tmp_path / "r", compare_analysis=True, analyze_t=60, analyze_n=10 ** 6))
    assert (tmp_path / "r" / "report.md").is_file()
    state = json.loads((tmp_path / "r" / "state.json").read_text())
    assert state["compare_done"]["n"] < 10 ** 6  # capped at what the val split holds, and said
    text = (tmp_path / "r" / "report.md").read_text()
    reference_loss, child_loss = report["reference_loss"], report["rows"][1]["val_loss"]
    # the verdict the report states is the one its numbers give, with those numbers
    expected = child_loss <= reference_loss + report["config"]["tolerance"]
    assert report["matched"] is expected
    if expected:
        assert "**Matched**" in text and "**Not matched**" not in text
        assert f"reaches val loss {child_loss:.4f} <= reference {reference_loss:.4f}" in text
    else:
        assert "**Not matched**" in text and "**Matched**" not in text
        assert f"{child_loss:.4f}, {child_loss - reference_loss:+.4f} nats from the reference's" in text
    from families import trained_like
    from transformers import LlamaConfig

    long_context = tmp_path / "ref-long"  # a context longer than the whole val split (1,210 tokens)
    trained_like(LlamaConfig(num_hidden_layers=4, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                             num_key_value_heads=2, vocab_size=50257, tie_word_embeddings=True,
                             max_position_embeddings=4096), seed=1).save_pretrained(long_context)
    shutil.copy2(ref / "tokenizer.json", long_context / "tokenizer.json")
    for name in ("tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt"):
        if (ref / name).is_file():
            shutil.copy2(ref / name, long_context / name)
    short = run(_run_config(data, long_context, tmp_path / "s", compare_analysis=True, analyze_t=3000))
    with pytest.raises(UserError, match="analyze_t 3000 is longer than the reference's context"):
        run(_run_config(data, ref, tmp_path / "refused", analyze_t=3000))
    assert (tmp_path / "s" / "report.md").is_file() and short["rows"]
    skipped = json.loads((tmp_path / "s" / "state.json").read_text())["compare_done"]
    assert "shorter than one sequence" in skipped["skipped"]


def test_a_run_never_writes_into_its_inputs_or_another_kind_of_folder(setup, tmp_path):
    data, ref = setup
    before = sorted(p.name for p in Path(data).iterdir())
    for out in (data, ref):
        with pytest.raises(UserError, match="would overwrite the input"):
            run(_run_config(data, ref, out))
    assert sorted(p.name for p in Path(data).iterdir()) == before and not (ref / "state.json").exists()
    trained = tmp_path / "trained"
    train(TrainConfig(model=str(ref), data=str(data), out=str(trained), max_steps=2, seq_len=16, micro_batch_size=2,
                      eval_windows=2, warmup_steps=0, progress=False))
    recorded = (trained / "run.json").read_text()
    with pytest.raises(UserError, match="training run of 'inheritune train'"):
        run(_run_config(data, ref, trained))
    assert (trained / "run.json").read_text() == recorded and not (trained / "state.json").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="not a run of inheritune"):
        run(_run_config(data, ref, mine))
    with pytest.raises(UserError, match="longer than the reference's context"):
        run(_run_config(data, ref, tmp_path / "long", seq_len=128))
    assert not (tmp_path / "long").exists()


def test_re_entering_a_run_keeps_its_batch_and_finishes_what_is_missing(setup, tmp_path, monkeypatch):
    data, ref = setup
    out = tmp_path / "r"
    first = run(_run_config(data, ref, out))
    with pytest.raises(UserError, match="nproc_per_node 1 -> 2"):  # tokens per step = micro batch x processes
        run(_run_config(data, ref, out, nproc_per_node=2))

    # zero-shot tasks asked on re-entry are scored for the finished stages too (the column is never partial)
    import inheritune.run as run_module

    scored = []

    def fake_zero_shot(model, tokenizer, tasks, *args, **kwargs):
        scored.append(model.config.num_hidden_layers)
        return {"task": {"acc": 0.25}, "average": {"acc": 0.25}}

    monkeypatch.setattr(run_module, "zero_shot", fake_zero_shot)
    again = run(_run_config(data, ref, out, tasks=["task"]))
    assert sorted(scored) == [2, 4]  # reference and round 0, measured before, now scored
    assert all(row["zero_shot_avg"] == 0.25 for row in again["rows"])

    # the run folder moves as a whole; a deleted round model is trained again, not reported as done
    moved = tmp_path / "moved"
    shutil.move(str(out), str(moved))
    state = json.loads((moved / "state.json").read_text())
    assert not Path(state["round-0-l2/train"]["model_dir"]).is_absolute()
    shutil.rmtree(moved / "rounds" / "round-0-l2" / "train" / "final")
    report = run(_run_config(data, ref, moved, tasks=["task"]))
    assert (moved / "rounds" / "round-0-l2" / "train" / "final" / "config.json").is_file()
    child = next(row for row in report["rows"] if row["model"].startswith("Inheritune"))
    assert child["val_loss"] == pytest.approx(next(r for r in first["rows"] if r["model"] == child["model"])["val_loss"],
                                              abs=1e-6)
    assert str(moved) in (moved / "report.md").read_text() and str(out) + "/" not in (moved / "report.md").read_text()


def test_damaged_run_records_are_one_line_errors(setup, tmp_path, capsys):
    data, ref = setup
    out = tmp_path / "r"
    run(_run_config(data, ref, out))
    argv = ["run", "--reference", str(ref), "--data", str(data), "--out", str(out), "--start", "2", "--max-rounds",
            "1", "--steps", "2", "--seq-len", "16", "--micro-batch-size", "4", "--eval-windows", "4", "--eval-interval",
            "0", "--lr", "1e-3", "--analyze-n", "4", "--analyze-t", "16", "--compare-analysis", "false", "--progress",
            "false", "--device", "cpu", "--baselines", "none"]
    capsys.readouterr()
    for name in ("state.json", "run.json"):
        saved = (out / name).read_text()
        (out / name).write_text(saved[: len(saved) // 2])
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert name in err and "damaged" in err and "Traceback" not in err
        (out / name).write_text(saved)
