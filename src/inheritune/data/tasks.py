"""Offline zero-shot tasks built from a prepared dataset's validation split, so that zero-shot evaluation never
depends on a download a registry can withdraw. They are *not* the standard benchmarks: they measure whether a
model uses the context and the word order of held-out English, on text of the same kind it may have been trained
on (never its training split), in the style of two standard ones:

- ``cloze`` (LAMBADA-style): a passage of held-out text (at least ``CONTEXT_WORDS`` words) cut before the last
  word of a sentence; the model chooses that word among four, the other three drawn from the same passage (same
  capitalisation, seeded), so word frequency alone does not tell them apart. Chance: 25%.
- ``word-order`` (BLiMP-style minimal pairs): a held-out sentence against the same sentence with two adjacent
  lower-case words inside it swapped (same words, same tokens, other order); the model must give the original
  the higher likelihood. Chance: 50%.

Items are a pure function of the validation tokens, the dataset's tokenizer and the seed; they are written once
per dataset into the asset cache as lm-eval task files (JSONL + YAML) and scored through lm-eval like any task.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from inheritune.assets.registry import cache_dir
from inheritune.data.dataset import TokenData
from inheritune.data.tokenizer import load_tokenizer
from inheritune.utils.errors import UserError
from inheritune.utils.taskfiles import write_task

OFFLINE_TASKS = {"cloze": 0.25, "word-order": 0.5}  # name -> chance accuracy
TASK_PREFIX = "inheritune_"
VERSION = 1  # bump when the way items are built changes: the cache keys on it
CONTEXT_WORDS = 50
MAX_ITEMS = 500
ABBREVIATIONS = ("Mr", "Mrs", "Ms", "Dr", "St", "Mt", "Jr", "Sr", "Col", "Gen", "Capt", "Rev", "Prof", "No", "Vol")
SENTENCE_END = re.compile("".join(rf"(?<!\b{a}\.)" for a in ABBREVIATIONS)
                          + r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z])")
WORD = re.compile(r"[A-Za-z]+")


def lm_eval_name(task: str) -> str:
    return TASK_PREFIX + task.replace("-", "_")


def held_out_documents(data: TokenData) -> list[str]:
    """The validation split decoded with the dataset's own tokenizer, one text per document (split at EOS), with
    whitespace collapsed."""
    tokens = np.asarray(data.split("val"), dtype=np.int64)
    try:
        tokenizer = load_tokenizer(data.tokenizer_path())
    except UserError as exc:
        raise UserError(f"the offline tasks decode {data.path}'s validation split with its tokenizer, which does not "
                        f"load: {exc}") from None
    eos = data.meta.get("eos_token_id", data.tokenizer.get("eos_token_id"))
    cuts = np.flatnonzero(tokens == eos) if isinstance(eos, int) else np.array([], dtype=np.int64)
    pieces = np.split(tokens, cuts)
    texts = tokenizer.batch_decode([p[p != eos].tolist() for p in pieces], skip_special_tokens=True)
    return [" ".join(text.split()) for text in texts if text.strip()]


def sentences(document: str) -> list[str]:
    return [s.strip() for s in SENTENCE_END.split(document) if s.strip()]


def _is_plain(word: str) -> bool:
    return WORD.fullmatch(word) is not None


def cloze_items(documents: list[str], seed: int = 0, limit: int = MAX_ITEMS) -> list[dict]:
    """LAMBADA-style items: {query: passage up to the target word, choices: [" word", ...], gold}."""
    candidates = []
    for doc_index, document in enumerate(documents):
        words_before, passage = 0, []
        for sentence in sentences(document):
            words = sentence.split()
            passage.append(sentence)
            words_before += len(words)
            target = words[-1].rstrip(".!?\"')];:,") if words else ""
            if words_before - len(words) < CONTEXT_WORDS or len(words) < 4 or not _is_plain(target) \
                    or len(target) < 3:
                continue
            context = " ".join(passage)
            cut = context.rindex(target)
            candidates.append((doc_index, context[:cut].rstrip(), target, context[:cut]))
            words_before, passage = 0, []  # the next item starts a fresh passage: no two items share text
    items = []
    for doc_index, query, target, context in _spread(candidates, limit):
        rng = np.random.default_rng([seed, doc_index, len(items)])
        same_case = str.islower if target.islower() else str.istitle if target.istitle() else None
        pool = sorted({w for w in WORD.findall(context) if len(w) >= 3 and w.lower() != target.lower()
                       and (same_case is None or same_case(w))})
        if len(pool) < 3:
            continue
        choices = [target] + [pool[i] for i in rng.choice(len(pool), size=3, replace=False)]
        order = rng.permutation(4)
        items.append({"query": query, "choices": [" " + choices[i] for i in order],
                      "gold": int(np.flatnonzero(order == 0)[0])})
    return items


def word_order_items(documents: list[str], seed: int = 0, limit: int = MAX_ITEMS) -> list[dict]:
    """BLiMP-style pairs: {query: "", choices: [sentence, swapped] in seeded order, gold}."""
    candidates = []
    for doc_index, document in enumerate(documents):
        for sentence in sentences(document):
            words = sentence.split()
            if not 8 <= len(words) <= 30:
                continue
            spots = [i for i in range(1, len(words) - 2) if words[i] != words[i + 1]
                     and all(_is_plain(w) and w.islower() for w in words[i:i + 2])]
            if spots:
                candidates.append((doc_index, words, spots))
    items = []
    for doc_index, words, spots in _spread(candidates, limit):
        rng = np.random.default_rng([seed, doc_index, len(items)])
        i = spots[int(rng.integers(len(spots)))]
        swapped = words[:i] + [words[i + 1], words[i]] + words[i + 2:]
        pair = [" ".join(words), " ".join(swapped)]
        gold = int(rng.integers(2))
        items.append({"query": "", "choices": pair if gold == 0 else pair[::-1], "gold": gold})
    return items


def _spread(candidates: list, limit: int) -> list:
    """At most ``limit`` candidates spread evenly over the split (not just its first documents)."""
    if len(candidates) <= limit:
        return candidates
    return [candidates[i] for i in np.linspace(0, len(candidates) - 1, limit).round().astype(int)]


BUILDERS = {"cloze": cloze_items, "word-order": word_order_items}


def offline_task_dir(data: TokenData, tasks: list[str], cache: str | Path | None = None, seed: int = 0) -> Path:
    """The lm-eval task files of the named offline tasks for ``data`` (built once, then read from the cache)."""
    fingerprint = str(data.meta.get("fingerprint", ""))[:16] or "unknown"
    folder = cache_dir(cache) / "tasks" / f"{fingerprint}-v{VERSION}-seed{seed}"
    missing = [t for t in tasks if not (folder / f"{lm_eval_name(t)}.yaml").is_file()]
    if missing:
        documents = held_out_documents(data)
        for task in missing:
            items = BUILDERS[task](documents, seed)
            if len(items) < 20:
                raise UserError(f"the validation split of {data.path} gives only {len(items)} {task} items (20 at "
                                "least make an interval); prepare the dataset with more validation text")
            write_task(lm_eval_name(task), items, folder)
    return folder
