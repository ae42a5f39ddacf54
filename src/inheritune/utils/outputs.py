"""What an output folder holds, told by its marker files, so that each verb's --overwrite replaces only its own
kind of output (data prepare a dataset, inherit a child it cut, analyze an analysis) and refuses a model, a run,
a dataset or a user's files in one line that names what is there; and where a verb's inputs live, so that no
output is written over or around one of them, whichever option named it."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from inheritune.utils.errors import UserError, refuse_output_over_input, writing

# A process's temporary file or folder (errors.staging_name) or a replaced output moved aside (replace_dir):
# neither is the folder's content, and neither is ever a user's file.
_TEMPORARY = re.compile(r"\..+\.(tmp|old)-\d+")
_WEIGHTS = ("*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin", "*.gguf")
_TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "tokenizer.model",
              "special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "chat_template.json")


def read_object(path: Path) -> dict | None:
    """A JSON object file, or None when it is missing, damaged or not an object."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


@dataclass(frozen=True)
class Kind:
    """One verb's kind of output: its name in messages, the entries that verb writes (glob patterns), and the
    marker test that the folder is one (entries alone are not enough: a folder of PNGs is not an analysis)."""

    name: str
    entries: tuple[str, ...]
    marker: Callable[[Path], bool]


def is_dataset(folder: Path) -> bool:
    # a damaged meta.json still marks a dataset (replaced with --overwrite); a readable one must be ours
    meta = read_object(folder / "meta.json")
    if meta is not None:
        return str(meta.get("format", "")).startswith("inheritune-tokens")
    return (folder / "meta.json").is_file() or (folder / "train.bin").is_file()


def is_inherited_child(folder: Path) -> bool:
    """A child that inherit cut and nothing has trained since (a trained model's record holds 'trained')."""
    record = read_object(folder / "inheritune.json")
    return record is not None and "init" in record and "layers" in record and "trained" not in record


def is_analysis(folder: Path) -> bool:
    report = read_object(folder / "report.json")
    if report is not None:
        return "recommendation" in report and "models" in report
    return (folder / "report.json").is_file()  # damaged: ours all the same (a layers.csv alone could be anyone's)


def is_converted_model(folder: Path) -> bool:
    """A model that ``assets convert`` wrote (its card says so)."""
    try:
        card = (Path(folder) / "README.md").read_text(errors="replace")
    except OSError:
        return False
    return (Path(folder) / "config.json").is_file() and "by `inheritune assets convert`" in card


DATASET = Kind("a prepared dataset", ("meta.json", "train.bin", "val.bin", "tokenizer"), is_dataset)
CHILD = Kind("a child made by inherit", ("config.json", "generation_config.json", "inheritune.json", "README.md",
                                          *_WEIGHTS, *_TOKENIZER), is_inherited_child)
CONVERTED = Kind("a model converted by assets convert",  # what save_pretrained writes, never a user's .gguf or .bin
                 ("config.json", "generation_config.json", "README.md", "model.safetensors", "model-*.safetensors",
                  "model.safetensors.index.json", *_TOKENIZER), is_converted_model)
ANALYSIS = Kind("an analysis made by analyze", ("report.json", "layers.csv", "heads.csv", "*.png"), is_analysis)


def _matches(folder: Path, patterns: tuple[str, ...]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if any(fnmatch(p.name, pattern) for pattern in patterns))


def describe(folder: Path) -> str:
    """What ``folder`` holds, by its marker files: a run, a model, a dataset, an analysis, evaluation results, a
    tokenizer (the first that fits), else the names of a few of its files."""
    folder = Path(folder)
    run = _matches(folder, ("run.json", "state.json", "ckpt-*.pt", "metrics.jsonl", "summary.json"))
    weights = _matches(folder, _WEIGHTS)
    if run:
        return f"a run ({', '.join(run[:3])})"
    if weights:
        record = read_object(folder / "inheritune.json") or {}
        what = "a trained model" if "trained" in record else "a child made by inherit" if "init" in record \
            else "a model"
        return f"{what} ({', '.join(_matches(folder, ('config.json',)) + weights[:2])})"
    if is_dataset(folder) and _matches(folder, ("meta.json", "*.bin")):
        return f"a prepared dataset ({', '.join(_matches(folder, ('meta.json', '*.bin')))})"
    if is_analysis(folder):
        return f"an analysis ({', '.join(_matches(folder, ('report.json', '*.csv'))[:3])})"
    if (folder / "results.json").is_file():
        return "evaluation results (results.json)"
    tokenizer = _matches(folder, _TOKENIZER)
    if tokenizer:
        return f"a tokenizer ({', '.join(tokenizer[:2])})"
    names = sorted(p.name for p in folder.iterdir() if not _TEMPORARY.fullmatch(p.name))
    return f"other files ({', '.join(names[:3])}{f' and {len(names) - 3} more' if len(names) > 3 else ''})"


def holds_own_kind(out: Path, kind: Kind, verb: str) -> bool:
    """Whether ``out`` holds ``kind`` (to reuse, or to replace under --overwrite); False when it is missing or
    empty. Anything else there (a file, a model, a run, a dataset, a user's files, or this kind mixed with files
    the verb never writes) is refused whatever --overwrite says: replacing it would lose them."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory")
    entries = [p.name for p in out.iterdir() if not _TEMPORARY.fullmatch(p.name)] if out.is_dir() else []
    if not entries:
        return False
    foreign = sorted(name for name in entries if not any(fnmatch(name, pattern) for pattern in kind.entries))
    if not foreign and kind.marker(out):
        return True
    held = describe(out)
    if kind.marker(out):
        held = f"{kind.name} and files that {verb} does not write ({', '.join(foreign[:3])})"
    raise UserError(f"--out {out} holds {held}; {verb} replaces only {kind.name}, even with --overwrite: "
                    "choose another --out")


def refuse_over_inputs(out: str | Path, inputs: list[tuple[str, str | Path | None]]) -> None:
    """Refuse an output that is, holds or lies inside any input, naming the option that gave it (``inputs``:
    (option, path) pairs, the path None for one not given)."""
    for option, path in inputs:
        try:
            refuse_output_over_input(out, path)
        except UserError:
            raise UserError(f"the output {out} would overwrite the input {path} ({option}): it is, holds or lies "
                            "inside it; choose another --out") from None


@contextmanager
def writing_staged(what: str, shown: Path, needed: int | None = None, fallback: str = ""):
    """``errors.writing`` for a file written into a staging folder: the one line names ``shown``, the file's place
    in the finished output, not the temporary name the operating system's error carries."""
    with writing(what, shown, needed, fallback):
        try:
            yield
        except OSError as exc:
            if exc.filename is None:
                raise
            raise OSError(exc.errno, exc.strerror) from None
        except Exception as exc:  # tokenizers (Rust) reports a failed write as a bare Exception "... (os error 28)"
            if "(os error" not in str(exc):
                raise
            raise OSError(str(exc)) from None


def last_good(out: Path, replacing: bool, what: str) -> str:
    """The end of a failed write's one line: what is still good (an output is swapped in whole or not at all, so
    the previous one, or nothing) and how to go on."""
    return (f"{out} still holds the previous {what}, untouched" if replacing else "Nothing was written") + \
        "; free some space and run the same command again"
