import subprocess
import sys

import pytest

from inheritune.cli import main

SUBCOMMANDS = [["data"], ["data", "prepare"], ["assets"], ["assets", "fetch"], ["assets", "convert"],
               ["assets", "list"], ["assets", "path"], ["evaluate"], ["inherit"], ["analyze"], ["train"],
               ["run"]]


@pytest.mark.parametrize("argv", [[]] + SUBCOMMANDS, ids=lambda a: " ".join(a) or "top")
def test_help_explains_every_command(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv + ["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "usage: inheritune" in text and len(text.splitlines()) >= 4


def test_user_errors_are_one_line_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "inheritune", "data", "prepare", "--input",
                             str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o"), "--tokenizer", "gpt2"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"inheritune data: error: input not found: {tmp_path / 'missing.txt'}"]


def test_unknown_config_key_is_named(tmp_path, capsys):
    config = tmp_path / "prep.yaml"
    config.write_text("val_fracton: 0.1\n")
    assert main(["data", "prepare", "--config", str(config)]) == 2
    assert "did you mean 'val_fraction'" in capsys.readouterr().err


def test_inherit_command(tmp_path, capsys):
    from families import family_configs, trained_like

    trained_like(family_configs()["gpt2"]).save_pretrained(tmp_path / "ref")
    assert main(["inherit", str(tmp_path / "ref"), "--layers", "0-1,3", "--out", str(tmp_path / "child")]) == 0
    assert (tmp_path / "child" / "inheritune.json").is_file()
    assert main(["inherit", str(tmp_path / "ref"), "--layers", "0", "--out", str(tmp_path / "c2")]) == 2
    assert "cannot inherit 0 layers" in capsys.readouterr().err


def test_a_full_disk_no_verb_explained_is_still_one_line(small_disk, capsys, monkeypatch):
    from conftest import fill_disk

    import inheritune.cli as cli

    disk = small_disk("1m")
    fill_disk(disk, leave=0)

    def fill(config):  # what any write on a full disk raises, for real
        with open(disk / "out.bin", "wb") as handle:
            handle.write(b"x" * 65536)
            handle.flush()

    monkeypatch.setattr(cli, "evaluate", fill)
    assert cli.main(["evaluate", "m", "--data", "d"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "inheritune evaluate: error: No space left on device: a file of the output; free some space and " \
                  "run the same command again", err
