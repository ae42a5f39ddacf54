"""Bad input as a new user gives it, through the command line: each ends as one line on stderr and exit 2,
never a traceback, and nothing that existed before is lost."""

import json
import shutil

import pytest

from inheritune.cli import main
from inheritune.data import PrepareConfig, prepare


@pytest.fixture
def setup(tmp_path, text_dir, tiny_model_dir):
    data = prepare(PrepareConfig(input=[str(text_dir)], out=str(tmp_path / "ds"), tokenizer=str(tiny_model_dir),
                                 val_fraction=0.2), progress=False)
    return tmp_path, data, tiny_model_dir


def _damaged_copy(data, tmp_path, name, damage):
    copy = tmp_path / name
    shutil.copytree(data, copy)
    damage(copy)
    return copy


def _one_line_error(capsys, argv, match):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, (argv, err)
    lines = [line for line in err.replace("\r", "\n").splitlines() if "it/s]" not in line and line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err  # progress bars aside, one line
    assert match in err, err


def test_damaged_datasets(setup, capsys):
    tmp_path, data, model = setup
    cases = {
        "truncated": (lambda d: (d / "val.bin").write_bytes((d / "val.bin").read_bytes()[:-6]), "damaged"),
        "missing": (lambda d: (d / "train.bin").unlink(), "missing"),
        "cut-meta": (lambda d: (d / "meta.json").write_text((d / "meta.json").read_text()[:50]), "damaged"),
        "bogus-dtype": (lambda d: (d / "meta.json").write_text(
            (d / "meta.json").read_text().replace('"uint16"', '"float64"')), "uint16 or uint32"),
        "wrong-vocab": (lambda d: (d / "meta.json").write_text(json.dumps(
            {**json.loads((d / "meta.json").read_text()), "vocab_size": 7})), "vocab_size 7"),
    }
    for name, (damage, match) in cases.items():
        broken = _damaged_copy(data, tmp_path, name, damage)
        _one_line_error(capsys, ["evaluate", str(model), "--data", str(broken)], match)
        _one_line_error(capsys, ["train", "--model", str(model), "--data", str(broken), "--out",
                                 str(tmp_path / f"t-{name}"), "--max-steps", "2"], match)
        _one_line_error(capsys, ["analyze", str(model), "--data", str(broken), "--n", "2", "--t", "8"], match)


def test_bad_options_and_paths(setup, capsys):
    tmp_path, data, model = setup
    (tmp_path / "a-file").write_text("not a directory")
    (tmp_path / "binary.dat").write_bytes(bytes(range(256)) * 4)
    common = ["--data", str(data)]
    cases = [
        (["train", "--model", str(model), *common, "--out", str(tmp_path / "a-file"), "--max-steps", "2"], "is a file"),
        (["inherit", str(model), "--layers", "1", "--out", str(tmp_path / "a-file")], "is a file"),
        (["evaluate", str(model), *common, "--out", str(tmp_path / "a-file")], "is a file"),
        (["analyze", str(model), *common, "--out", str(tmp_path / "a-file"), "--n", "2", "--t", "8"], "is a file"),
        (["train", "--model", str(model), *common, "--out", str(tmp_path / "o"), "--max-steps", "2", "--lr", "nan"],
         "lr must be"),
        (["train", "--model", str(model), *common, "--out", str(tmp_path / "o"), "--max-steps", "2", "--beta1", "1.5"],
         "beta1"),
        (["train", "--model", str(model), *common, "--out", str(tmp_path / "o"), "--max-steps", "2",
          "--log-interval", "0"], "log_interval"),
        (["train", "--model", str(model), *common, "--out", str(tmp_path / "o"), "--max-steps", "4",
          "--warmup-steps", "9"], "warmup_steps"),
        (["train", "--model", str(model), *common, "--out", str(tmp_path / "o"), "--max-steps", "2",
          "--device", "cuda"], "no CUDA"),
        (["train", "--model", "scratch:llama:layers=x,hidden=32,heads=4", *common, "--out", str(tmp_path / "o"),
          "--max-steps", "2"], "whole number"),
        (["analyze", str(model), *common, "--lazy-run", "0"], "lazy_run"),
        (["analyze", str(model), *common, "--map-layers", "7", "--n", "2", "--t", "8"], "out of range"),
        (["analyze", str(model), "--data", str(tmp_path / "binary.dat")], "not UTF-8"),
        (["evaluate", str(model), *common, "--bootstrap", "0"], "bootstrap"),
        (["inherit", str(model), "--layers", "0-1,,3", "--out", str(tmp_path / "c")], "empty item"),
        (["inherit", str(model), "--layers", "1", "--out", str(model), "--overwrite", "true"], "would overwrite"),
        (["run", *common, "--reference", str(model), "--out", str(tmp_path / "r"), "--device", "cuda"], "no CUDA"),
    ]
    for argv, match in cases:
        _one_line_error(capsys, argv, match)
    assert (model / "model.safetensors").is_file()  # the reference survived the attempt to overwrite it


def test_jsonl_text_that_is_not_text_is_refused(tmp_path, tiny_model_dir, capsys):
    for value in (123, None, ["a", "b"]):
        path = tmp_path / "docs.jsonl"
        path.write_text(json.dumps({"text": "fine text"}) + "\n" + json.dumps({"text": value}) + "\n")
        _one_line_error(capsys, ["data", "prepare", "--input", str(path), "--tokenizer", str(tiny_model_dir),
                                 "--out", str(tmp_path / "o")], "not text")


def test_results_of_another_model_are_not_overwritten(setup, capsys):
    tmp_path, data, model = setup
    other = tmp_path / "other"
    shutil.copytree(model, other)
    out = tmp_path / "eval"
    assert main(["evaluate", str(model), "--data", str(data), "--out", str(out), "--inference", "false",
                 "--max-windows", "4", "--seq-len", "32"]) == 0
    capsys.readouterr()
    _one_line_error(capsys, ["evaluate", str(other), "--data", str(data), "--out", str(out), "--inference", "false",
                             "--max-windows", "4", "--seq-len", "32"], "--overwrite")
    assert main(["evaluate", str(other), "--data", str(data), "--out", str(out), "--inference", "false",
                 "--max-windows", "4", "--seq-len", "32", "--overwrite", "true"]) == 0


def test_kd_teacher_with_another_vocabulary_and_checkpoint_of_another_shape(setup, capsys):
    from conftest import tiny_llama

    tmp_path, data, model = setup
    tiny_llama(vocab_size=50304).save_pretrained(tmp_path / "big-vocab")
    _one_line_error(capsys, ["train", "--model", str(model), "--data", str(data), "--out", str(tmp_path / "kd"),
                             "--max-steps", "2", "--teacher", str(tmp_path / "big-vocab")], "same vocabulary")
    assert main(["train", "--model", str(model), "--data", str(data), "--out", str(tmp_path / "a"), "--max-steps", "2",
                 "--seq-len", "16", "--eval-windows", "4", "--progress", "false"]) == 0
    tiny_llama(layers=3).save_pretrained(tmp_path / "deeper")
    capsys.readouterr()
    _one_line_error(capsys, ["train", "--model", str(tmp_path / "deeper"), "--data", str(data), "--out",
                             str(tmp_path / "b"), "--max-steps", "4", "--seq-len", "16", "--resume-from",
                             str(tmp_path / "a" / "ckpt-0000002.pt")], "does not fit this model")
