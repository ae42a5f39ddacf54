import json

import numpy as np
import pytest
import torch

from inheritune.data.dataset import PrepareConfig, TokenData, input_files, prepare, read_documents
from inheritune.data.windows import RandomWindows, SequentialWindows, fixed_windows
from inheritune.utils.errors import UserError


def _prepare(inputs, out, tokenizer, **kwargs):
    return prepare(PrepareConfig(input=[str(i) for i in inputs], out=str(out), tokenizer=str(tokenizer), **kwargs),
                   progress=False)


def test_prepare_text_dir_split_and_eos(text_dir, tmp_path, gpt2_tokenizer_dir, gpt2_tokenizer):
    out = _prepare([text_dir], tmp_path / "ds", gpt2_tokenizer_dir, val_fraction=0.2, seed=3)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["dtype"] == "uint16" and meta["val_documents"] == 4 and meta["train_documents"] == 16
    data = TokenData(out)
    train, val = data.split("train"), data.split("val")
    assert len(train) == meta["train_tokens"] and len(val) == meta["val_tokens"]
    assert int((train == 50256).sum()) == 16 and int((val == 50256).sum()) == 4 and val[-1] == 50256
    # Every document appears whole in exactly one split, in input order.
    docs = [gpt2_tokenizer(t)["input_ids"] + [50256] for t in read_documents(input_files([str(text_dir)]))]
    joined = np.concatenate([train, val]).tolist()
    assert sorted(map(tuple, _split_docs(joined))) == sorted(map(tuple, docs))
    assert [len(d) for d in _split_docs(list(val))] == [len(d) for d in docs if tuple(d) in
                                                         set(map(tuple, _split_docs(list(val))))]


def _split_docs(ids):
    docs, current = [], []
    for token in ids:
        current.append(token)
        if token == 50256:
            docs.append(current)
            current = []
    return docs


def test_split_is_deterministic_and_seeded(text_dir, tmp_path, gpt2_tokenizer_dir):
    a = _prepare([text_dir], tmp_path / "a", gpt2_tokenizer_dir, seed=1, val_fraction=0.25)
    b = _prepare([text_dir], tmp_path / "b", gpt2_tokenizer_dir, seed=1, val_fraction=0.25)
    c = _prepare([text_dir], tmp_path / "c", gpt2_tokenizer_dir, seed=2, val_fraction=0.25)
    assert (a / "val.bin").read_bytes() == (b / "val.bin").read_bytes()
    assert (a / "val.bin").read_bytes() != (c / "val.bin").read_bytes()


def test_train_extra_adds_train_text_and_keeps_the_validation_split(text_dir, tmp_path, gpt2_tokenizer_dir):
    extra = tmp_path / "extra.jsonl"
    extra.write_text("".join(json.dumps({"text": f"Extra page {i} says something new about widgets."}) + "\n"
                             for i in range(7)))
    plain = _prepare([text_dir], tmp_path / "plain", gpt2_tokenizer_dir, val_fraction=0.25)
    more = prepare(PrepareConfig(input=[str(text_dir)], train_extra=[str(extra)], out=str(tmp_path / "more"),
                                 tokenizer=str(gpt2_tokenizer_dir), val_fraction=0.25), progress=False)
    assert (plain / "val.bin").read_bytes() == (more / "val.bin").read_bytes()  # the same documents held out
    base, grown = TokenData(plain).split("train"), TokenData(more).split("train")
    meta = json.loads((more / "meta.json").read_text())
    assert np.array_equal(grown[:len(base)], base) and len(grown) - len(base) == meta["train_extra_tokens"] > 7 * 8
    assert meta["train_extra_documents"] == 7 and meta["train_documents"] == 15 + 7
    assert json.loads((plain / "meta.json").read_text())["fingerprint"] != meta["fingerprint"]
    assert [i.get("train_only", False) for i in meta["inputs"]][-1] is True
    with pytest.raises(UserError, match="both --input and --train-extra"):
        prepare(PrepareConfig(input=[str(text_dir)], train_extra=[str(text_dir / "doc01.txt")],
                              out=str(tmp_path / "bad"), tokenizer=str(gpt2_tokenizer_dir)), progress=False)
    assert not (tmp_path / "bad").exists()


def test_jsonl_and_parquet_inputs(tmp_path, gpt2_tokenizer_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [f"Record {i} says hello to record {i + 1}." for i in range(10)]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(json.dumps({"body": t, "id": i}) + "\n" for i, t in enumerate(texts)) + "\n")
    parquet = tmp_path / "d.parquet"
    pq.write_table(pa.table({"body": texts}), parquet)
    a = _prepare([jsonl], tmp_path / "j", gpt2_tokenizer_dir, text_field="body")
    b = _prepare([parquet], tmp_path / "p", gpt2_tokenizer_dir, text_field="body")
    for split in ("train.bin", "val.bin"):
        assert (a / split).read_bytes() == (b / split).read_bytes()
    with pytest.raises(UserError, match="no field 'text'"):
        _prepare([jsonl], tmp_path / "x", gpt2_tokenizer_dir)


def test_uint32_when_the_vocab_does_not_fit(tmp_path, text_dir):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(70_000)}
    vocab.update({"[UNK]": 70_000, "[EOS]": 70_001})
    for word in " ".join(t for t in read_documents(input_files([str(text_dir)]))).split():
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="[EOS]", unk_token="[UNK]").save_pretrained(
        tmp_path / "bigvocab")
    out = _prepare([text_dir], tmp_path / "ds", tmp_path / "bigvocab")
    data = TokenData(out)
    assert data.dtype == np.uint32 and int(data.split("train").max()) > 65_535


def test_idempotent_and_refuses_a_different_dataset(text_dir, tmp_path, gpt2_tokenizer_dir, capsys):
    out = _prepare([text_dir], tmp_path / "ds", gpt2_tokenizer_dir)
    stamp = (out / "train.bin").stat().st_mtime_ns
    _prepare([text_dir], out, gpt2_tokenizer_dir)
    assert "nothing to do" in capsys.readouterr().out
    assert (out / "train.bin").stat().st_mtime_ns == stamp
    with pytest.raises(UserError, match="--overwrite"):
        _prepare([text_dir], out, gpt2_tokenizer_dir, seed=99)
    _prepare([text_dir], out, gpt2_tokenizer_dir, seed=99, overwrite=True)
    assert json.loads((out / "meta.json").read_text())["config"]["seed"] == 99


def test_bad_inputs_fail_in_one_line(tmp_path, text_dir, gpt2_tokenizer_dir):
    with pytest.raises(UserError, match="input not found"):
        _prepare([tmp_path / "missing.txt"], tmp_path / "o", gpt2_tokenizer_dir)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(UserError, match="empty"):
        _prepare([empty], tmp_path / "o", gpt2_tokenizer_dir)
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "image.png").write_bytes(b"\x89PNG")
    with pytest.raises(UserError, match="no text files"):
        _prepare([tmp_path / "nothing"], tmp_path / "o", gpt2_tokenizer_dir)
    with pytest.raises(UserError, match="no such model path|not a Hugging Face"):
        _prepare([text_dir], tmp_path / "o", tmp_path / "no-tokenizer")
    with pytest.raises(UserError, match="at least 2 documents"):
        single = tmp_path / "one.txt"
        single.write_text("just one document")
        _prepare([single], tmp_path / "o", gpt2_tokenizer_dir)
    assert not (tmp_path / "o").exists()


def test_interrupted_prepare_leaves_nothing_that_looks_finished(text_dir, tmp_path, gpt2_tokenizer_dir,
                                                                monkeypatch):
    import inheritune.data.dataset as data_module

    def explode(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(data_module, "_batches", explode)
    with pytest.raises(KeyboardInterrupt):
        _prepare([text_dir], tmp_path / "ds", gpt2_tokenizer_dir)
    assert list(tmp_path.iterdir()) == [text_dir]


def test_sigterm_during_prepare_removes_its_staging_folder(text_dir, tmp_path, gpt2_tokenizer_dir, monkeypatch):
    import os
    import signal

    import inheritune.data.dataset as data_module
    from inheritune.utils.errors import Interrupted

    real = data_module._batches

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler would, mid-tokenisation
        yield from real(*args, **kwargs)

    monkeypatch.setattr(data_module, "_batches", terminated)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as stopped:
        _prepare([text_dir], tmp_path / "ds", gpt2_tokenizer_dir)
    assert stopped.value.signal == signal.SIGTERM
    assert list(tmp_path.iterdir()) == [text_dir]  # no hidden staging folder left behind
    assert signal.getsignal(signal.SIGTERM) is before


def test_random_windows_are_a_function_of_the_step():
    tokens = np.arange(1000, dtype=np.uint16)
    windows = RandomWindows(tokens, seq_len=16, global_batch=4, seed=7)
    x1, y1 = windows.batch(5)
    x2, y2 = RandomWindows(tokens, seq_len=16, global_batch=4, seed=7).batch(5)
    assert x1.equal(x2) and y1.equal(y2) and (y1 == x1 + 1).all()
    assert not windows.batch(6)[0].equal(x1)
    assert not RandomWindows(tokens, 16, 4, seed=8).batch(5)[0].equal(x1)
    # Two ranks (or two micro-steps) taking halves see exactly the global batch.
    assert torch.cat([windows.batch(5, 0, 2)[0], windows.batch(5, 2, 2)[0]]).equal(x1)


def test_sequential_windows_cover_the_split_once_across_ranks():
    tokens = np.arange(16 * 24 + 1, dtype=np.uint16)  # exactly 24 windows of 16
    windows = SequentialWindows(tokens, seq_len=16, global_batch=6)
    seen = [int(x[i, 0]) // 16 for step in range(4) for rank in range(2)
            for x in [windows.batch(step, offset=3 * rank, count=3)[0]] for i in range(3)]
    assert sorted(seen) == list(range(24))
    assert windows.epoch(3) == 0 and windows.epoch(4) == 1
    assert windows.batch(4)[0].equal(windows.batch(0)[0])  # second epoch starts over


def test_fixed_windows_are_deterministic_and_spread():
    tokens = np.zeros(10_001, dtype=np.uint16)
    starts = fixed_windows(tokens, 100)
    assert starts.tolist() == list(range(0, 9901, 100))
    few = fixed_windows(tokens, 100, max_windows=5)
    assert few.tolist() == [0, 2500, 5000, 7400, 9900]
    assert fixed_windows(tokens, 100, stride=50)[:3].tolist() == [0, 50, 100]
    with pytest.raises(UserError, match="too few"):
        fixed_windows(tokens[:50], 100)
