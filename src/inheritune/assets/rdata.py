"""Read character data out of an R package's lazy-load database (``.rdx``/``.rdb``) without R.

R packages ship their data sets as a lazy-load database: ``Rdata.rdx`` is a gzip'ed, R-serialised index
mapping each variable to (offset, length) in ``Rdata.rdb``, and each entry there is a 4-byte big-endian
uncompressed length followed by a compressed, R-serialised object. We decode the XDR serialisation format
(version 2 and 3) far enough for what data packages hold: vectors, lists, pairlists, symbols and attributes.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import zlib
from pathlib import Path

from inheritune.utils.errors import UserError

_NILVALUE, _REF = 254, 255
# Special singleton SEXPs written as bare flags; none carries data.
_SINGLETONS = {242, 241, 253, 252, 251, 247, 250, 249, 248, 246}
_PAIRLIST_TYPES = {2, 6, 17, 18}  # LISTSXP, LANGSXP, DOTSXP, ATTRLANGSXP-like pairlists


class RDataError(UserError):
    """The bytes are not an R serialisation this reader understands."""


class _Reader:
    def __init__(self, data: bytes):
        if data[:2] != b"X\n":
            raise RDataError("not an XDR R serialisation (expected 'X\\n' header)")
        self.data, self.pos = data, 2
        self.refs: list = []
        version = self.int()
        self.int(), self.int()  # writer R version, minimal reader R version
        if version == 3:
            self.take(self.int())  # native encoding name
        elif version != 2:
            raise RDataError(f"unsupported R serialisation version {version}")

    def int(self) -> int:
        (value,) = struct.unpack_from(">i", self.data, self.pos)
        self.pos += 4
        return value

    def take(self, n: int) -> bytes:
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def item(self):
        flags = self.int()
        kind, has_attr, has_tag = flags & 0xFF, bool(flags & (1 << 9)), bool(flags & (1 << 10))
        if kind == _NILVALUE or kind in _SINGLETONS:
            return None
        if kind == _REF:
            index = flags >> 8 or self.int()
            return self.refs[index - 1]
        if kind == 1:  # SYMSXP: its name, remembered for later references
            name = self.item()
            self.refs.append(name)
            return name
        if kind in _PAIRLIST_TYPES:
            attrs = self.item() if has_attr else None
            tag = self.item() if has_tag else None
            head = self.item()
            rest = self.item()
            return [(tag, head)] + (rest if _is_pairlist(rest) else [])
        if kind == 9:  # CHARSXP
            length = self.int()
            return None if length == -1 else self.take(length).decode("utf-8", errors="replace")
        if kind in (10, 13):  # LGLSXP, INTSXP
            n = self.int()
            value = list(struct.unpack_from(f">{n}i", self.data, self.pos))
            self.pos += 4 * n
        elif kind == 14:  # REALSXP
            n = self.int()
            value = list(struct.unpack_from(f">{n}d", self.data, self.pos))
            self.pos += 8 * n
        elif kind in (16, 19, 20):  # STRSXP, VECSXP, EXPRSXP
            value = [self.item() for _ in range(self.int())]
        else:
            raise RDataError(f"unsupported R object type {kind}")
        if has_attr:
            attrs = dict(self.item() or [])
            if kind == 19 and attrs.get("names"):  # a named list reads best as a dict
                return dict(zip(attrs["names"], value))
        return value


def _is_pairlist(value) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], tuple)


def unserialize(data: bytes):
    """Decode one R-serialised object (XDR) into Python lists, strings and numbers."""
    return _Reader(data).item()


def read_lazyload(rdx: str | Path) -> dict[str, object]:
    """All variables of a lazy-load database, given the path of its ``.rdx`` file."""
    rdx = Path(rdx)
    return lazyload_variables(rdx.read_bytes(), rdx.with_suffix(".rdb").read_bytes(), str(rdx))


def lazyload_variables(rdx: bytes, rdb: bytes, what: str = "the .rdx index") -> dict[str, object]:
    """All variables of a lazy-load database from the bytes of its index (``.rdx``) and data (``.rdb``)."""
    index = unserialize(gzip.decompress(rdx))
    if not isinstance(index, dict) or not isinstance(index.get("variables"), dict):
        raise RDataError(f"{what} is not a lazy-load index (no named 'variables' list)")
    variables, blob = index["variables"], rdb
    out = {}
    for name, (offset, length) in variables.items():
        out[name] = unserialize(_decompress(blob[int(offset) : int(offset) + int(length)]))
    return out


def _decompress(entry: bytes) -> bytes:
    (size,) = struct.unpack(">i", entry[:4])
    body = entry[4:]
    # Type byte after the length marks bzip2 ('2'), xz ('Z') or stored ('0'); plain zlib has none.
    if body[:1] == b"Z":
        data = lzma.decompress(body[1:])
    elif body[:1] == b"2":
        data = bz2.decompress(body[1:])
    elif body[:1] == b"0":
        data = body[1:]
    else:
        data = zlib.decompress(body)
    if len(data) != size:
        raise RDataError(f"entry decompressed to {len(data)} bytes, expected {size}")
    return data
