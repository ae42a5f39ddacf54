"""One error type for mistakes a user can fix (the CLI prints it as one line instead of a traceback), and the
small guards that keep a user's files safe: never write over an input, swap a finished output in whole."""

import glob
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


# What torch.save's stream writer raises when a write fails: on a real full disk, "[enforce fail at
# inline_container.cc] . unexpected pos N vs M" whose cause is "basic_ios::clear: iostream error"; elsewhere
# "PytorchStreamWriter failed writing file ...".
_WRITE_FAILURES = ("writ", "unexpected pos", "iostream error", "no space left", "file too large", "disk quota")


def _is_write_failure(exc: BaseException) -> bool:
    chain, seen = [], 0
    while exc is not None and seen < 5:
        chain.append(str(exc).lower())
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return any(marker in text for text in chain for marker in _WRITE_FAILURES)


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
        if isinstance(exc, RuntimeError) and not _is_write_failure(exc) or \
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


def staging_name(path: Path) -> Path:
    """A temporary sibling of ``path`` unique to this process: two processes never write the same temporary file,
    and a leftover one never looks like the finished output (it has another name)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def remove_stale_staging(folder: Path, names: tuple[str, ...] | list[str] | None = None) -> None:
    """Delete the temporary files and folders (``.NAME.tmp-PID``, and ``.NAME.old-PID`` that ``replace_dir`` moves
    aside) that a killed process of this tool left in ``folder``: only for the given output ``names`` (other
    programs' hidden files of the same shape are not ours), and only when that pid is not a live process here.
    ``names`` None: every such entry, for a folder only this tool writes (its cache, its own task folder)."""
    if not Path(folder).is_dir():
        return

    def stale(item: Path) -> bool:
        pid = item.name.rsplit("-", 1)[-1]
        return pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid))

    for name in names or ():  # killed between replace_dir's two renames: the previous output goes back in place
        target = Path(folder) / name
        if not target.exists():
            olds = [item for item in Path(folder).glob(f".{glob.escape(name)}.old-*") if stale(item)]
            if olds:  # the newest, if several commands were killed there
                os.replace(max(olds, key=lambda item: item.stat().st_mtime_ns), target)
    patterns = [f".{glob.escape(name)}.{kind}-*" for name in names for kind in ("tmp", "old")] \
        if names is not None else [".*.tmp-*"]
    for pattern in patterns:
        for item in Path(folder).glob(pattern):
            if stale(item):
                shutil.rmtree(item, ignore_errors=True) if item.is_dir() else item.unlink(missing_ok=True)


def atomic_write(path: str | Path, content: str | bytes, what: str, fallback: str = "") -> None:
    """Write a file whole or not at all: into a temporary sibling, then renamed over ``path``. A failed write (a
    full disk) is one line naming the file and the free space, the temporary file is removed, and the previous
    ``path`` (if any) is left as it was, so a report is never left empty or half-written."""
    path = Path(path)
    tmp = staging_name(path)
    data = content.encode() if isinstance(content, str) else content
    try:
        with writing(what, path, len(data), fallback):
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())  # on a full disk some filesystems fail only here
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, value, what: str, fallback: str = "") -> None:
    atomic_write(path, json.dumps(value, indent=2) + "\n", what, fallback)
