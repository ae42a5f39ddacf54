"""Data preparation (text -> ``train.bin``/``val.bin`` token streams) and the memmap reader of a prepared dataset.

A prepared dataset is a directory with ``train.bin`` and ``val.bin`` (flat uint16 or uint32 token ids,
documents joined by the tokenizer's EOS) and ``meta.json``. It is written under a temporary name and renamed
into place at the end, so an interrupted ``prepare`` never leaves something that looks finished.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inheritune.assets.sources import BUILTIN_TOKENIZERS
from inheritune.data.bpe import train_bpe
from inheritune.data.tokenizer import load_tokenizer, tokenizer_identity
from inheritune.utils.config import option, to_dict
from inheritune.utils.errors import Interrupted, UserError, remove_stale_staging, replace_dir, staging_name
from inheritune.utils.outputs import DATASET, holds_own_kind, last_good, refuse_over_inputs, writing_staged
from inheritune.utils.hashing import sha256_file
from inheritune.utils.progress import progress_bar

FORMAT = "inheritune-tokens/1"
TEXT_SUFFIXES = (".txt", ".text", ".md", ".rst")
DATA_SUFFIXES = TEXT_SUFFIXES + (".jsonl", ".parquet")


@dataclass
class PrepareConfig:
    """Turn text into token streams for training and evaluation."""

    input: list[str] = option([], help="text files, directories of them, .jsonl or .parquet files")
    out: str = option("", help="output directory for train.bin, val.bin and meta.json")
    tokenizer: str = option("smollm2", help="tokenizer: built-in name (smollm2, gpt2), HF dir, .gguf, or hub name")
    train_extra: list[str] = option([], help="more text for the train split only, after --input's train documents "
                                             "(files, directories, .jsonl, .parquet): the validation split stays "
                                             "--input's own, the same documents as without it (byte for byte with "
                                             "the same --tokenizer), so that losses stay comparable")
    text_field: str = option("text", help="field holding the text in .jsonl and .parquet inputs")
    doc_split: str = option("file", help="what a document is in plain text files: 'file' or 'paragraph'")
    val_fraction: float = option(0.05, help="fraction of documents held out for validation")
    seed: int = option(1337, low=0, high=2**32 - 1, help="seed of the document-level train/val split")
    batch_size: int = option(512, help="documents per tokenizer batch (batches run on all cores)")
    train_tokenizer: int = option(0, help="instead of --tokenizer, train a byte-level BPE of this vocabulary size on "
                                         "the train split only; it is saved inside the dataset (tokenizer/)")
    overwrite: bool = option(False, help="replace a different dataset in --out (only a dataset: a model, a run, "
                                         "an analysis or other files there are refused)")
    progress: bool = option(True, help="show progress bars")

    def __post_init__(self):
        if isinstance(self.input, (str, Path)):
            self.input = [str(self.input)]
        if isinstance(self.train_extra, (str, Path)):
            self.train_extra = [str(self.train_extra)]
        if not 0.0 < self.val_fraction < 1.0:
            raise UserError(f"val_fraction must be between 0 and 1 (exclusive), got {self.val_fraction}")
        if self.doc_split not in ("file", "paragraph"):
            raise UserError(f"doc_split must be 'file' or 'paragraph', got {self.doc_split!r}")
        if self.batch_size < 1:
            raise UserError("batch_size must be at least 1")
        if self.train_tokenizer < 0 or 0 < self.train_tokenizer <= 258:
            raise UserError(f"train_tokenizer is a vocabulary size above 258 (256 bytes + EOS), got {self.train_tokenizer}")


# ------------------------------------------------------------------------------------------ reading input
def input_files(paths: list[str]) -> list[Path]:
    """Every data file named or found (recursively, sorted) under the given paths."""
    if not paths:
        raise UserError("no input given: pass --input with text files, directories, .jsonl or .parquet files")
    files: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise UserError(f"input not found: {path}")
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in DATA_SUFFIXES)
            if not found:
                raise UserError(f"no text files ({', '.join(DATA_SUFFIXES)}) in directory {path}")
            files.extend(found)
        else:
            files.append(path)
    return files


def read_documents(files: list[Path], text_field: str = "text", doc_split: str = "file") -> Iterator[str]:
    """Non-empty documents of the input files, in order."""
    for path in files:
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            yield from _jsonl_documents(path, text_field)
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            try:
                table = pq.read_table(path, columns=[text_field])
            except (KeyError, ValueError) as exc:
                raise UserError(f"{path}: cannot read column '{text_field}' ({exc})".splitlines()[0]) from None
            for number, text in enumerate(table.column(text_field).to_pylist()):
                if text is not None and not isinstance(text, str):
                    raise UserError(f"{path} row {number}: column '{text_field}' is {type(text).__name__}, not text")
                if text and text.strip():
                    yield text
        else:
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise UserError(f"{path} is not UTF-8 text") from None
            pieces = text.split("\n\n") if doc_split == "paragraph" else [text]
            yield from (piece for piece in pieces if piece.strip())


def _jsonl_documents(path: Path, text_field: str) -> Iterator[str]:
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise UserError(f"{path}:{number} is not UTF-8 text") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"{path}:{number} is not valid JSON") from None
            if not isinstance(record, dict) or text_field not in record:
                raise UserError(f"{path}:{number} has no field '{text_field}' (set --text-field)")
            text = record[text_field]
            if not isinstance(text, str):
                raise UserError(f"{path}:{number}: field '{text_field}' is {type(text).__name__}, not text")
            if text.strip():
                yield text


def _batches(items: Iterator[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _sha256(path: Path) -> str:
    return sha256_file(path)


# ----------------------------------------------------------------------------------------------- prepare
def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def prepare(config: PrepareConfig, progress: bool | None = None) -> Path:
    """Tokenise the inputs into ``config.out``; return it. Does nothing if the same dataset is already there."""
    progress = config.progress if progress is None else progress
    if not config.out:
        raise UserError("no output directory given (--out)")
    out = Path(config.out).expanduser()
    files = input_files(config.input)
    extra = input_files(config.train_extra) if config.train_extra else []
    for path in files + extra:
        if path.stat().st_size == 0:
            raise UserError(f"input file is empty: {path}")
    if set(files) & set(extra):
        raise UserError(f"{sorted(set(files) & set(extra))[0]} is both --input and --train-extra: its documents "
                        "would be in the validation split and trained on")
    named = [] if config.train_tokenizer or config.tokenizer in BUILTIN_TOKENIZERS else [config.tokenizer]
    refuse_over_inputs(out, [("--input", path) for path in config.input] +
                       [("--train-extra", path) for path in config.train_extra] +
                       [("--tokenizer", path) for path in named])
    remove_stale_staging(out.parent, [out.name])  # what a killed prepare left: never mistaken for a dataset
    replacing = holds_own_kind(out, DATASET, "data prepare")
    tokenizer = None
    if not config.train_tokenizer:
        tokenizer = load_tokenizer(config.tokenizer)
        if tokenizer.eos_token_id is None:
            raise UserError(f"tokenizer {config.tokenizer} has no EOS token to separate documents")
        # where a built-in or hub name loaded from (its folder in a cache)
        refuse_over_inputs(out, [("--tokenizer", tokenizer.name_or_path)])
    inputs = [{"path": str(p), "bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files]
    recipe = {"inputs": [i["sha256"] for i in inputs],
              "tokenizer": f"bpe-{config.train_tokenizer}" if tokenizer is None else tokenizer_identity(tokenizer)["sha256"],
              "text_field": config.text_field, "doc_split": config.doc_split,
              "val_fraction": config.val_fraction, "seed": config.seed}
    if extra:  # (absent otherwise: datasets prepared before --train-extra keep their fingerprint)
        recipe["train_extra"] = [_sha256(p) for p in extra]
        inputs += [{"path": str(p), "bytes": p.stat().st_size, "sha256": _sha256(p), "train_only": True}
                   for p in extra]
    fingerprint = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()

    if replacing:
        if _fingerprint_of(out) == fingerprint:
            print(f"{out} already holds this dataset; nothing to do", flush=True)
            return out
        if not config.overwrite:
            raise UserError(f"{out} already holds a different dataset; pass --overwrite to replace it")

    # Pass 1 counts documents so that the split is an exact, seeded choice of documents (and their characters,
    # to tell a full disk how much the token files need).
    n_docs = n_chars = 0
    for doc in read_documents(files, config.text_field, config.doc_split):
        n_docs, n_chars = n_docs + 1, n_chars + len(doc)
    if n_docs == 0:
        raise UserError("the inputs hold no text")
    if n_docs < 2:
        raise UserError("need at least 2 documents for a train/val split; give more files or --doc-split paragraph")
    n_val = min(n_docs - 1, max(1, round(n_docs * config.val_fraction)))
    is_val = np.zeros(n_docs, dtype=bool)
    is_val[np.random.default_rng(config.seed).permutation(n_docs)[:n_val]] = True
    n_extra = 0
    for doc in read_documents(extra, config.text_field, config.doc_split):
        n_extra, n_chars = n_extra + 1, n_chars + len(doc)
    if extra and n_extra == 0:
        raise UserError("the --train-extra inputs hold no text")
    is_val = np.concatenate([is_val, np.zeros(n_extra, dtype=bool)])  # the extra text: train only, after the rest

    def documents():
        yield from read_documents(files, config.text_field, config.doc_split)
        yield from read_documents(extra, config.text_field, config.doc_split)

    staging = staging_name(out)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    fallback = last_good(out, replacing, "dataset")
    started = time.perf_counter()
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)  # SIGTERM unwinds like Ctrl-C: staging is cleaned
    except ValueError:  # not the main thread: signals stay as they are
        previous = None
    try:
        if tokenizer is None:  # trained on the train documents only: validation text never shapes the vocabulary
            train_docs = (doc for doc, val in zip(documents(), is_val) if not val)
            tokenizer = train_bpe(train_docs, config.train_tokenizer, staging / "tokenizer")
        identity = tokenizer_identity(tokenizer)
        if config.train_tokenizer:
            identity["name_or_path"] = f"tokenizer/ (byte-level BPE, {config.train_tokenizer} tokens, trained on the " \
                                       "train split)"
        dtype = token_dtype(len(tokenizer))
        eos = np.array([tokenizer.eos_token_id], dtype=dtype)
        counts = _write_splits(staging, documents(), is_val, tokenizer.backend_tokenizer, eos, dtype,
                               config.batch_size, progress, extra_from=n_docs, out=out, chars=n_chars,
                               fallback=fallback)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # never leave a half-written dataset behind
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    seconds = time.perf_counter() - started
    meta = {
        "format": FORMAT,
        "fingerprint": fingerprint,
        "tokenizer": identity,
        "vocab_size": len(tokenizer),
        "dtype": dtype.name,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,  # what starts each window under --bos-windows (None: the EOS)
        "train_tokens": counts["train"],
        "val_tokens": counts["val"],
        "train_documents": n_docs - n_val + n_extra,
        "val_documents": n_val,
        **({"train_extra_documents": n_extra, "train_extra_tokens": counts["extra"]} if extra else {}),
        "config": to_dict(config),
        "inputs": inputs,
        "tokenize_seconds": round(seconds, 3),
    }
    if config.train_tokenizer:
        meta["tokenizer_dir"] = "tokenizer"
    text = json.dumps(meta, indent=2)
    try:
        (staging / "meta.json").write_text(text)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        needed = (counts["train"] + counts["val"]) * dtype.itemsize + len(text)
        with writing_staged("the dataset's meta.json", out / "meta.json", needed, fallback):
            raise
    replace_dir(staging, out)
    total = counts["train"] + counts["val"]
    added = f" (of which {counts['extra']:,} from {n_extra} --train-extra documents)" if extra else ""
    print(f"prepared {out}: {counts['train']:,} train{added} + {counts['val']:,} val tokens from "
          f"{n_docs + n_extra} documents ({total / max(seconds, 1e-9):,.0f} tokens/s)", flush=True)
    return out


def _terminate(signum, frame):
    raise Interrupted(signum, "interrupted; nothing was written (run the same command again)")


def _fingerprint_of(out: Path) -> str | None:
    """The fingerprint of the dataset in ``out``; None when there is none or its meta.json is damaged (then only
    --overwrite replaces it)."""
    try:
        meta = json.loads((out / "meta.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return meta.get("fingerprint") if isinstance(meta, dict) else None


def _write_splits(staging: Path, docs: Iterator[str], is_val: np.ndarray, backend, eos: np.ndarray,
                  dtype: np.dtype, batch_size: int, progress: bool, extra_from: int | None = None,
                  out: Path | None = None, chars: int = 0, fallback: str = "") -> dict[str, int]:
    """Tokenise documents in batches (``encode_batch`` runs in Rust threads on all cores) and append each,
    followed by EOS, to its split's file; ``extra``: the tokens of the documents from index ``extra_from`` on.
    A failed write (a full disk) is one line naming the file in ``out`` and the space the token files need,
    extrapolated from the bytes written per character so far (``chars``: the characters of all documents)."""
    counts = {"train": 0, "val": 0, "extra": 0}
    # encode_batch_fast skips character offsets, which we do not need (tokenizers >= 0.21).
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    place = {"train": (out or staging) / "train.bin", "val": (out or staging) / "val.bin"}
    done_chars, split = 0, "train"
    bar = progress_bar(total=len(is_val), unit="doc", desc="tokenising", disable=not progress)
    try:
        with open(staging / "train.bin", "wb") as train_f, open(staging / "val.bin", "wb") as val_f:
            index = 0
            for batch in _batches(docs, batch_size):
                for doc, encoding in zip(batch, encode(batch, add_special_tokens=False)):
                    split, handle = ("val", val_f) if is_val[index] else ("train", train_f)
                    # file.write, not ndarray.tofile: on a full disk it raises errno 28, not "N requested"
                    handle.write(np.concatenate([np.asarray(encoding.ids, dtype=dtype), eos]).tobytes())
                    counts[split] += len(encoding.ids) + 1
                    if extra_from is not None and index >= extra_from:
                        counts["extra"] += len(encoding.ids) + 1
                    done_chars += len(doc)
                    index += 1
                bar.update(len(batch))
    except OSError:
        written = (counts["train"] + counts["val"]) * dtype.itemsize
        needed = int(written * chars / done_chars) if done_chars and chars else None
        shutil.rmtree(staging, ignore_errors=True)  # first, so that the free space said is what a rerun has
        with writing_staged("the dataset's token file", place[split], needed, fallback):
            raise
    finally:
        bar.close()
    return counts


def write_token_dataset(out: Path, train: np.ndarray, val: np.ndarray, vocab_size: int, eos: int, name: str,
                        bos: int | None = None) -> Path:
    """A prepared dataset from token ids made elsewhere (a synthetic task, say): the same files and meta.json as
    ``prepare`` writes, with ``name`` standing for the tokenizer (there is none to load)."""
    out = Path(out)
    holds_own_kind(out, DATASET, "write_token_dataset")  # it replaces a dataset, never anything else
    dtype = token_dtype(vocab_size)
    remove_stale_staging(out.parent, [out.name])
    staging = staging_name(out)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    np.asarray(train, dtype=dtype).tofile(staging / "train.bin")
    np.asarray(val, dtype=dtype).tofile(staging / "val.bin")
    identity = {"name_or_path": name, "class": "none", "vocab_size": vocab_size, "eos_token_id": eos,
                "sha256": hashlib.sha256(name.encode()).hexdigest()}
    meta = {"format": FORMAT, "fingerprint": hashlib.sha256(np.asarray(train).tobytes()).hexdigest(),
            "tokenizer": identity, "vocab_size": vocab_size, "dtype": dtype.name, "eos_token_id": eos,
            "bos_token_id": bos, "train_tokens": int(len(train)), "val_tokens": int(len(val))}
    (staging / "meta.json").write_text(json.dumps(meta, indent=2))
    replace_dir(staging, out)
    return out


# ----------------------------------------------------------------------------------------------- reading
class TokenData:
    """A prepared dataset opened as memmaps; ``split("train")`` is a flat array of token ids. Opening it checks
    meta.json against the token files, so a damaged dataset fails here with a message, not mid-training."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise UserError(f"{self.path} is not a prepared dataset (no meta.json); run 'inheritune data prepare'")
        try:
            self.meta = json.loads(meta_path.read_text())
            if self.meta.get("format") != FORMAT:
                raise UserError(f"{self.path} has dataset format {self.meta.get('format')!r}, expected {FORMAT!r}")
            self.dtype = np.dtype(self.meta["dtype"])
            self.vocab_size = int(self.meta["vocab_size"])
            self.tokenizer = dict(self.meta["tokenizer"])
            sizes = {name: int(self.meta[f"{name}_tokens"]) for name in ("train", "val")}
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UserError(f"{meta_path} is damaged ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''});"
                            " prepare the dataset again") from None
        if self.dtype not in (np.dtype(np.uint16), np.dtype(np.uint32)):
            raise UserError(f"{meta_path} names token dtype {self.dtype}; prepared datasets are uint16 or uint32")
        if self.vocab_size < 1 or self.vocab_size > np.iinfo(self.dtype).max + 1 or \
                self.tokenizer.get("vocab_size", self.vocab_size) != self.vocab_size:
            raise UserError(f"{meta_path} gives vocab_size {self.vocab_size}, which does not fit its tokenizer "
                            f"({self.tokenizer.get('vocab_size')}) or dtype {self.dtype}")
        for name, count in sizes.items():
            file = self.path / f"{name}.bin"
            expected = count * self.dtype.itemsize
            if not file.is_file():
                raise UserError(f"{file} is missing; prepare the dataset again")
            if file.stat().st_size != expected:
                raise UserError(f"{file} has {file.stat().st_size:,} bytes, meta.json says {count:,} tokens "
                                f"({expected:,} bytes): the dataset is damaged; prepare it again")

    def bos_id(self) -> int:
        """The token that starts every window under --bos-windows: the tokenizer's BOS, else its document
        separator (EOS), which prepared data puts between documents anyway."""
        for key in ("bos_token_id", "eos_token_id"):
            value = self.meta.get(key, self.tokenizer.get(key))
            if isinstance(value, int) and 0 <= value < self.vocab_size:
                return value
        raise UserError(f"{self.path} names no BOS or EOS token for --bos-windows; prepare it again")

    def tokenizer_path(self) -> str:
        """Where the dataset's tokenizer loads from: the copy inside the dataset when it has one (a tokenizer
        trained on it), else the name or path that prepared it."""
        bundled = self.meta.get("tokenizer_dir")
        return str(self.path / bundled) if bundled else str(self.tokenizer.get("name_or_path"))

    def split(self, name: str) -> np.ndarray:
        if name not in ("train", "val"):
            raise ValueError(name)
        path = self.path / f"{name}.bin"
        if self.meta[f"{name}_tokens"] == 0:
            raise UserError(f"the {name} split of {self.path} is empty")
        return np.memmap(path, dtype=self.dtype, mode="r")
