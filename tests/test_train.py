import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from inheritune.train import TrainConfig, train
from inheritune.training.optim import distillation_loss, lr_at, param_groups
from inheritune.utils.errors import UserError

TINY = "scratch:llama:layers=2,hidden=32,heads=4,kv_heads=2,ffn=64"


def _config(dataset, out, **kw):
    base = dict(model=TINY, data=str(dataset), out=str(out), max_steps=10, seq_len=32, micro_batch_size=4,
                lr=3e-3, eval_interval=5, eval_windows=8, checkpoint_interval=4, progress=False, device="cpu")
    return TrainConfig(**{**base, **kw})


def _argv(config: TrainConfig) -> list[str]:
    """`inheritune train` with every field of ``config`` as a flag."""
    args = [sys.executable, "-m", "inheritune", "train"]
    for key, value in vars(config).items():
        if isinstance(value, bool):
            args += [f"--{key.replace('_', '-')}", str(value).lower()]
        elif value not in ("", None):
            args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def _cli(config: TrainConfig, extra=(), env=None):
    return subprocess.run(_argv(config) + list(extra), capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def _weights(run):
    return load_file(str(Path(run) / "final" / "model.safetensors"))


def test_loss_falls_and_outputs_are_written(dataset, tmp_path):
    summary = train(_config(dataset, tmp_path / "run", max_steps=40, eval_interval=10))
    history = [h for h in summary["history"] if "loss" in h]  # (step 0 has the loss before training only)
    first = sum(h["loss"] for h in history[:5]) / 5
    last = sum(h["loss"] for h in history[-5:]) / 5
    assert last < first - 1.0
    vals = [h["val_loss"] for h in history if "val_loss" in h]
    assert len(vals) == 4 and vals[-1] < vals[0]
    run = tmp_path / "run"
    for name in ("metrics.jsonl", "summary.json", "loss.png", "run.json", "final/config.json", "final/tokenizer.json",
                 "final/README.md", "final/inheritune.json"):
        assert (run / name).is_file(), name
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert set(lines[0]) == {"step", "time", "tokens", "val_loss"} and lines[0]["step"] == 0
    assert {"step", "tokens", "loss", "lr", "grad_norm", "tokens_per_s", "mfu"} <= set(lines[1])
    assert len(list(run.glob("ckpt-*.pt"))) == 2 and not (run / ".lock").exists()
    card = (run / "final" / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: transformers" in card and "validation loss" in card
    assert json.loads((run / "final" / "inheritune.json").read_text())["trained"]["steps"] == 40
    assert summary["best_val_loss"] <= summary["final_val_loss"]


def _signal_at(config: TrainConfig, step: int, sig: int, extra=()):
    """Run `inheritune train` and send it ``sig`` from outside once metrics.jsonl shows ``step``, as a scheduler
    or a user at the keyboard would (the training loop has no test hook)."""
    args = _argv(config)
    process = subprocess.Popen(args + list(extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = Path(config.out) / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        lines = metrics.read_text().splitlines() if metrics.is_file() else []
        if lines and json.loads(lines[-1])["step"] >= step:
            process.send_signal(sig)
            break
        time.sleep(0.002)
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)


@pytest.mark.parametrize("order", ["random", "sequential"])
def test_resume_after_sigkill_is_exact(dataset, tmp_path, order):
    config = _config(dataset, tmp_path / "whole", data_order=order, max_steps=40, eval_interval=10)
    assert _cli(config).returncode == 0
    broken = _config(dataset, tmp_path / "broken", data_order=order, max_steps=40, eval_interval=10)
    killed = _signal_at(broken, 6, signal.SIGKILL)
    assert killed.returncode == -9 and not (tmp_path / "broken" / "final").exists()
    assert list((tmp_path / "broken").glob("ckpt-*.pt"))  # at least the one of step 4
    resumed = _cli(broken, extra=["--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "broken")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    logged = [json.loads(line)["step"] for line in (tmp_path / "broken" / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(0, config.max_steps + 1))  # steps redone after the kill are not logged twice
    final = [json.loads((tmp_path / r / "summary.json").read_text())["final_val_loss"] for r in ("whole", "broken")]
    assert abs(final[0] - final[1]) <= 1e-6


def test_resume_with_other_settings_is_refused_naming_them(dataset, tmp_path):
    broken = _config(dataset, tmp_path / "run", max_steps=40)
    assert _signal_at(broken, 5, signal.SIGKILL).returncode == -9
    for flag, value, named in (("--lr", "0.002", "lr 0.003 -> 0.002"), ("--max-steps", "20", "max_steps 40 -> 20"),
                               ("--micro-batch-size", "2", "tokens_per_step 128 -> 64")):
        again = _cli(broken, extra=["--resume", flag, value])
        assert again.returncode == 2 and named in again.stderr, again.stderr
    assert _cli(broken, extra=["--resume"]).returncode == 0


def test_sigterm_checkpoints_and_exits_with_the_signal(dataset, tmp_path):
    run = _signal_at(_config(dataset, tmp_path / "run", checkpoint_interval=0, max_steps=200), 3, signal.SIGTERM)
    assert run.returncode == 128 + 15, run.stderr  # so that `train && next` stops, as a shell would
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    stopped = summary["steps"]
    assert summary["status"] == "interrupted" and 3 <= stopped < 200
    assert f"stopped at step {stopped}" in run.stdout and "model in" not in run.stdout
    assert "--resume" in run.stderr and not (tmp_path / "run" / "final").exists()
    assert [p.name for p in (tmp_path / "run").glob("ckpt-*.pt")] == [f"ckpt-{stopped:07d}.pt"]


def _torchrun_losses(config: TrainConfig, nproc: int):
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
            str(29500 + nproc + (7 if config.distributed == "fsdp" else 0)), "-m", "inheritune", "train"]
    for key, value in vars(config).items():
        if value not in ("", None):
            args += [f"--{key.replace('_', '-')}", str(value).lower() if isinstance(value, bool) else str(value)]
    result = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [json.loads(line) for line in (Path(config.out) / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["step"] == 0 and "loss" not in lines[0]  # the loss before training, then the steps
    lines = lines[1:]
    summary = json.loads((Path(config.out) / "summary.json").read_text())
    for line in lines:  # MFU divides by the peak of every device that ran the step
        expected = summary["flops_per_token"] * line["tokens_per_s"] / (config.peak_flops * nproc)
        assert line["mfu"] == pytest.approx(expected, rel=1e-9)
    return [line["loss"] for line in lines], summary


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one_with_the_same_global_batch(dataset, tmp_path, strategy):
    common = dict(max_steps=10, eval_interval=10, checkpoint_interval=10, global_batch_tokens=32 * 8, peak_flops=1e12)
    single = train(_config(dataset, tmp_path / "one", micro_batch_size=4, **common))  # 2 accumulation steps
    single_losses = [h["loss"] for h in single["history"] if "loss" in h]
    losses, summary = _torchrun_losses(_config(dataset, tmp_path / strategy, distributed=strategy,
                                               micro_batch_size=4, **common), 2)
    assert summary["world_size"] == 2 and summary["grad_accum"] == 1 and single["grad_accum"] == 2
    assert len(losses) == 10
    assert max(abs(a - b) for a, b in zip(losses, single_losses)) <= 1e-4
    assert abs(summary["final_val_loss"] - single["final_val_loss"]) <= 1e-4
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / strategy)
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-4


def test_weight_decay_skips_norms_and_biases():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64, n_positions=32))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(".bias" in names[id(p)] or "ln_" in names[id(p)] for p in no_decay["params"])
    assert all(p.dim() == 2 for p in decay["params"])
    assert any("ln_f" in names[id(p)] for p in no_decay["params"])
    assert any("c_attn.bias" in names[id(p)] for p in no_decay["params"])


def test_schedule_warms_up_then_decays_to_the_floor():
    lrs = [lr_at(s, 100, 1e-3, 1e-5, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lr_at(100, 100, 1e-3, 1e-5, 10) == pytest.approx(1e-5)


def test_distillation_loss_by_hand():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    targets = torch.randint(0, 11, (2, 5))
    ce = torch.nn.functional.cross_entropy(student.reshape(-1, 11), targets.reshape(-1))
    loss, got_ce, kl = distillation_loss(student, teacher, targets, alpha=1.0, temperature=2.0)
    assert torch.equal(loss, got_ce) and torch.allclose(loss, ce) and kl.item() == 0.0
    t = 2.0
    p_t = torch.softmax(teacher / t, -1)
    by_hand = (p_t * (torch.log(p_t) - torch.log_softmax(student / t, -1))).sum(-1).mean() * t * t
    loss, _, kl = distillation_loss(student, teacher, targets, alpha=0.6, temperature=t)
    assert kl.item() > 0 and kl.item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert loss.item() == pytest.approx(0.6 * ce.item() + 0.4 * by_hand.item(), rel=1e-5)


def test_kd_first_step_loss_is_ce_plus_kl_against_another_teacher(dataset, tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from inheritune.data.dataset import TokenData
    from inheritune.data.windows import RandomWindows

    teacher_dir = tmp_path / "teacher"  # a teacher that is not the student: the KL term is far from 0
    teacher = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for parameter in teacher.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.5)
    teacher.save_pretrained(teacher_dir)
    student = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    teacher.eval()
    summary = train(_config(dataset, tmp_path / "kd", model=str(tiny_model_dir), max_steps=2, teacher=str(teacher_dir),
                            kd_alpha=0.6, kd_temperature=2.0))
    x, y = RandomWindows(TokenData(dataset).split("train"), 32, 4, 1337).batch(0)
    with torch.no_grad():
        s, t = student(x).logits.float(), teacher(x).logits.float()
    ce = torch.nn.functional.cross_entropy(s.reshape(-1, s.shape[-1]), y.reshape(-1))
    p_t = torch.softmax(t / 2.0, -1)
    kl = (p_t * (torch.log_softmax(t / 2.0, -1) - torch.log_softmax(s / 2.0, -1))).sum(-1).mean() * 4.0
    assert kl.item() > 0.1
    assert summary["history"][1]["loss"] == pytest.approx(0.6 * ce.item() + 0.4 * kl.item(), rel=1e-5)
    assert summary["teacher_flops"] > 0 and summary["training_flops"] > summary["teacher_flops"]


def test_kd_with_alpha_one_equals_plain_training(dataset, tmp_path, tiny_model_dir):
    plain = train(_config(dataset, tmp_path / "plain", model=str(tiny_model_dir), max_steps=4))
    kd = train(_config(dataset, tmp_path / "kd", model=str(tiny_model_dir), max_steps=4,
                       teacher=str(tiny_model_dir), kd_alpha=1.0))
    assert [h.get("loss") for h in plain["history"]] == [h.get("loss") for h in kd["history"]]
    soft = train(_config(dataset, tmp_path / "soft", model=str(tiny_model_dir), max_steps=4,
                         teacher=str(tiny_model_dir), kd_alpha=0.5))
    assert soft["history"][1]["loss"] != plain["history"][1]["loss"]


def test_bad_input_is_refused_and_nothing_is_lost(dataset, tmp_path, tiny_model_dir):
    from transformers import LlamaConfig, LlamaForCausalLM

    small = tmp_path / "small-vocab"
    LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=4)).save_pretrained(small)
    with pytest.raises(UserError, match="does not fit the model's embeddings"):
        train(_config(dataset, tmp_path / "a", model=str(small)))
    with pytest.raises(UserError, match="longer than the model's context"):
        train(_config(dataset, tmp_path / "b", model=str(tiny_model_dir), seq_len=512))
    with pytest.raises(UserError, match="not a multiple"):
        train(_config(dataset, tmp_path / "c", global_batch_tokens=100))
    train(_config(dataset, tmp_path / "run", max_steps=8))
    before = (tmp_path / "run" / "final" / "model.safetensors").read_bytes()
    with pytest.raises(UserError, match="--resume to continue it or --overwrite"):
        train(_config(dataset, tmp_path / "run", max_steps=8, seed=5))
    assert (tmp_path / "run" / "final" / "model.safetensors").read_bytes() == before
    newest = sorted((tmp_path / "run").glob("ckpt-*.pt"))[-1]
    newest.write_bytes(newest.read_bytes()[:1000])
    # --overwrite with a bad setting or damaged data must fail before the finished run is touched.
    import shutil

    broken = tmp_path / "broken-ds"
    shutil.copytree(dataset, broken)
    (broken / "train.bin").write_bytes((broken / "train.bin").read_bytes()[:-10])
    with pytest.raises(UserError, match="damaged"):
        train(_config(broken, tmp_path / "run", max_steps=8, overwrite=True))
    for bad in (dict(lr=float("nan")), dict(lr=-1.0), dict(beta1=1.5), dict(log_interval=0), dict(grad_clip=-1.0),
                dict(warmup_steps=20), dict(dtype="float16")):
        with pytest.raises(UserError):
            train(_config(dataset, tmp_path / "run", max_steps=8, overwrite=True, **bad))
    with pytest.raises(UserError, match="bad scratch option|whole number|at least 1"):
        train(_config(dataset, tmp_path / "run", model="scratch:llama:layers=0,hidden=32,heads=4", overwrite=True))
    with pytest.raises(UserError, match="whole number"):
        train(_config(dataset, tmp_path / "run", model="scratch:llama:layers=two,hidden=32,heads=4", overwrite=True))
    assert (tmp_path / "run" / "final" / "model.safetensors").read_bytes() == before
    with pytest.raises(UserError, match=r"damaged.*older checkpoint .*ckpt-0000004.pt is available"):
        train(_config(dataset, tmp_path / "run", max_steps=8, resume=True))
    with pytest.raises(UserError, match="max_steps 8 -> 12"):  # a longer run from step 4 is another run
        train(_config(dataset, tmp_path / "run", max_steps=12, resume_from=str(tmp_path / "run" / "ckpt-0000004.pt")))
    summary = train(_config(dataset, tmp_path / "run", max_steps=8,
                            resume_from=str(tmp_path / "run" / "ckpt-0000004.pt")))
    assert summary["steps"] == 8  # the damaged step-8 checkpoint of the abandoned branch was moved aside
    assert (tmp_path / "run" / "abandoned" / "after-step-4" / newest.name).is_file()


def test_non_finite_loss_stops_without_a_bad_checkpoint(dataset, tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    broken = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        broken.model.norm.weight.fill_(float("nan"))
    broken.save_pretrained(tmp_path / "nan-model")
    with pytest.raises(UserError, match="loss became nan at step 1"):
        train(_config(dataset, tmp_path / "run", model=str(tmp_path / "nan-model")))
    assert not list((tmp_path / "run").glob("ckpt-*.pt")) and not (tmp_path / "run" / ".lock").exists()


def test_chunked_loss_trains_like_the_plain_path_and_short_runs_stay_eager(dataset, tmp_path, tiny_model_dir):
    chunked = train(_config(dataset, tmp_path / "chunked", model=str(tiny_model_dir), max_steps=6))
    plain = train(_config(dataset, tmp_path / "plain", model=str(tiny_model_dir), max_steps=6, chunked_loss=False))
    assert chunked["chunked_loss"] and not plain["chunked_loss"]
    assert not chunked["compiled"]  # --compile auto: a 6-step run is far too short to repay compiling
    assert chunked["history"][0]["val_loss"] == pytest.approx(plain["history"][0]["val_loss"], abs=1e-5)
    for a, b in zip(chunked["history"][1:], plain["history"][1:]):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    assert chunked["final_val_loss"] == pytest.approx(plain["final_val_loss"], abs=1e-5)
    a, b = _weights(tmp_path / "chunked"), _weights(tmp_path / "plain")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5
    from conftest import tiny_llama

    tiny_llama(layers=3, seed=11).save_pretrained(tmp_path / "teacher")  # another model: the KL is far from 0
    teacher = dict(model=str(tiny_model_dir), max_steps=3, teacher=str(tmp_path / "teacher"), kd_alpha=0.6)
    kd_chunked = train(_config(dataset, tmp_path / "kd1", **teacher))
    kd_plain = train(_config(dataset, tmp_path / "kd2", chunked_loss=False, **teacher))
    ce_only = train(_config(dataset, tmp_path / "ce", model=str(tiny_model_dir), max_steps=3))
    for a, b, c in zip(kd_chunked["history"][1:], kd_plain["history"][1:], ce_only["history"][1:]):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert abs(a["loss"] - c["loss"]) > 1e-3  # the teacher's term is there to be got right


def test_compile_auto_rule():
    from types import SimpleNamespace

    from inheritune.training.budget import BatchPlan, compile_decision

    d = SimpleNamespace(device=torch.device("cpu"), main=False)
    config = TrainConfig(model="m", data="d", out="o", max_steps=100)
    plan = BatchPlan.of(config, 1)
    # 100 steps of 1e12 FLOPs at 50% of 1e12 FLOP/s = 200 s < 10 x 60 s: eager; 10x the FLOPs: compiled
    assert not compile_decision(config, plan, 1e12, 1e12, d)
    assert compile_decision(config, plan, 1e13, 1e12, d)
    assert compile_decision(TrainConfig(model="m", data="d", out="o", max_steps=1, compile="true"), plan, 1.0, 1e12, d)
    with pytest.raises(UserError, match="compile must be"):
        TrainConfig(model="m", data="d", out="o", compile="sometimes")


def _full_disk_after(limit: int, real):
    """torch.save that writes ``limit`` checkpoints, then fails as it does on a real full disk (seen on a tmpfs:
    tests/test_faults.py): a partial file, then the zip writer's position check, caused by the stream's error."""
    calls = []

    def save(payload, path, *args, **kwargs):
        calls.append(path)
        if len(calls) > limit:
            Path(path).write_bytes(b"partial")
            error = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 768 vs 662")
            raise error from RuntimeError("basic_ios::clear: iostream error")
        return real(payload, path, *args, **kwargs)
    return save


def test_a_full_disk_is_one_line_naming_the_space_and_the_last_good_checkpoint(dataset, tmp_path, monkeypatch):
    import inheritune.training.checkpoint as checkpoint

    out = tmp_path / "run"
    monkeypatch.setattr(checkpoint.torch, "save", _full_disk_after(1, torch.save))
    with pytest.raises(UserError) as error:
        train(_config(dataset, out, max_steps=10, checkpoint_interval=4))
    message = str(error.value)
    assert "\n" not in message and f"cannot write the checkpoint {out / 'ckpt-0000008.pt'}" in message
    assert "unexpected pos 768 vs 662" in message and "free on its disk" in message and "it needs about" in message
    assert f"last good checkpoint is {out / 'ckpt-0000004.pt'}" in message
    # the partial file is gone, the good checkpoint and nothing else of the run's temporaries remain
    assert sorted(p.name for p in out.glob("ckpt-*")) == ["ckpt-0000004.pt", "ckpt-0000004.pt.sha256"]
    assert not (out / ".lock").exists()
    monkeypatch.undo()
    summary = train(_config(dataset, out, max_steps=10, checkpoint_interval=4, resume=True))
    straight = train(_config(dataset, tmp_path / "straight", max_steps=10, checkpoint_interval=4))
    assert summary["status"] == "finished" and summary["final_val_loss"] == straight["final_val_loss"]


@pytest.mark.parametrize("failure", ["os", "safetensors"])
def test_a_full_disk_while_writing_the_model_keeps_the_checkpoints(dataset, tmp_path, monkeypatch, failure):
    from safetensors import SafetensorError
    from transformers import PreTrainedModel

    out = tmp_path / "run"
    real = PreTrainedModel.save_pretrained

    def full(self, path, *args, **kwargs):
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "model.safetensors").write_bytes(b"partial")
        if failure == "safetensors":  # what safetensors' writer raises on a full disk
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full)
    with pytest.raises(UserError) as error:
        train(_config(dataset, out, max_steps=8))
    message = str(error.value)
    assert f"cannot write the trained model {out / 'final'}" in message and "No space left on device" in message
    assert "checkpoints in" in message and "\n" not in message
    assert not (out / "final.tmp").exists() and not (out / "final").exists()
    assert (out / "ckpt-0000008.pt").is_file()
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", real)
    summary = train(_config(dataset, out, max_steps=8, resume=True))
    assert summary["status"] == "finished" and (out / "final" / "model.safetensors").is_file()
