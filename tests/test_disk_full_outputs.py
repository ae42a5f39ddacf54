"""A full disk, for real (a small tmpfs, as root), under data prepare's token files, inherit's child and analyze's
outputs: one line naming the file, the free space against the space needed (tied weights counted once) and what
is still good; nothing half-written left looking finished; the same command succeeds once space is freed."""

import json
import re
import shutil

import pytest
from conftest import fill_disk

from inheritune.analysis.attention import AnalyzeConfig
from inheritune.analysis.plots import draw_loss
from inheritune.analyze import analyze
from inheritune.data.dataset import PrepareConfig, TokenData, prepare
from inheritune.inherit import InheritConfig, inherit
from inheritune.utils.errors import UserError

UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}


def needed_bytes(message: str) -> float:
    """The space the message says the write needs ("it needs about 6.5 MB")."""
    number, unit = re.search(r"it needs about ([\d.]+) (B|KB|MB|GB)", message).groups()
    return float(number) * UNITS[unit]


def files_in(folder):
    return sorted(p.name for p in folder.iterdir() if p.name != ".filler")


def test_data_prepare_on_a_full_disk(small_disk, tmp_path, gpt2_tokenizer_dir):
    texts = tmp_path / "texts"
    texts.mkdir()
    for i in range(40):  # ~ 90 KB of token files, on a disk with 24 KB left
        (texts / f"doc{i:02d}.txt").write_text(" ".join(f"Line {j} of document {i} says {i * j}." for j in range(100)))
    disk = small_disk("1m")
    out = disk / "ds"
    config = PrepareConfig(input=[str(texts)], out=str(out), tokenizer=str(gpt2_tokenizer_dir), val_fraction=0.2,
                           progress=False)
    fill_disk(disk, leave=24 * 1024)
    with pytest.raises(UserError) as caught:
        prepare(config)
    message = str(caught.value)
    assert "\n" not in message and "cannot write the dataset's token file" in message, message
    assert re.search(rf"{re.escape(str(out))}/(train|val)\.bin: No space left on device", message), message
    assert "free on its disk" in message and "Nothing was written; free some space" in message, message
    assert files_in(disk) == []  # no staging folder, no dataset that looks finished
    (disk / ".filler").unlink()
    prepare(config)  # the same command, once space is freed
    data = TokenData(out)
    actual = (out / "train.bin").stat().st_size + (out / "val.bin").stat().st_size
    assert 0.8 * actual <= needed_bytes(message) <= 1.25 * actual, (message, actual)
    assert len(data.split("train")) + len(data.split("val")) == actual // 2


def test_inherit_on_a_full_disk_counts_tied_weights_once(small_disk, tiny_model_dir):
    disk = small_disk("16m")
    out = disk / "child"
    config = InheritConfig(reference=str(tiny_model_dir), layers="1", out=str(out))
    fill_disk(disk, leave=3 * 1024 * 1024)  # the child needs ~ 9 MB: 6.4 MB of embeddings (tied) + a tokenizer
    with pytest.raises(UserError) as caught:
        inherit(config)
    message = str(caught.value)
    assert "\n" not in message and f"cannot write the child's weights {out}/model.safetensors" in message, message
    assert "Nothing was written; free some space and run the same command again" in message, message
    assert files_in(disk) == []
    (disk / ".filler").unlink()
    inherit(config)
    actual = sum(p.stat().st_size for p in out.iterdir())
    embeddings = 50257 * 32 * 4  # once in the file: the head is the same tensor
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True
    assert 0.9 * actual <= needed_bytes(message) <= actual + 64 * 1024, (message, actual)
    assert needed_bytes(message) < actual + embeddings / 2  # counting the head again would add 6.4 MB


def test_analyze_on_a_full_disk_keeps_the_previous_analysis(small_disk, tiny_model_dir, dataset):
    disk = small_disk("4m")
    out = disk / "analysis"
    first = AnalyzeConfig(model=str(tiny_model_dir), data=str(dataset), n=2, t=8, out=str(out), progress=False)
    analyze(first)
    before = {name: (out / name).read_bytes() for name in files_in(out)}
    fill_disk(disk, leave=16 * 1024)  # the plots alone need more
    second = AnalyzeConfig(model=str(tiny_model_dir), data=str(dataset), n=3, t=8, out=str(out), progress=False)
    with pytest.raises(UserError) as caught:
        analyze(second)
    message = str(caught.value)
    assert "\n" not in message and f"cannot write the analysis's" in message and str(out) in message, message
    assert f"{out} still holds the previous analysis, untouched" in message, message
    assert files_in(disk) == ["analysis"]  # no staging folder left
    assert {name: (out / name).read_bytes() for name in files_in(out)} == before  # whole: no empty report
    (disk / ".filler").unlink()
    analyze(second)
    assert json.loads((out / "report.json").read_text())["sequences"]["n"] == 3
    assert needed_bytes(message) == pytest.approx(sum((out / n).stat().st_size for n in files_in(out)), rel=0.05)


def test_a_plot_on_a_full_disk_leaves_the_previous_one(small_disk):
    disk = small_disk("1m")
    history = [{"step": s, "loss": 5.0 - s / 10, "val_loss": 5.1 - s / 10} for s in range(1, 30)]
    draw_loss({"run": history}, disk / "val_loss.png")
    before = (disk / "val_loss.png").read_bytes()
    fill_disk(disk, leave=0)
    with pytest.raises(UserError, match=r"cannot write the plot .*val_loss\.png: No space left on device"):
        draw_loss({"run": history[:10]}, disk / "val_loss.png")
    assert (disk / "val_loss.png").read_bytes() == before and files_in(disk) == ["val_loss.png"]
