"""The default English corpus: Jane Austen's six novels (Debian) and the Brown Corpus (npm), as plain prose.

Austen comes as R character vectors of wrapped lines; we rejoin paragraphs and cut one document per chapter.
Brown comes tagged ("The/at jury/nn said/vbd ./."); we strip the tags and undo the tokenisation so that the
text reads like ordinary edited English. Each document is one JSON line: {"text": ..., "source": ...}.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

_CHAPTER = re.compile(r"^\s*chapter\s+([0-9]+|[ivxlc]+)\.?\s*$", re.IGNORECASE)
_BROWN_FILE = re.compile(r"^c[a-r]\d\d$")

AUSTEN_TITLES = {
    "emma": "Emma",
    "mansfieldpark": "Mansfield Park",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
    "prideprejudice": "Pride and Prejudice",
    "sensesensibility": "Sense and Sensibility",
}


def _paragraphs(lines: list[str]) -> list[str]:
    paragraphs, current = [], []
    for line in lines:
        if line is None or not line.strip():
            if current:
                paragraphs.append(" ".join(current))
                current = []
        else:
            current.append(line.strip())
    if current:
        paragraphs.append(" ".join(current))
    return paragraphs


def austen_documents(novels: dict[str, list[str]]) -> Iterator[dict]:
    """One document per chapter; front matter before the first chapter is dropped."""
    for key in sorted(novels):
        title = AUSTEN_TITLES.get(key, key)
        chapter, body = None, []
        for paragraph in _paragraphs(novels[key]) + ["Chapter 0"]:  # sentinel flushes the last chapter
            match = _CHAPTER.match(paragraph)
            if match:
                if chapter is not None and body:
                    yield {"text": "\n\n".join([f"{title}, {chapter}"] + body), "source": f"austen/{key}/{chapter}"}
                chapter, body = f"Chapter {match.group(1).upper()}", []
            elif chapter is not None:
                body.append(paragraph)


_ATTACH_LEFT = {".", ",", ";", ":", "?", "!", ")", "]", "''", "'", "%", "n't"}
_ATTACH_RIGHT = {"(", "[", "``", "$"}


def detokenize(words: list[str]) -> str:
    """Join Brown-style tokens as edited text: punctuation against its word, `` '' as double quotes."""
    out: list[str] = []
    glue_next = False
    for word in words:
        text = {"``": '"', "''": '"'}.get(word, word)
        if out and not glue_next and word not in _ATTACH_LEFT:
            out.append(" ")
        out.append(text)
        glue_next = word in _ATTACH_RIGHT
    return "".join(out)


def brown_document(raw: str) -> str:
    """A tagged Brown file as paragraphs of plain sentences."""
    paragraphs, sentences = [], []
    for line in raw.splitlines():
        if not line.strip():
            continue
        if line.startswith("\t") and sentences:  # a tab opens a new paragraph
            paragraphs.append(" ".join(sentences))
            sentences = []
        words = [token.rsplit("/", 1)[0] for token in line.split()]
        sentences.append(detokenize(words))
    if sentences:
        paragraphs.append(" ".join(sentences))
    return "\n\n".join(paragraphs)


def brown_files(files: dict[str, bytes]) -> Iterator[dict]:
    """One document per Brown sample (``ca01`` ... ``cr09``), from file names and their bytes, in name order."""
    for name in sorted(files):
        if _BROWN_FILE.match(name):
            yield {"text": brown_document(files[name].decode("utf-8", errors="replace")), "source": f"brown/{name}"}
