"""--trainable all | lora | last:K: what learns, what the final model is, what it costs, and resume."""

import json
import signal

import pytest
import torch
from test_faults import reference_setup  # noqa: F401 (a fixture)
from test_train import _cli, _config, _signal_at, _weights

from inheritune.data.dataset import TokenData
from inheritune.data.windows import fixed_windows
from inheritune.train import evaluate_windows, load_training_model, train
from inheritune.training.distributed import Dist
from inheritune.training.trainable import apply_trainable, parse_trainable, training_flops_per_token
from inheritune.utils.errors import UserError


def _model(layers=3, tied=True):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=40, num_hidden_layers=layers,
                                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied,
                                        max_position_embeddings=64))


def test_parse_trainable_refuses_what_it_does_not_know():
    assert parse_trainable("all") == ("all", 0) and parse_trainable("last:3") == ("last", 3)
    for bad in ("last", "last:0", "lora:4", "some", "last:x"):
        with pytest.raises(UserError, match="--trainable takes all, lora or last:K"):
            parse_trainable(bad)


def test_training_flops_by_hand():
    """Llama, d = 16, ffn 40, 4 heads of 4, 2 KV heads (k, v: 16 -> 8), vocab 100, T = 32, three blocks.
    A block's matmul weights: q 256 + k 128 + v 128 + o 256 + gate/up/down 3 x 640 = 2688; its two norms 32;
    the final norm 16; the head (tied) 1600. Attention per block and token: 4 d T = 2048 forward."""
    block, norms, head, attention, T = 2688 + 32, 16, 1600, 4 * 16 * 32, 32
    n = 3 * block + norms + head  # 9776
    model = _model()
    assert training_flops_per_token(model, T) == 6 * n + 12 * 3 * 16 * T  # all: the usual 6 N + 12 L d T
    apply_trainable(model, "last:1")
    # tied: the head is the embeddings, which learn, so the gradient runs back through every block; only the
    # frozen blocks' weight gradients are saved
    trained = block + norms + head
    assert training_flops_per_token(model, T) == 2 * n + 3 * attention + 2 * n + 6 * attention + 2 * trained
    untied = _model(tied=False)  # the head is its own 1600 weights; the embeddings are a lookup and stay frozen
    apply_trainable(untied, "last:1")
    # forward everywhere; activation gradients through block 2, the norm and the head; weight gradients there too
    path = block + norms + head
    assert training_flops_per_token(untied, T) == 2 * n + 3 * attention + 2 * path + 2 * attention + 2 * path
    lora = _model()
    apply_trainable(lora, "lora", rank=2)
    # rank 2 on q, k, v, o, gate, up, down: 2 x (in + out) each
    adapters = 3 * 2 * ((16 + 16) + (16 + 8) + (16 + 8) + (16 + 16) + (16 + 40) + (16 + 40) + (40 + 16))
    assert sum(p.numel() for p in lora.parameters() if p.requires_grad) == adapters
    full = n + adapters
    assert training_flops_per_token(lora, T) == 2 * full + 3 * attention + 2 * full + 6 * attention + 2 * adapters


def test_last_k_trains_only_the_last_blocks_norm_and_head_and_says_when_the_head_is_tied():
    model = _model(tied=False)
    _, record = apply_trainable(model, "last:2")
    learning = {name for name, p in model.named_parameters() if p.requires_grad}
    assert learning == {n for n, _ in model.named_parameters()
                        if n.startswith(("model.layers.1.", "model.layers.2.", "model.norm.", "lm_head."))}
    assert record["blocks"] == [1, 2] and not record["tied_head"] and "note" not in record
    tied = _model(tied=True)
    _, record = apply_trainable(tied, "last:1")
    assert tied.model.embed_tokens.weight.requires_grad and record["tied_head"] and "embeddings too" in record["note"]
    with pytest.raises(UserError, match="has 3 blocks"):
        apply_trainable(_model(), "last:4")


def test_lora_adapters_start_from_the_seed_whatever_was_drawn_before():
    """PEFT draws LoRA's A matrices from torch's global random state; they are drawn from the training's seed, so a
    run re-entered in a new process (or a standalone training of a search's winner) starts from the same adapters,
    and the global state is left as it was."""
    def adapters(model):
        return {k: v for k, v in model.state_dict().items() if "lora_A" in k}

    first, second, other = _model(), _model(), _model()
    torch.rand(7)  # other draws before
    apply_trainable(first, "lora", seed=5)
    torch.manual_seed(999)
    expected = torch.rand(3)
    torch.manual_seed(999)
    apply_trainable(second, "lora", seed=5)
    assert torch.equal(torch.rand(3), expected)  # the global random state is untouched
    apply_trainable(other, "lora", seed=6)
    a, b, c = adapters(first), adapters(second), adapters(other)
    assert a and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("spec", ["lora", "last:1"])
def test_a_partial_training_ends_in_a_plain_model_that_moved_only_where_it_may(dataset, tmp_path, spec):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    summary = train(_config(dataset, out, max_steps=6, trainable=spec, lr=1e-2, lora_rank=4))
    final = _weights(out)
    assert not any("lora" in key or "base_layer" in key for key in final)  # merged: plain HF keys
    model = AutoModelForCausalLM.from_pretrained(out / "final")  # loads without peft
    assert model.config.num_hidden_layers == 2
    # the same scratch init (seeded), untrained, to compare with
    initial = load_training_model(_config(dataset, out), TokenData(dataset))[0].state_dict()
    moved = {k for k in final if not torch.allclose(final[k], initial[k], atol=1e-6)}
    if spec == "lora":
        assert moved and all(k.startswith("model.layers.") and k.endswith("proj.weight") for k in moved)
        assert summary["trainable"]["lora"]["rank"] == 4
    else:
        assert moved and all(k.startswith(("model.layers.1.", "model.norm.", "model.embed_tokens.", "lm_head."))
                             for k in moved)
        assert "model.embed_tokens.weight" in moved  # tied to the head: it learns with it (scratch llama ties)
    assert 0 < summary["trainable"]["trainable_parameters"] < summary["trainable"]["total_parameters"]
    card = (out / "final" / "README.md").read_text()
    assert "- trained: " in card and "parameters learned" in card
    assert json.loads((out / "final" / "inheritune.json").read_text())["trained"]["trainable"] == spec


@pytest.mark.parametrize("spec", ["lora"])  # (last:K's resume is exact too: the --stop-after test resumes it)
def test_resume_after_sigkill_is_exact_for_partial_training(dataset, tmp_path, spec):
    whole = _config(dataset, tmp_path / "whole", max_steps=16, eval_interval=8, trainable=spec, lr=1e-2)
    assert _cli(whole).returncode == 0
    broken = _config(dataset, tmp_path / "broken", max_steps=16, eval_interval=8, trainable=spec, lr=1e-2)
    killed = _signal_at(broken, 6, signal.SIGKILL)
    assert killed.returncode == -9 and not (tmp_path / "broken" / "final").exists()
    resumed = _cli(broken, extra=["--resume"])
    assert resumed.returncode == 0 and "resuming from" in resumed.stdout, resumed.stderr
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "broken")
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    changed = _cli(broken, extra=["--resume", "--trainable", "all"])
    assert changed.returncode == 2 and f"trainable '{spec}' -> 'all'" in changed.stderr


def test_lora_targets_that_match_nothing_are_one_line(dataset, tmp_path):
    with pytest.raises(UserError, match="--lora-targets 'nothing_here'"):
        train(_config(dataset, tmp_path / "run", max_steps=2, trainable="lora", lora_targets="nothing_here"))


def test_run_trains_trainable_choices_side_by_side(reference_setup, tmp_path):
    from test_faults import _run_config

    from inheritune.run import run

    data, ref = reference_setup
    out = tmp_path / "run"
    run(_run_config(data, ref, out, trainable=["all", "last:1"], baselines=[]))
    assert (out / "children" / "first-ce" / "train" / "final").is_dir()
    partial = out / "children" / "first-ce-last1"
    child, trained = _weights_of(partial / "child"), _weights_of(partial / "train" / "final")
    assert all(torch.equal(child[k], trained[k]) for k in child if k.startswith("model.layers.0."))
    assert any(not torch.equal(child[k], trained[k]) for k in child if k.startswith("model.layers.1."))
    text = (out / "report.md").read_text()
    assert "| last:1 | 0-1 | ce, last:1 |" in text and "| all | 0-1 | ce |" in text
    record = json.loads((partial / "train" / "run.json").read_text())["trainable_record"]
    assert record["blocks"] == [1] and record["tied_head"] and record["trainable_parameters"] < record["total_parameters"]


def _weights_of(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.mark.parametrize("spec", ["lora", "last:1"])  # (all: every resume test of test_train.py)
def test_stop_after_pauses_with_a_snapshot_and_continuing_equals_one_training(dataset, tmp_path, spec):
    """The search's rungs: a training paused at step 4, then at 8, then finished, ends where one training of 12
    steps ends (the schedule is the whole run's throughout), and each pause leaves the model of that step."""
    once = train(_config(dataset, tmp_path / "once", max_steps=12, schedule="wsd", trainable=spec, lr=1e-2))
    out = tmp_path / "rungs"
    paused = train(_config(dataset, out, max_steps=12, schedule="wsd", trainable=spec, lr=1e-2, stop_after=4))
    assert paused["status"] == "paused" and paused["steps"] == 4 and not (out / "final").exists()
    snapshot = load_training_model(_config(dataset, out, model=str(out / "snapshot")), TokenData(dataset))[0]
    assert not any("lora" in k for k in snapshot.state_dict())
    # the snapshot is the model of step 4 (adapters merged): scored on the run's windows it gives step 4's val loss
    config, data = _config(dataset, out), TokenData(dataset)
    windows = fixed_windows(data.split("val"), config.seq_len, config.eval_windows)
    scored = evaluate_windows(snapshot, data.split("val"), windows, config, Dist(device=torch.device("cpu")),
                              torch.float32)
    assert abs(scored - paused["final_val_loss"]) <= 1e-5
    assert [h.get("val_loss") for h in paused["history"] if h["step"] == 4] == [paused["final_val_loss"]]
    again = train(_config(dataset, out, max_steps=12, schedule="wsd", trainable=spec, lr=1e-2, stop_after=8,
                          resume=True))
    assert again["status"] == "paused" and again["steps"] == 8
    done = train(_config(dataset, out, max_steps=12, schedule="wsd", trainable=spec, lr=1e-2, resume=True))
    assert done["status"] == "finished" and abs(done["final_val_loss"] - once["final_val_loss"]) <= 1e-6
    a, b = _weights(tmp_path / "once"), _weights(out)
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
