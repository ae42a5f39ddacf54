import pytest
import torch
from conftest import tiny_llama

from inheritune.assets.sources import resolve_model_path
from inheritune.models.loading import load_model
from inheritune.utils.errors import UserError


def test_load_hf_directory_gives_the_saved_model(tiny_model_dir):
    model, tokenizer = load_model(tiny_model_dir)
    reference = tiny_llama()
    ids = torch.tensor([tokenizer("The quick brown fox")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)
    assert not model.training and tokenizer.eos_token_id == 50256


def test_bf16_load(tiny_model_dir):
    model, _ = load_model(tiny_model_dir, dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16


def test_bad_model_paths_fail_in_one_line(tmp_path):
    with pytest.raises(UserError, match="GGUF file not found"):
        load_model(tmp_path / "missing.gguf")
    (tmp_path / "notamodel").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        load_model(tmp_path / "notamodel")
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(UserError, match="not a model"):
        load_model(tmp_path / "file.bin")
    with pytest.raises(UserError, match="dtype"):
        load_model(tmp_path / "notamodel", dtype="float8")


def test_hub_names_pass_through_and_fail_clearly_offline(monkeypatch):
    assert resolve_model_path("some-org/some-model") == ("some-org/some-model", None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="not a local path") as info:
        load_model("some-org/some-model-that-is-not-here", with_tokenizer=False)
    assert "\n" not in str(info.value)


def test_unreachable_hub_fails_at_once(monkeypatch):
    import socket
    import time

    from inheritune.assets import sources

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(sources, "_HUB_REACHABLE", {})

    def refuse(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    started = time.perf_counter()
    with pytest.raises(UserError, match="cannot be reached"):
        load_model("gpt2-nonexistent-name", with_tokenizer=False)
    assert time.perf_counter() - started < 5


def test_damaged_weights_fail_in_one_line(tmp_path, tiny_model_dir):
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_model_dir, damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(UserError, match="damaged, or not what it should be"):
        load_model(damaged)
    with pytest.raises(UserError, match="no CUDA"):
        load_model(tiny_model_dir, device="cuda")
