"""Faults met for real where the machine allows: a full disk (a small tmpfs, as root), weights gone NaN, a
checkpoint with a flipped byte, a dataset or tokenizer replaced under a run."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import fill_disk, small_reference
from inheritune.train import TrainConfig, train
from inheritune.training.checkpoint import checksum_file, payload_bytes, save_checkpoint
from inheritune.utils.errors import UserError

TINY = "scratch:llama:layers=2,hidden=32,heads=4,kv_heads=2,ffn=64"


def _config(dataset, out, **kw):
    base = dict(model=TINY, data=str(dataset), out=str(out), max_steps=10, seq_len=32, micro_batch_size=4,
                lr=3e-3, eval_interval=5, eval_windows=8, checkpoint_interval=4, progress=False, device="cpu")
    return TrainConfig(**{**base, **kw})


def test_torch_save_on_a_real_full_disk_is_one_line_and_leaves_the_last_checkpoint(small_disk):
    disk = small_disk("2m")
    first = save_checkpoint(disk, 1, {"w": torch.zeros(1000)}, keep=2)
    big = {"model": {"w": torch.randn(1_000_000)}}  # 4 MB on a 2 MB disk: PyTorch's writer fails mid-file
    with pytest.raises(UserError) as error:
        save_checkpoint(disk, 2, big, keep=2)
    message = str(error.value)
    assert "\n" not in message and f"cannot write the checkpoint {disk / 'ckpt-0000002.pt'}" in message
    assert "free on its disk" in message and "it needs about 3.8 MB" in message
    assert f"last good checkpoint is {first}" in message
    assert sorted(p.name for p in disk.iterdir()) == ["ckpt-0000001.pt", "ckpt-0000001.pt.sha256"]
    subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)  # space is freed
    assert save_checkpoint(disk, 2, big, keep=2).is_file()


def test_a_run_on_a_real_full_disk_continues_once_space_is_freed(dataset, tmp_path, small_disk):
    disk = small_disk("32m")  # the first checkpoint (~20 MB: model and Adam's moments) fits, the second does not
    out = disk / "run"
    with pytest.raises(UserError) as error:
        train(_config(dataset, out))
    message = str(error.value)
    assert "\n" not in message and f"cannot write the checkpoint {out / 'ckpt-0000008.pt'}" in message
    assert f"last good checkpoint is {out / 'ckpt-0000004.pt'}" in message and "free on its disk" in message
    assert sorted(p.name for p in out.glob("ckpt-*")) == ["ckpt-0000004.pt", "ckpt-0000004.pt.sha256"]
    assert not (out / ".lock").exists()
    subprocess.run(["mount", "-o", "remount,size=96m", str(disk)], check=True)
    summary = train(_config(dataset, out, resume=True))
    straight = train(_config(dataset, tmp_path / "straight"))
    assert summary["status"] == "finished" and summary["final_val_loss"] == straight["final_val_loss"]


def test_a_run_stopped_by_a_full_disk_before_its_first_checkpoint_starts_over_with_resume(dataset, tmp_path,
                                                                                          small_disk):
    disk = small_disk("8m")
    out = disk / "run"
    with pytest.raises(UserError, match=r"No checkpoint of this run was written yet.*with --resume"):
        train(_config(dataset, out, max_steps=8))
    subprocess.run(["mount", "-o", "remount,size=96m", str(disk)], check=True)
    summary = train(_config(dataset, out, max_steps=8, resume=True))
    straight = train(_config(dataset, tmp_path / "straight", max_steps=8))
    assert summary["final_val_loss"] == straight["final_val_loss"]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == len(
        (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines())


def test_a_full_disk_under_the_metrics_log_and_the_run_records_is_one_line(small_disk):
    from inheritune.training.rundir import MetricsLog, write_summary
    from inheritune.training.runstate import State

    disk = small_disk("1m")
    state = State(disk / "state.json")
    state.put("reference_eval", {"loss": 3.5})
    log = MetricsLog(disk, tensorboard=False, active=True)
    log.write({"step": 0, "val_loss": 3.5})
    fill_disk(disk)
    with pytest.raises(UserError, match=r"cannot write the metrics log .*metrics.jsonl.*free on its disk"):
        for step in range(1, 10_000):
            log.write({"step": step, "loss": 3.0, "padding": "x" * 512})
    log.close(quiet=True)  # on the way out of that error, closing must not raise another
    with pytest.raises(UserError, match=r"cannot write the run's record of finished stages .*state.json"):
        state.put("round/1", {"loss": 3.4, "padding": "x" * 8192})
    with pytest.raises(UserError, match=r"cannot write the run's summary .*summary.json"):
        write_summary(disk, {"status": "finished", "padding": "x" * 8192}, [])
    # the records written before are whole, and nothing half-written is left looking like an output
    assert json.loads((disk / "state.json").read_text()) == {"reference_eval": {"loss": 3.5}}
    assert not (disk / "summary.json").exists()
    assert sorted(p.name for p in disk.iterdir()) == [".filler", "metrics.jsonl", "state.json"]


def test_the_space_estimate_counts_a_tied_head_once():
    from conftest import tiny_llama

    model = tiny_llama()
    state = model.state_dict()
    assert state["lm_head.weight"].data_ptr() == state["model.embed_tokens.weight"].data_ptr()
    unique = sum(p.numel() * p.element_size() for p in model.parameters())  # parameters() lists a tied one once
    assert payload_bytes(state) == unique
    assert payload_bytes({"model": state, "copy": state["lm_head.weight"].clone()}) == unique + 50257 * 32 * 4


def test_a_finite_loss_with_a_nan_update_never_finishes_a_model(dataset, tmp_path):
    """lr 1e39 overflows float32 in the first update: the loss of step 1 is finite, the weights after it are not."""
    out = tmp_path / "run"
    with pytest.raises(UserError) as error:
        train(_config(dataset, out, max_steps=3, lr=1e39, warmup_steps=0, checkpoint_interval=1))
    message = str(error.value)
    assert "weights became NaN or infinite at step 1" in message and "Last good checkpoint: none" in message
    assert not (out / "final").exists() and not list(out.glob("ckpt-*"))


def test_weights_that_went_bad_are_caught_before_any_checkpoint_or_model(dataset, tmp_path):
    from inheritune.training import rundir

    with pytest.raises(UserError, match=r"trained weights are not finite \(w\); the model was not written"):
        rundir.check_finite_state({"w": torch.tensor([1.0, float("nan")]), "ids": torch.tensor([1, 2])}, "")
    out = tmp_path / "run"
    train(_config(dataset, out, max_steps=8, checkpoint_interval=4))
    state = torch.load(out / "ckpt-0000004.pt", weights_only=True)
    for moments in state["optimizer"]["state"].values():  # NaN in Adam's state: the next update is NaN
        moments["exp_avg"].fill_(float("nan"))
    start = tmp_path / "start.pt"
    torch.save(state, start)
    out2 = tmp_path / "run2"
    with pytest.raises(UserError, match=r"weights became NaN or infinite at step 5.*Last good checkpoint: none"):
        train(_config(dataset, out2, max_steps=8, checkpoint_interval=4, resume_from=str(start)))
    assert not (out2 / "final").exists() and not list(out2.glob("ckpt-*"))


def _flip_a_byte(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x40
    path.write_bytes(bytes(data))


def test_bit_rot_in_a_checkpoint_is_caught_and_the_older_one_offered(dataset, tmp_path):
    out = tmp_path / "run"
    config = _config(dataset, out, max_steps=12, checkpoint_interval=4)
    summary = train(config)
    for name in ("ckpt-0000008.pt", "ckpt-0000012.pt"):
        assert checksum_file(out / name).read_text().split()[0] == __import__("hashlib").sha256(
            (out / name).read_bytes()).hexdigest()
    (out / "final").rename(tmp_path / "old-final")
    (out / "summary.json").unlink()
    newest = out / "ckpt-0000012.pt"
    size = newest.stat().st_size
    _flip_a_byte(newest)
    assert newest.stat().st_size == size  # same size: only the checksum can tell
    with pytest.raises(UserError) as error:
        train(_config(dataset, out, max_steps=12, checkpoint_interval=4, resume=True))
    message = str(error.value)
    assert "sha256 does not match" in message and "ckpt-0000008.pt is available" in message
    assert "run the same command again" in message and "\n" not in message
    newest.rename(out / "ckpt-0000012.pt.damaged")  # what the message says to do
    again = train(_config(dataset, out, max_steps=12, checkpoint_interval=4, resume=True))
    assert again["status"] == "finished" and again["final_val_loss"] == summary["final_val_loss"]


def test_a_dataset_replaced_in_place_is_refused_on_resume(text_dir, tmp_path, gpt2_tokenizer_dir):
    from inheritune.data.dataset import PrepareConfig, prepare

    data = tmp_path / "ds"
    prepare(PrepareConfig(input=[str(text_dir)], out=str(data), tokenizer=str(gpt2_tokenizer_dir),
                          val_fraction=0.2), progress=False)
    out = tmp_path / "run"
    train(_config(data, out, max_steps=8))
    (out / "final").rename(tmp_path / "kept")
    (text_dir / "doc00.txt").write_text("Something else entirely, written after the run began. " * 40)
    prepare(PrepareConfig(input=[str(text_dir)], out=str(data), tokenizer=str(gpt2_tokenizer_dir),
                          val_fraction=0.2, overwrite=True), progress=False)
    with pytest.raises(UserError, match=r"--resume would change the run .*data_fingerprint"):
        train(_config(data, out, max_steps=8, resume=True))


def _copy_dataset_with_its_own_tokenizer(dataset, tmp_path, gpt2_tokenizer_dir) -> tuple[Path, Path]:
    """The dataset, pointing at a copy of its tokenizer that the test may damage."""
    tokenizer = tmp_path / "tok"
    shutil.copytree(gpt2_tokenizer_dir, tokenizer)
    data = tmp_path / "ds-copy"
    shutil.copytree(dataset, data)
    meta = json.loads((data / "meta.json").read_text())
    meta["tokenizer"]["name_or_path"] = str(tokenizer)
    (data / "meta.json").write_text(json.dumps(meta))
    return data, tokenizer


def test_the_final_model_ships_the_tokenizer_training_started_with(dataset, tmp_path, gpt2_tokenizer_dir,
                                                                   monkeypatch):
    import inheritune.train as train_module

    data, tokenizer = _copy_dataset_with_its_own_tokenizer(dataset, tmp_path, gpt2_tokenizer_dir)
    real_loop = train_module._loop

    def loop_after_the_tokenizer_is_gone(*args, **kwargs):
        shutil.rmtree(tokenizer)  # deleted (or replaced) while the model trains
        return real_loop(*args, **kwargs)
    monkeypatch.setattr(train_module, "_loop", loop_after_the_tokenizer_is_gone)
    out = tmp_path / "run"
    train(_config(data, out, max_steps=4))
    assert (out / "final" / "tokenizer.json").is_file()
    # with it gone before training, the run is refused before anything is written, not finished without it
    with pytest.raises(UserError, match=r"tokenizer of the dataset .* cannot be read .*would have no tokenizer"):
        train(_config(data, tmp_path / "run2", max_steps=4))
    assert not (tmp_path / "run2").exists()


def test_a_dataset_whose_tokenizer_changed_since_it_was_prepared_is_refused(dataset, tmp_path, gpt2_tokenizer_dir):
    data, tokenizer = _copy_dataset_with_its_own_tokenizer(dataset, tmp_path, gpt2_tokenizer_dir)
    spec = json.loads((tokenizer / "tokenizer.json").read_text())
    spec["added_tokens"].append({**spec["added_tokens"][0], "id": 50257, "content": "<|extra|>"})
    (tokenizer / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(UserError, match="no longer the one that prepared"):
        train(_config(data, tmp_path / "run", max_steps=4))


@pytest.fixture
def reference_setup(tmp_path, text_dir, gpt2_tokenizer):
    return small_reference(tmp_path, text_dir, gpt2_tokenizer, layers=4, context=128)


def _run_config(data, ref, out, **kw):
    """test_run's settings, one round: every stage of a run in seconds."""
    from test_run import _config

    return _config(data, ref, out, **{"max_rounds": 1, **kw})


def test_run_refuses_a_reference_whose_val_loss_is_not_finite(reference_setup, tmp_path):
    from safetensors.torch import load_file, save_file

    from inheritune.run import run

    data, ref = reference_setup
    weights = load_file(str(ref / "model.safetensors"))
    weights["model.norm.weight"][0] = float("nan")
    save_file(weights, str(ref / "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "run"
    with pytest.raises(UserError, match=r"reference .* has val loss nan .*needs a reference with a finite loss"):
        run(_run_config(data, ref, out))
    assert not (out / "report.md").exists() and not (out / "rounds").exists()
    assert "reference_eval" not in json.loads((out / "state.json").read_text())


def test_compile_auto_is_decided_once_for_every_child_of_a_side_by_side_run(reference_setup, tmp_path, monkeypatch):
    import inheritune.run as run_module
    import inheritune.training.budget as budget

    data, ref = reference_setup
    asked, given = [], []
    real_train = run_module.train
    monkeypatch.setattr(budget, "compile_pays", lambda *a: asked.append(a) or (False, 1.0, 60.0))
    monkeypatch.setattr(run_module, "train", lambda config: given.append(config.compile) or real_train(config))
    out = tmp_path / "run"
    run_module.run(_run_config(data, ref, out, heal=["ce", "kd"], baselines=[]))
    assert len(asked) == 1 and given == ["off", "off"]  # a KD child costs more, and still runs like the CE one
    assert json.loads((out / "state.json").read_text())["compile"] == "off"
    # re-entered with the KD child to train again (its record and folder gone): it trains with the kept
    # decision, not a new one
    state = json.loads((out / "state.json").read_text())
    (out / "state.json").write_text(json.dumps({k: v for k, v in state.items() if not k.startswith("child/first-kd/")}))
    shutil.rmtree(out / "children" / "first-kd" / "train")
    run_module.run(_run_config(data, ref, out, heal=["ce", "kd"], baselines=[]))
    assert len(asked) == 1 and given == ["off", "off", "off"]


def test_resume_never_clears_a_folder_that_keeps_branches(dataset, tmp_path):
    """A main line left without a checkpoint by --resume-from a kept branch, then a kill before its next one:
    --resume must refuse and keep abandoned/, not start over (which would delete the branches)."""
    out = tmp_path / "run"
    train(_config(dataset, out, max_steps=12, checkpoint_interval=4))
    train(_config(dataset, out, max_steps=12, checkpoint_interval=4, resume_from=str(out / "ckpt-0000008.pt")))
    for ckpt in out.glob("ckpt-*.pt"):  # as if the resumed line died before writing its next checkpoint
        ckpt.unlink()
    shutil.rmtree(out / "final")
    kept = sorted(p.relative_to(out).as_posix() for p in (out / "abandoned").rglob("*"))
    with pytest.raises(UserError, match=r"nothing to resume .*keeps abandoned.*--resume-from"):
        train(_config(dataset, out, max_steps=12, checkpoint_interval=4, resume=True))
    assert sorted(p.relative_to(out).as_posix() for p in (out / "abandoned").rglob("*")) == kept and kept
