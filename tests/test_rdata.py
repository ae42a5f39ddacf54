"""The R lazy-load reader, on a database written by a small XDR serialiser in this test."""

import gzip
import struct
import zlib

from inheritune.assets.rdata import lazyload_variables, read_lazyload, unserialize


def _int(v):
    return struct.pack(">i", v)


def _charsxp(text):
    raw = text.encode()
    return _int(9 | (1 << 15)) + _int(len(raw)) + raw  # CHARSXP with a UTF-8 level bit


def _strsxp(values):
    return _int(16) + _int(len(values)) + b"".join(_charsxp(v) for v in values)


def _symbol(name):
    return _int(1) + _charsxp(name)


def _named_list(items):
    """VECSXP with a names attribute, as R writes a named list."""
    body = _int(19 | (1 << 9)) + _int(len(items)) + b"".join(value for _, value in items)
    attr = _int(2 | (1 << 10)) + _symbol("names") + _strsxp([k for k, _ in items]) + _int(254)
    return body + attr


def _intsxp(values):
    return _int(13) + _int(len(values)) + b"".join(_int(v) for v in values)


def _serialize(obj_bytes):
    return b"X\n" + _int(3) + _int(0x040201) + _int(0x030500) + _int(5) + b"UTF-8" + obj_bytes


def test_character_vector_roundtrip():
    assert unserialize(_serialize(_strsxp(["It is a truth", "", "universally acknowledged"]))) == \
        ["It is a truth", "", "universally acknowledged"]


def test_lazyload_database(tmp_path):
    novels = {"emma": ["EMMA", "", "CHAPTER I", "Emma Woodhouse"], "persuasion": ["Persuasion", "Chapter 1"]}
    blob, index = b"", []
    for name, lines in novels.items():
        payload = _serialize(_strsxp(lines))
        entry = struct.pack(">i", len(payload)) + zlib.compress(payload)
        index.append((name, _intsxp([len(blob), len(entry)])))
        blob += entry
    (tmp_path / "Rdata.rdb").write_bytes(blob)
    rdx = _serialize(_named_list([("variables", _named_list(index)), ("references", _named_list([]))]))
    (tmp_path / "Rdata.rdx").write_bytes(gzip.compress(rdx))
    assert read_lazyload(tmp_path / "Rdata.rdx") == novels
    assert lazyload_variables(gzip.compress(rdx), blob) == novels  # the corpus build reads them in memory
