"""Bad input as a new user gives it, through the command line: each ends as one line on stderr and exit 2,
never a traceback, and nothing that existed before is lost."""

import json
import shutil

import numpy as np
import pytest

from inheritune.cli import main
from inheritune.data.dataset import PrepareConfig, prepare


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
    lines = [line for line in err.replace("\r", "\n").splitlines() if "/s]" not in line and line.strip()]
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
         "'lr' (--lr) must be a finite number"),
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
    argv = ["train", "--model", str(tmp_path / "deeper"), "--data", str(data), "--out", str(tmp_path / "b"),
            "--max-steps", "2", "--seq-len", "16", "--eval-windows", "4", "--resume-from",
            str(tmp_path / "a" / "ckpt-0000002.pt")]
    _one_line_error(capsys, argv, "--resume-from would change the run")  # its settings name another model
    # a checkpoint of an older version (no settings inside, no run.json beside it) is caught by its shapes
    import torch

    state = torch.load(tmp_path / "a" / "ckpt-0000002.pt", weights_only=True)
    del state["settings"]
    torch.save(state, tmp_path / "a" / "ckpt-0000002.pt")
    (tmp_path / "a" / "run.json").unlink()
    (tmp_path / "a" / "ckpt-0000002.pt.sha256").unlink()  # nor a checksum beside it
    _one_line_error(capsys, argv, "does not fit this model")


def _damaged_model(source, tmp_path, name, damage):
    copy = tmp_path / name
    shutil.copytree(source, copy)
    damage(copy)
    return copy


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_damaged_files_read_by_any_command_are_one_line_errors(setup, capsys):
    """The same damaged model file fails the same way in every command that reads it (inherit reads tensors
    lazily, run reads the config first, assets convert reads GGUF): one line, exit 2, nothing written."""
    tmp_path, data, model = setup
    config = json.loads((model / "config.json").read_text())
    damaged = {
        "truncated-weights": lambda d: _truncate(d / "model.safetensors"),
        "garbage-weights": lambda d: (d / "model.safetensors").write_bytes(b"\x00garbage" * 100),
        "invalid-config": lambda d: (d / "config.json").write_text("{not json"),
        "unknown-type": lambda d: (d / "config.json").write_text(json.dumps({**config, "model_type": "nonesuch"})),
    }
    for name, damage in damaged.items():
        broken = _damaged_model(model, tmp_path, name, damage)
        common = ["--data", str(data)]
        for argv in (["inherit", str(broken), "--layers", "1", "--out", str(tmp_path / f"c-{name}")],
                     ["evaluate", str(broken), *common, "--max-windows", "2", "--seq-len", "16", "--inference", "false"],
                     ["analyze", str(broken), *common, "--n", "2", "--t", "8", "--out", str(tmp_path / f"a-{name}")],
                     ["train", "--model", str(broken), *common, "--out", str(tmp_path / f"t-{name}"), "--max-steps",
                      "2"],
                     ["run", "--reference", str(broken), *common, "--out", str(tmp_path / f"r-{name}")]):
            _one_line_error(capsys, argv, str(broken))
            assert not any((tmp_path / f"{prefix}-{name}").exists() for prefix in "ctr"), argv
    for name, blob in (("bad-magic.gguf", b"NOPE" + bytes(200)),
                       ("absurd.gguf", b"GGUF" + (3).to_bytes(4, "little") + (2 ** 62).to_bytes(8, "little") * 2)):
        (tmp_path / name).write_bytes(blob)
        _one_line_error(capsys, ["assets", "convert", str(tmp_path / name), "--out", str(tmp_path / "conv")], name)
        _one_line_error(capsys, ["inherit", str(tmp_path / name), "--layers", "1", "--out", str(tmp_path / "g")], name)
    assert not (tmp_path / "conv").exists() and not (tmp_path / "g").exists()


def test_bad_values_and_mismatched_inputs_are_refused_before_any_work(setup, capsys):
    tmp_path, data, model = setup
    common = ["--data", str(data)]
    train_args = ["train", "--model", str(model), *common, "--out", str(tmp_path / "t"), "--max-steps", "2"]
    report = tmp_path / "report.json"
    cases = [
        (train_args + ["--seed", "-1"], "'seed' (--seed) must be between 0"),
        (train_args + ["--seed", str(2 ** 70)], "'seed' (--seed) must be between 0"),
        (train_args + ["--lr", "inf"], "'lr' (--lr) must be a finite number"),
        (["analyze", str(model), *common, "--device", "tpu"], "device must be auto, cpu or cuda"),
        (["evaluate", str(model), *common, "--device", "tpu"], "device must be auto, cpu or cuda"),
        (["evaluate", str(model), *common, "--inference-batch", "0"], "'inference_batch' (--inference-batch) must be between 1"),
        (["evaluate", str(model), *common, "--bootstrap", "1e12"], "'bootstrap' (--bootstrap) must be between 100"),
        (["evaluate", str(model), *common, "--bootstrap", "2.5"], "'bootstrap' (--bootstrap) must be a whole number"),
        (["analyze", str(model), *common, "--lazy-tolerance", "nan"], "'lazy_tolerance' (--lazy-tolerance) must be a finite number"),
        (["analyze", str(model), *common, "--sink-threshold", "5"], "'sink_threshold' (--sink-threshold) must be between 0 and 1"),
        (["run", "--reference", str(model), *common, "--out", str(tmp_path / "r"), "--tolerance", "nan"],
         "'tolerance' (--tolerance) must be a finite number"),
        (["run", "--reference", str(model), *common, "--out", str(tmp_path / "r"), "--kd-alpha", "2"],
         "'kd_alpha' (--kd-alpha) must be between 0 and 1"),
        (["run", "--reference", str(model), *common, "--out", str(tmp_path / "r"), "--analyze-n", "0"],
         "'analyze_n' (--analyze-n) must be >= 1"),
        (["run", "--reference", str(model), *common, "--out", str(tmp_path / "r"), "--task-limit", "-1"],
         "'task_limit' (--task-limit) must be >= 0"),
        (["run", "--reference", str(model), *common, "--out", str(tmp_path / "r"), "--budget", "inf"],
         "'budget' (--budget) must be a finite number"),
        (["run", "--reference", str(model), *common, "--out", str(tmp_path / "r"), "--seq-len", "512"],
         "longer than the reference's context"),
        (["train", "--model", "scratch:llama:layers=2,hidden=32,heads=4,kv_heads=3", *common, "--out",
          str(tmp_path / "t"), "--max-steps", "2"], "not divisible by 3 key-value heads"),
    ]
    for argv, match in cases:
        _one_line_error(capsys, argv, match)
    for recommendation in (None, [], {"k": None}, {"k": float("nan")}, {"k": "many"}, {"k": 0}, {"layers": ["a"]}):
        report.write_text(json.dumps({"recommendation": recommendation}))
        _one_line_error(capsys, ["inherit", str(model), "--from-report", str(report), "--out", str(tmp_path / "c")],
                        str(report))
    assert not any((tmp_path / name).exists() for name in ("t", "r", "c"))


def test_token_ids_beyond_the_vocabulary_are_refused_by_every_reader(setup, capsys):
    tmp_path, data, model = setup
    broken = _damaged_copy(data, tmp_path, "big-ids", lambda d: None)
    tokens = np.fromfile(broken / "val.bin", dtype=np.uint16)
    tokens[:] = 60000  # beyond GPT-2's 50257, still a uint16: the files and meta.json stay consistent
    tokens.tofile(broken / "val.bin")
    tokens = np.fromfile(broken / "train.bin", dtype=np.uint16)
    tokens[:] = 60000
    tokens.tofile(broken / "train.bin")
    common = ["--data", str(broken)]
    _one_line_error(capsys, ["train", "--model", str(model), *common, "--out", str(tmp_path / "t"), "--max-steps",
                             "2", "--seq-len", "16"], "does not fit the vocabulary")
    _one_line_error(capsys, ["analyze", str(model), *common, "--n", "2", "--t", "8"], "does not fit the vocabulary")
    _one_line_error(capsys, ["evaluate", str(model), *common, "--seq-len", "16", "--inference", "false"],
                    "in the validation split does not fit the vocabulary of 50257")


def test_text_that_is_not_utf8_and_a_damaged_dataset_to_replace(setup, gpt2_tokenizer_dir, capsys):
    tmp_path, data, model = setup
    path = tmp_path / "docs.jsonl"
    path.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    _one_line_error(capsys, ["data", "prepare", "--input", str(path), "--tokenizer", str(gpt2_tokenizer_dir), "--out",
                             str(tmp_path / "o")], "docs.jsonl:2 is not UTF-8")
    damaged = _damaged_copy(data, tmp_path, "damaged", lambda d: (d / "meta.json").write_text("{cut"))
    texts = tmp_path / "texts"
    argv = ["data", "prepare", "--input", str(texts), "--tokenizer", str(gpt2_tokenizer_dir), "--out", str(damaged),
            "--val-fraction", "0.2", "--progress", "false"]
    _one_line_error(capsys, argv, "--overwrite")  # a damaged dataset is not this one: replaced only when asked
    assert main(argv + ["--overwrite", "true"]) == 0
    assert json.loads((damaged / "meta.json").read_text())["format"]


def test_a_staging_folder_left_by_a_killed_prepare_is_removed(setup, gpt2_tokenizer_dir):
    import subprocess
    import sys

    tmp_path, data, model = setup
    stale = tmp_path / ".fresh.tmp-999999999"  # a pid that does not exist
    stale.mkdir()
    (stale / "train.bin").write_bytes(b"half")
    argv = [sys.executable, "-m", "inheritune", "data", "prepare", "--input", str(tmp_path / "texts"), "--tokenizer",
            str(gpt2_tokenizer_dir), "--out", str(tmp_path / "fresh"), "--val-fraction", "0.2", "--progress", "false"]
    assert subprocess.run(argv, capture_output=True).returncode == 0
    assert not stale.exists() and (tmp_path / "fresh" / "meta.json").is_file()


def test_a_config_field_of_the_wrong_type_is_one_line_naming_it(setup, capsys):
    tmp_path, data, model = setup
    broken = tmp_path / "string-layers"
    shutil.copytree(model, broken)
    config = json.loads((broken / "config.json").read_text())
    config["num_hidden_layers"] = str(config["num_hidden_layers"])  # "2": transformers 5 checks field types
    (broken / "config.json").write_text(json.dumps(config))
    for argv in (["inherit", str(broken), "--layers", "1", "--out", str(tmp_path / "child")],
                 ["evaluate", str(broken), "--data", str(data), "--inference", "false", "--progress", "false"],
                 ["train", "--model", str(broken), "--data", str(data), "--out", str(tmp_path / "t"), "--max-steps",
                  "1", "--progress", "false"]):
        _one_line_error(capsys, argv, "config.json gives 'num_hidden_layers' a value of the wrong type")
    assert not (tmp_path / "child").exists() and not (tmp_path / "t").exists()
