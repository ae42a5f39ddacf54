"""A Ctrl-C is never lost (issue 26's bad-input sweep): one that arrives while the command starts (imports, model
loading) stops it with 128 + the signal before it changes anything, even when the shell started it with SIGINT
ignored (a background job of a script)."""

import os
import signal
import subprocess
import sys
import time

import pytest

from inheritune.train import train
from inheritune.training import rundir
from inheritune.training.recipe import TrainConfig
from inheritune.utils.errors import Interrupted

TINY = "scratch:llama:layers=2,hidden=32,heads=4,kv_heads=2,ffn=64"


def _ignore_sigint():
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # what a non-interactive shell does to a job started with &


@pytest.mark.parametrize("delay", [0.3, 1.5])
def test_a_ctrl_c_during_start_up_stops_train_with_130(dataset, tmp_path, delay):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "inheritune", "train", "--model", TINY, "--data", str(dataset), "--out", str(out),
               "--max-steps", "3000", "--seq-len", "32", "--micro-batch-size", "4", "--progress", "false"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=_ignore_sigint)
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 130, err[-2000:]
    assert "interrupted" in err and "Traceback" not in err
    assert not (out / "final").exists()  # it stopped: it did not train to its end


def test_a_signal_before_anything_is_replaced_leaves_the_old_run_as_it_was(dataset, tmp_path, monkeypatch):
    out = tmp_path / "run"
    config = dict(model=TINY, data=str(dataset), out=str(out), max_steps=2, seq_len=32, micro_batch_size=4,
                  warmup_steps=0, progress=False, device="cpu")
    train(TrainConfig(**config))
    before = {p.name: p.stat().st_mtime_ns for p in out.rglob("*")}
    validated = rundir.prepare_out

    def interrupted_while_validating(*args):
        plan = validated(*args)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the run is still being set up
        return plan

    monkeypatch.setattr(rundir, "prepare_out", interrupted_while_validating)
    handler = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN under a shell's background job
    try:
        with pytest.raises(Interrupted, match="before training began; nothing was changed") as caught:
            train(TrainConfig(**config, seed=5, overwrite=True))
    except KeyboardInterrupt:
        pytest.fail("the Ctrl-C during set-up escaped as a KeyboardInterrupt instead of stopping the run cleanly")
    assert caught.value.signal == signal.SIGINT
    assert {p.name: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # the old run, untouched
    assert signal.getsignal(signal.SIGINT) is handler  # the handler is given back
