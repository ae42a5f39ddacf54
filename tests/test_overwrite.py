"""--overwrite replaces only the command's own kind of output (a dataset, a child inherit cut, an analysis):
a model, a run, another kind or an input is refused in one line and left byte for byte as it was; and a staging
folder left by a killed command is removed the next time, while a live process's is kept."""

import json
import os
import shutil
from pathlib import Path

import pytest

from inheritune.analysis.attention import AnalyzeConfig
from inheritune.analyze import analyze
from inheritune.cli import main
from inheritune.data.dataset import PrepareConfig, prepare
from inheritune.inherit import InheritConfig, inherit
from inheritune.utils.errors import UserError


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "/s]" not in line]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def a_run(folder):
    """What a training run leaves (its marker files), as a user's run folder holds them."""
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps({"max_steps": 2, "lr": 3e-4}))
    (folder / "ckpt-0000002.pt").write_bytes(b"weights and optimizer state" * 100)
    (folder / "metrics.jsonl").write_text('{"step": 2, "loss": 7.1}\n')
    (folder / "loss.png").write_bytes(b"\x89PNG a plot")
    return folder


def an_analysis(folder, model="someone/else"):
    folder.mkdir()
    (folder / "report.json").write_text(json.dumps({"config": {"model": model}, "recommendation": {"k": 1},
                                                    "models": []}))
    (folder / "layers.csv").write_text("model,layer\nx,0\n")
    return folder


@pytest.fixture
def folders(tmp_path, tiny_model_dir, dataset):
    """One folder of each kind a user has: a model, a run, an analysis, a prepared dataset, a trained model."""
    trained = tmp_path / "trained"
    shutil.copytree(tiny_model_dir, trained)
    (trained / "inheritune.json").write_text(json.dumps({"trained": {"model": "x"}, "inherited": None}))
    other_model = tmp_path / "other-model"
    shutil.copytree(tiny_model_dir, other_model)
    return {"model": other_model, "run": a_run(tmp_path / "run"), "analysis": an_analysis(tmp_path / "analysis"),
            "dataset": dataset, "trained": trained}


def test_data_prepare_overwrite_replaces_only_a_dataset(folders, text_dir, tiny_model_dir, tmp_path, capsys):
    common = ["data", "prepare", "--input", str(text_dir), "--val-fraction", "0.2", "--progress", "false",
              "--overwrite", "true"]
    expected = {"model": "holds a model (config.json, model.safetensors)", "run": "holds a run (ckpt-0000002.pt",
                "analysis": "holds an analysis (layers.csv, report.json)", "trained": "holds a trained model"}
    for kind, message in expected.items():
        before = snapshot(folders[kind])
        line = one_line_error(capsys, [*common, "--tokenizer", str(tiny_model_dir), "--out", str(folders[kind])])
        assert message in line and "replaces only a prepared dataset, even with --overwrite" in line, line
        assert snapshot(folders[kind]) == before
    # the folder its own --tokenizer lives in: that folder, one inside it, one holding it
    tokenizer = folders["model"]
    before = snapshot(tokenizer)
    for out in (tokenizer, tokenizer / "data", tmp_path):
        line = one_line_error(capsys, [*common, "--tokenizer", str(tokenizer), "--out", str(out)])
        assert f"would overwrite the input {tokenizer} (--tokenizer)" in line or \
               f"would overwrite the input {text_dir} (--input)" in line, line
    assert snapshot(tokenizer) == before and not (tokenizer / "data").exists()
    line = one_line_error(capsys, [*common, "--tokenizer", str(tiny_model_dir), "--out", str(text_dir / "ds")])
    assert f"would overwrite the input {text_dir} (--input)" in line, line  # an output inside an input folder
    # its own kind is replaced: the same dataset is kept, another one needs --overwrite
    data = folders["dataset"]
    seed = json.loads((data / "meta.json").read_text())["config"]["seed"]
    assert "pass --overwrite" in one_line_error(capsys, [*common[:-2], "--tokenizer", str(tiny_model_dir), "--seed",
                                                        str(seed + 1), "--out", str(data)])
    assert main([*common, "--tokenizer", str(tiny_model_dir), "--seed", str(seed + 1), "--out", str(data)]) == 0
    assert json.loads((data / "meta.json").read_text())["config"]["seed"] == seed + 1
    # a dataset beside the user's own notes is not only a dataset
    (data / "notes.txt").write_text("mine")
    line = one_line_error(capsys, [*common, "--tokenizer", str(tiny_model_dir), "--out", str(data)])
    assert "a prepared dataset and files that data prepare does not write (notes.txt)" in line, line
    assert (data / "notes.txt").read_text() == "mine"


def test_analyze_never_writes_into_a_run_a_model_or_a_dataset(folders, tiny_model_dir, tmp_path, capsys):
    common = ["analyze", str(tiny_model_dir), "--data", str(folders["dataset"]), "--n", "2", "--t", "8",
              "--progress", "false", "--overwrite", "true"]
    other_data = shutil.copytree(folders["dataset"], tmp_path / "other-data")
    for folder in (folders["run"], folders["model"], folders["trained"], other_data):
        before = snapshot(folder)
        line = one_line_error(capsys, [*common, "--out", str(folder)])
        assert "replaces only an analysis made by analyze, even with --overwrite" in line, line
        assert snapshot(folder) == before, folder
    for out, option in ((tiny_model_dir / "analysis", "the model"), (folders["dataset"] / "a", "--data"),
                        (folders["model"], "--compare")):
        line = one_line_error(capsys, [*common, "--compare", str(folders["model"]), "--out", str(out)])
        assert f"would overwrite the input" in line and f"({option})" in line, line
    assert not (tiny_model_dir / "analysis").exists() and not (folders["dataset"] / "a").exists()
    # an analysis of another model is replaced with --overwrite, whole
    out = folders["analysis"]
    assert main([*common, "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["model"] == str(tiny_model_dir) and report["sequences"]["n"] == 2
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["report.json", "layers.csv", "heads.csv", "maxrank.png", "mass.png", "rank_heatmap.png",
         "sink_influence.png", "logit_lens.png", "attention_maps.png"])


def test_inherit_overwrite_replaces_only_a_child_it_cut(folders, tiny_model_dir, tmp_path, capsys):
    common = ["inherit", str(tiny_model_dir), "--layers", "1", "--overwrite", "true"]
    expected = {"model": "a model (config.json", "trained": "a trained model", "run": "a run",
                "dataset": "a prepared dataset", "analysis": "an analysis"}
    for kind, held in expected.items():
        before = snapshot(folders[kind])
        line = one_line_error(capsys, [*common, "--out", str(folders[kind])])
        assert f"holds {held}" in line and "replaces only a child made by inherit, even with --overwrite" in line
        assert snapshot(folders[kind]) == before, kind
    report = folders["analysis"] / "report.json"
    line = one_line_error(capsys, [*common[:2], "--from-report", str(report), "--out", str(folders["analysis"])])
    assert f"would overwrite the input {report} (--from-report)" in line, line
    child = tmp_path / "child"
    assert main([*common[:-2], "--out", str(child)]) == 0
    assert "pass --overwrite" in one_line_error(capsys, [*common[:-2], "--seed", "1", "--out", str(child)])
    assert main([*common, "--seed", "1", "--out", str(child)]) == 0
    assert json.loads((child / "inheritune.json").read_text())["seed"] == 1


def test_staging_left_by_a_killed_command_is_removed_next_time(tmp_path, tiny_model_dir, dataset):
    dead, live = 999_999_999, os.getppid()  # no process has the first; the second is this test's parent
    for name in ("child", "analysis"):
        for pid in (dead, live):
            (tmp_path / f".{name}.tmp-{pid}").mkdir()
            (tmp_path / f".{name}.tmp-{pid}" / "model.safetensors").write_bytes(b"half")
    inherit(InheritConfig(reference=str(tiny_model_dir), layers="1", out=str(tmp_path / "child")))
    assert not (tmp_path / f".child.tmp-{dead}").exists() and (tmp_path / f".child.tmp-{live}").exists()
    assert (tmp_path / f".analysis.tmp-{dead}").exists()  # inherit clears only its own output's staging
    # analyze stages its outputs under the same pattern: a kill leaves no part of an analysis in --out
    analyze(AnalyzeConfig(model=str(tiny_model_dir), data=str(dataset), n=2, t=8, out=str(tmp_path / "analysis"),
                          progress=False))
    assert not (tmp_path / f".analysis.tmp-{dead}").exists() and (tmp_path / f".analysis.tmp-{live}").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(f".tmp-{os.getpid()}")]
    assert json.loads((tmp_path / "analysis" / "report.json").read_text())["sequences"]["n"] == 2


def test_an_output_moved_aside_by_a_killed_swap_is_put_back(tmp_path):
    """A kill between replace_dir's two renames leaves the previous output only in .NAME.old-PID (and the new one,
    finished, in .NAME.tmp-PID): the next command puts the previous output back instead of deleting it."""
    from inheritune.utils.errors import remove_stale_staging

    dead = 999_999_999
    (tmp_path / f".child.old-{dead}").mkdir()
    (tmp_path / f".child.old-{dead}" / "model.safetensors").write_bytes(b"the previous child")
    (tmp_path / f".child.tmp-{dead}").mkdir()
    (tmp_path / "[x]").mkdir()  # a name with glob characters is matched as itself
    (tmp_path / f".[x].old-{dead}").mkdir()
    remove_stale_staging(tmp_path, ["child", "[x]"])
    assert (tmp_path / "child" / "model.safetensors").read_bytes() == b"the previous child"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["[x]", "child"]


def test_write_token_dataset_replaces_only_a_dataset(tmp_path, folders):
    import numpy as np

    from inheritune.data.dataset import write_token_dataset

    before = snapshot(folders["model"])
    with pytest.raises(UserError, match="holds a model"):
        write_token_dataset(folders["model"], np.arange(10), np.arange(4), vocab_size=16, eos=0, name="t")
    assert snapshot(folders["model"]) == before
    out = write_token_dataset(tmp_path / "tokens", np.arange(10), np.arange(4), vocab_size=16, eos=0, name="t")
    write_token_dataset(out, np.arange(12), np.arange(4), vocab_size=16, eos=0, name="t")
    assert json.loads((out / "meta.json").read_text())["train_tokens"] == 12


def test_evaluate_never_writes_into_or_around_its_inputs(dataset, tiny_model_dir):
    from inheritune.evaluate import EvalConfig, evaluate

    for out, named in ((tiny_model_dir, "a model"), (tiny_model_dir / "results", "a model"),
                       (dataset / "eval", "--data")):
        before = sorted(p.name for p in Path(out).parent.rglob("*"))
        with pytest.raises(UserError, match=rf"would overwrite the input .*\({named}\)"):
            evaluate(EvalConfig(models=[str(tiny_model_dir)], data=str(dataset), out=str(out), progress=False))
        assert sorted(p.name for p in Path(out).parent.rglob("*")) == before


def test_stale_staging_cleanup_touches_only_the_commands_own_names(tmp_path):
    import subprocess
    import sys

    from inheritune.utils.errors import remove_stale_staging

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid is no process now
    ours, theirs = tmp_path / f".child.tmp-{dead.pid}", tmp_path / f".notes.tmp-{dead.pid}"
    ours.mkdir()
    theirs.write_text("another program's temporary file, or a user's")
    remove_stale_staging(tmp_path, ["child"])
    assert not ours.exists() and theirs.read_text().startswith("another program's")


def test_assets_convert_overwrite_replaces_only_a_converted_model(tmp_path):
    """`assets convert X.gguf --out runs --overwrite` once moved any folder aside and deleted it; now only a model
    that assets convert wrote is replaced, and anything else is refused before the GGUF is even read."""
    from inheritune.assets.gguf import convert_gguf
    from inheritune.utils.cards import converted_card, write_card

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF, but not really")
    runs = tmp_path / "runs"
    (runs / "demo").mkdir(parents=True)
    (runs / "demo" / "run.json").write_text("{}")
    (runs / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="replaces only a model converted by assets convert, even with --overwrite"):
        convert_gguf(gguf, runs, overwrite=True)
    assert (runs / "notes.txt").read_text() == "mine" and (runs / "demo" / "run.json").is_file()
    converted = tmp_path / "converted"
    converted.mkdir()
    (converted / "config.json").write_text("{}")
    write_card(converted, converted_card(str(gguf), "llama", 2))
    with pytest.raises(UserError, match="holds a converted model; pass --overwrite"):
        convert_gguf(gguf, converted)
    with pytest.raises(UserError, match=str(gguf)):  # past the check: the fake GGUF fails to read, in one line
        convert_gguf(gguf, converted, overwrite=True)
    assert (converted / "config.json").is_file()  # nothing replaced by a conversion that failed
    (converted / "b.gguf").write_bytes(b"the user's")  # a file convert never writes, beside its model
    with pytest.raises(UserError, match="files that assets convert does not write"):
        convert_gguf(gguf, converted, overwrite=True)
    assert (converted / "b.gguf").read_bytes() == b"the user's"
