"""One error type for mistakes a user can fix (the CLI prints it as one line instead of a traceback), and the
small guards that keep a user's files safe: never write over an input, swap a finished output in whole."""

import json
import os
import shutil
import struct
from contextlib import contextmanager
from pathlib import Path

from huggingface_hub.errors import StrictDataclassFieldValidationError
from safetensors import SafetensorError


class UserError(Exception):
    """Bad input, a missing file, a refused overwrite: something the user can act on from the message alone."""


class Interrupted(Exception):
    """A signal stopped the work cleanly (state saved); the command exits 128 + signal, like a shell."""

    def __init__(self, signal: int, message: str):
        super().__init__(message)
        self.signal = signal


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists (a lock or staging folder whose owner died can be taken over)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def refuse_output_over_input(out: str | Path, *inputs: str | Path | None) -> None:
    """An output directory that is, contains or lies inside an input would destroy that input when replaced."""
    target = Path(out).expanduser().resolve()
    for item in inputs:
        if not item:
            continue
        source = Path(str(item)).expanduser()
        if not source.exists():
            continue
        source = source.resolve()
        if target == source or target in source.parents or source in target.parents:
            raise UserError(f"the output {out} would overwrite the input {item}; choose another --out")


def replace_dir(staging: Path, out: Path) -> None:
    """Swap a fully written ``staging`` directory in as ``out``: the old one is moved aside first and deleted
    only once the new one is in place, so a failure never leaves neither."""
    out.parent.mkdir(parents=True, exist_ok=True)
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists() or out.is_symlink():
        os.replace(out, old)
    try:
        os.replace(staging, out)
    except BaseException:
        if old.exists():
            os.replace(old, out)
        raise
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    elif old.exists():
        old.unlink()


# What reading a damaged or foreign file raises on its way through json, safetensors, transformers and gguf:
# truncated or garbage weights, invalid config.json, an unknown model_type, a GGUF with a bad magic or absurd
# counts (which can ask for more memory than there is).
READ_ERRORS = (OSError, ValueError, KeyError, IndexError, EOFError, OverflowError, MemoryError, struct.error,
               UnicodeDecodeError, SafetensorError)


@contextmanager
def reading(what: str):
    """Turn the errors of reading ``what`` (a model, its config, a weights file) into one line naming it."""
    try:
        yield
    except UserError:
        raise
    except StrictDataclassFieldValidationError as exc:  # transformers 5 checks config.json's field types
        cause = exc.__cause__ or exc
        field = str(exc).split("'")[1] if "'" in str(exc) else "?"
        raise UserError(f"cannot read {what}: its config.json gives '{field}' a value of the wrong type "
                        f"({' '.join(str(cause).split())[:200]}); correct that field") from None
    except READ_ERRORS as exc:
        text = str(exc).strip()
        first = text.splitlines()[0][:300] if text else type(exc).__name__
        raise UserError(f"cannot read {what} (damaged, or not what it should be): {first}") from None


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


@contextmanager
def writing(what: str, path: Path, needed: int | None = None, fallback: str = ""):
    """Turn a failed write of ``path`` (a full disk, a quota, a permission) into one line naming it, the free space
    on its disk against what it needs, and ``fallback`` (what is still good and how to go on). torch.save reports
    a full disk as a RuntimeError from its stream writer, safetensors as a SafetensorError ("I/O error"), the rest
    of Python as an OSError."""
    try:
        yield
    except UserError:
        raise
    except (OSError, RuntimeError, SafetensorError) as exc:
        if isinstance(exc, RuntimeError) and "writ" not in str(exc).lower() or \
                isinstance(exc, SafetensorError) and "I/O error" not in str(exc):
            raise  # not about writing: a bug to see whole
        where = Path(path).parent
        while not where.exists() and where != where.parent:
            where = where.parent
        try:
            free = f"{_size(shutil.disk_usage(where).free)} free on its disk"
        except OSError:
            free = "free space unknown"
        need = f", it needs about {_size(needed)}" if needed else ""
        text = " ".join(str(exc).split())
        cause = text.split("] ")[-1][:200] if text else type(exc).__name__
        raise UserError(f"cannot write {what} {path}: {cause} ({free}{need}). {fallback}".strip()) from None


def check_output_dir(out: Path, report: str, key: str, value, overwrite: bool) -> None:
    """Refuse an --out that is a file, or that holds results about something else (unless --overwrite)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory")
    previous = out / report
    if previous.is_file() and not overwrite:
        try:
            old = json.loads(previous.read_text()).get("config", {}).get(key)
        except (json.JSONDecodeError, AttributeError):
            old = None
        if old != value:
            raise UserError(f"{out} holds results for {old!r}; pass --overwrite to replace them, or use another --out")
