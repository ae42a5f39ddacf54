"""Shared fixtures: tiny random models of real HF classes, and the local assets (never the network)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # unit tests never touch the network
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

import pytest
import torch


@pytest.fixture(scope="session")
def gpt2_tokenizer_dir():
    from inheritune.assets.catalog import asset_path

    return asset_path("gpt2-tokenizer")


@pytest.fixture(scope="session")
def gpt2_tokenizer(gpt2_tokenizer_dir):
    from inheritune.data.tokenizer import load_tokenizer

    return load_tokenizer(gpt2_tokenizer_dir)


def tiny_llama(vocab_size: int = 50257, layers: int = 2, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, eos_token_id=50256, bos_token_id=50256)
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def tiny_model_dir(tmp_path, gpt2_tokenizer):
    """A 2-layer random Llama with the GPT-2 tokenizer, saved as an HF directory."""
    model = tiny_llama()
    path = tmp_path / "tiny-llama"
    model.save_pretrained(path)
    gpt2_tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def text_dir(tmp_path):
    """Twenty small English documents as text files."""
    folder = tmp_path / "texts"
    folder.mkdir()
    for i in range(20):
        body = " ".join(f"Document {i} sentence {j} talks about the number {i * j}." for j in range(30))
        (folder / f"doc{i:02d}.txt").write_text(body)
    return folder


@pytest.fixture
def dataset(text_dir, tmp_path, gpt2_tokenizer_dir):
    """The twenty documents prepared with the GPT-2 tokenizer (20% of them for validation)."""
    from inheritune.data.dataset import PrepareConfig, prepare

    return prepare(PrepareConfig(input=[str(text_dir)], out=str(tmp_path / "ds"), tokenizer=str(gpt2_tokenizer_dir),
                                 val_fraction=0.2), progress=False)


@pytest.fixture
def small_disk(tmp_path):
    """A real filesystem of a given size (a tmpfs mount), to fill for real: ``small_disk("2m")`` gives its folder.
    Needs root; the test is skipped elsewhere. Unmounted after the test."""
    import shutil
    import subprocess

    mounts = []

    def make(size: str = "2m"):
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("a real full disk needs root to mount a small tmpfs")
        folder = tmp_path / f"disk{len(mounts)}"
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounts.append(folder)
        return folder

    yield make
    for folder in mounts:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill_disk(folder, leave: int = 0) -> None:
    """Fill the filesystem holding ``folder`` until ``leave`` bytes are free (a file named .filler)."""
    import shutil

    free = shutil.disk_usage(folder).free
    with open(os.path.join(folder, ".filler"), "wb") as handle:
        remaining = max(0, free - leave)
        while remaining > 0:
            chunk = min(remaining, 1 << 20)
            try:
                handle.write(b"\0" * chunk)
                handle.flush()
            except OSError:
                break
            remaining -= chunk


def small_reference(tmp_path, text_dir, tokenizer, layers: int = 4, context: int = 64):
    """(dataset, reference dir): the twenty documents prepared with GPT-2's tokenizer, and a small Llama whose
    weights look trained (families.trained_like) saved with that tokenizer: what the run tests cut and grow."""
    from families import trained_like
    from transformers import LlamaConfig

    from inheritune.data.dataset import PrepareConfig, prepare

    data = prepare(PrepareConfig(input=[str(text_dir)], out=str(tmp_path / "ds"), tokenizer="gpt2",
                                 val_fraction=0.2), progress=False)
    config = LlamaConfig(num_hidden_layers=layers, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=50257, tie_word_embeddings=True,
                         max_position_embeddings=context)
    trained_like(config, seed=1).save_pretrained(tmp_path / "ref")
    tokenizer.save_pretrained(tmp_path / "ref")
    return data, tmp_path / "ref"
