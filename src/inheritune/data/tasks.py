"""Offline zero-shot tasks built from a prepared dataset's validation split, so that zero-shot evaluation never
depends on a download a registry can withdraw. They are *not* the standard benchmarks: they measure whether a
model uses the context and the word order of held-out English, on text of the same kind it may have been trained
on (never its training split: an item whose sentence also occurs there is dropped), in the style of two standard
ones:

- ``cloze`` (LAMBADA-style): a passage of held-out text (at least ``CONTEXT_WORDS`` words) cut before the last
  word of a sentence; the model chooses that word among four. The three distractors are content words that cannot
  be told from the answer without reading: the same capitalisation, whether they occur earlier in the passage
  (and how often), length and corpus frequency are matched by taking the answer's neighbours in that order, with
  the answer's rank among the four drawn uniformly, so that no ordering by those features finds it more often than
  chance. Chance: 25%; ``guesses`` measures what context-free guessing scores on the same items.
- ``word-order`` (BLiMP-style minimal pairs): a held-out sentence against the same sentence with two adjacent
  lower-case words inside it swapped (same words, same tokens, other order); the model must give the original
  the higher likelihood. Chance: 50%.

Items are a pure function of the dataset's text, its tokenizer and the seed; they are written once per dataset
into the asset cache as lm-eval task files (JSONL + YAML) and scored through lm-eval like any task.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np

from inheritune.assets.registry import cache_dir
from inheritune.data.dataset import TokenData
from inheritune.data.tokenizer import load_tokenizer
from inheritune.utils.errors import UserError
from inheritune.utils.taskfiles import write_task

OFFLINE_TASKS = {"cloze": 0.25, "word-order": 0.5}  # name -> chance accuracy
TASK_PREFIX = "inheritune_"
VERSION = 2  # bump when the way items are built changes: the cache keys on it
CONTEXT_WORDS = 50
MAX_ITEMS = 500
ABBREVIATIONS = ("Mr", "Mrs", "Ms", "Dr", "St", "Mt", "Jr", "Sr", "Col", "Gen", "Capt", "Rev", "Prof", "No", "Vol")
SENTENCE_END = re.compile("".join(rf"(?<!\b{a}\.)" for a in ABBREVIATIONS)
                          + r"(?<=[.!?])([\"')\]]*)\s+(?=[\"'(\[]?[A-Z])")
WORD = re.compile(r"[A-Za-z]+")
PUNCTUATION = ".,;:!?\"'()[]{}-_*"
# A choice that is a function word is told apart by grammar alone ("the" cannot end a sentence): neither the answer
# nor a distractor is one.
FUNCTION_WORDS = frozenset("""
a about above across after again against all almost along also although always am among an and another any are
around as at be because been before being below beneath beside besides between beyond both but by can cannot could
did do does doing done down during each either else enough even ever every few for from further had has have having
he hence her here hers herself him himself his how however i if in indeed inside into is it its itself just least
less like many may me might mine more most much must my myself near neither never no nobody none nor not nothing
now of off often on once one only onto or other others otherwise ought our ours ourselves out outside over own per
perhaps quite rather same shall she should since so some somebody something sometimes still such than that the thee
their theirs them themselves then there therefore these they thine this those thou though through throughout thus
thy till to too toward towards under unless until unto up upon us very via was we well were what whatever when
whenever where whereas wherever whether which while who whoever whom whose why will with within without would yes
yet you your yours yourself yourselves
""".split())


def lm_eval_name(task: str) -> str:
    return TASK_PREFIX + task.replace("-", "_")


def split_documents(data: TokenData, split: str = "val", batch: int = 256):
    """A split decoded with the dataset's own tokenizer, one text per document (split at EOS), with whitespace
    collapsed; yielded a batch of documents at a time, so a large train split is never decoded whole."""
    tokens = np.asarray(data.split(split))
    try:
        tokenizer = load_tokenizer(data.tokenizer_path())
    except UserError as exc:
        raise UserError(f"the offline tasks decode {data.path}'s {split} split with its tokenizer, which does not "
                        f"load: {exc}") from None
    eos = data.meta.get("eos_token_id", data.tokenizer.get("eos_token_id"))
    cuts = np.flatnonzero(tokens == eos) if isinstance(eos, int) else np.array([], dtype=np.int64)
    bounds = np.concatenate([[0], cuts + 1, [len(tokens)]])
    for first in range(0, len(bounds) - 1, batch):
        pieces = [tokens[a:b].astype(np.int64) for a, b in zip(bounds[first:first + batch],
                                                                 bounds[first + 1:first + batch + 1])]
        texts = tokenizer.batch_decode([p[p != eos].tolist() for p in pieces], skip_special_tokens=True)
        yield [" ".join(text.split()) for text in texts if text.strip()]


def held_out_documents(data: TokenData) -> list[str]:
    return [document for documents in split_documents(data, "val") for document in documents]


def sentences(document: str) -> list[str]:
    """The sentences of a document, each with the closing quotes or brackets that follow its full stop."""
    parts = SENTENCE_END.split(document)  # [sentence, its closing marks, sentence, ...]
    return [(s + c).strip() for s, c in zip(parts[::2], parts[1::2] + [""]) if (s + c).strip()]


def sentence_key(sentence: str) -> int:
    """The same sentence up to case, punctuation and spacing gives the same key (a hash: the train split's
    sentences are many)."""
    return hash(" ".join(WORD.findall(sentence.lower())))


def train_text(data: TokenData) -> tuple[set[int], Counter]:
    """The keys of the train split's sentences (an item whose sentence is there is dropped) and its word counts
    (with the held-out text's, the corpus frequency that distractors match)."""
    seen, counts = set(), Counter()
    for documents in split_documents(data, "train"):
        for document in documents:
            seen.update(sentence_key(s) for s in sentences(document))
            counts.update(w.lower() for w in words(document))
    return seen, counts


def words(text: str) -> list[str]:
    """The plain words of a text (letters only, punctuation around them stripped; "don't", "twenty-one" are not)."""
    return [w for w in (token.strip(PUNCTUATION) for token in text.split()) if WORD.fullmatch(w)]


def is_content(word: str) -> bool:
    return WORD.fullmatch(word) is not None and len(word) >= 3 and word.lower() not in FUNCTION_WORDS


def case_of(word: str) -> str:
    return "lower" if word.islower() else "title" if word.istitle() else "upper" if word.isupper() else "mixed"


def cloze_items(documents: list[str], seed: int = 0, limit: int = MAX_ITEMS, seen=frozenset(),
                train_counts: Counter | None = None) -> list[dict]:
    """LAMBADA-style items: {query: passage up to the target word, choices: [" word", ...], gold}. A sentence whose
    ``sentence_key`` is in ``seen`` (the train split's) gives no item; nor does an answer with no matched
    distractors. ``train_counts``: the train split's word counts, so that the frequency matched is the corpus's."""
    split = SplitWords(documents, train_counts)
    vocabulary = split.vocabulary(seed)
    candidates = []
    for doc_index, document in enumerate(documents):
        words_before, passage = 0, []
        for sentence_index, sentence in enumerate(sentences(document)):
            tokens = sentence.split()
            passage.append(sentence)
            words_before += len(tokens)
            target = tokens[-1].rstrip(".!?\"')];:,") if tokens else ""
            if words_before - len(tokens) < CONTEXT_WORDS or len(tokens) < 4 or not split.usual(target) \
                    or sentence_key(sentence) in seen:
                continue
            context = " ".join(passage)
            query = context[:context.rindex(target)].rstrip()
            rng = np.random.default_rng([seed, doc_index, sentence_index])
            choices = _choices(target, query, split, vocabulary, rng)
            if choices is None:
                continue
            order = rng.permutation(4)
            candidates.append({"query": query, "choices": [" " + choices[i] for i in order],
                               "gold": int(np.flatnonzero(order == 0)[0])})
            words_before, passage = 0, []  # the next item starts a fresh passage: no two items share text
    return _spread(candidates, limit)


class SplitWords:
    """How often each word of the held-out text occurs there (any capitalisation), in each capitalisation, at a
    sentence's end, and in the whole corpus (with the train split's ``train_counts``)."""

    def __init__(self, documents: list[str], train_counts: Counter | None = None):
        self.surface, self.ends, self.counts = Counter(), Counter(), Counter()
        self.train = train_counts or Counter()
        for document in documents:
            for token in document.split():
                word = token.strip(PUNCTUATION)
                if WORD.fullmatch(word):
                    self.surface[word] += 1
                    self.counts[word.lower()] += 1
                    self.ends[word.lower()] += token.rstrip("\"')]").endswith((".", "!", "?"))

    def corpus(self, word: str) -> int:
        return self.counts[word.lower()] + self.train[word.lower()]

    def key(self, word: str) -> tuple[int, ...]:
        """What a distractor matches: its block (length, bands of powers of 2 of its corpus count and of its times
        at a sentence's end), then inside the block those times and that count. (Sorting by one feature after
        another alone left the answer at a block's edge, found by the later features, measured.)"""
        ends = self.ends[word.lower()]
        return len(word), self.corpus(word).bit_length(), ends.bit_length(), ends, self.corpus(word)

    def usual(self, word: str) -> bool:
        """A content word in its usual capitalisation (a name capitalised, "Perhaps" at a sentence's start not)."""
        return is_content(word) and 2 * self.surface[word] > self.counts[word.lower()]

    def distractor(self, word: str) -> bool:
        """A usual content word that ends a sentence somewhere in the split, as every answer does."""
        return self.usual(word) and self.ends[word.lower()] > 0

    def vocabulary(self, seed: int) -> dict[str, tuple[list[str], dict[str, int]]]:
        """Per capitalisation, the possible distractors ordered by (length, count), ties in a seeded random order,
        and each one's place in that order."""
        forms = sorted(w for w in self.surface if self.distractor(w))
        ties = dict(zip(forms, np.random.default_rng(seed).random(len(forms))))
        vocabulary = {}
        for case in ("lower", "title", "upper", "mixed"):
            ordered = sorted((w for w in forms if case_of(w) == case),
                             key=lambda w: (*self.key(w), ties[w]))
            vocabulary[case] = (ordered, {w: i for i, w in enumerate(ordered)})
        return vocabulary


def _choices(target: str, query: str, split: SplitWords, vocabulary: dict, rng) -> list[str] | None:
    """[answer, 3 distractors] of the answer's capitalisation and with its standing in the passage (absent, or
    present as often as possible), its nearest neighbours in the order of ``SplitWords.key``. The answer's rank
    among the four is uniform, so ordering the choices by any of those features finds it with probability 1/4; an
    answer with fewer than three such neighbours on either side is not matched (None)."""
    in_passage = Counter(w.lower() for w in words(query))
    case, name = case_of(target), target.lower()
    if in_passage[name]:  # the answer occurred earlier: so do its distractors, and about as often
        pool = sorted({w for w in words(query) if split.distractor(w) and case_of(w) == case and w.lower() != name})
        ties = dict(zip(pool + [target], rng.random(len(pool) + 1)))
        ordered = sorted(pool + [target], key=lambda w: (in_passage[w.lower()], *split.key(w), ties[w]))
        at = ordered.index(target)
        below, above = ordered[:at][::-1][:3], ordered[at + 1:at + 4]
    else:  # it did not: nor do they
        ordered, index = vocabulary[case]
        at = index.get(target)
        if at is None:
            return None
        block = split.key(target)[:3]  # neighbours across a block's edge would differ in a feature the answer lacks
        below = _first_three(ordered, range(at - 1, -1, -1), in_passage, lambda w: split.key(w)[:3] == block)
        above = _first_three(ordered, range(at + 1, len(ordered)), in_passage, lambda w: split.key(w)[:3] == block)
    if len(below) < 3 or len(above) < 3:
        return None
    rank = int(rng.integers(4))  # how many distractors lie below the answer
    return [target] + below[:rank] + above[:3 - rank]


def _first_three(ordered: list[str], places, in_passage: Counter, same_block) -> list[str]:
    found = []
    for place in places:
        word = ordered[place]
        if not same_block(word):
            break
        if not in_passage[word.lower()]:
            found.append(word)
            if len(found) == 3:
                break
    return found


def word_order_items(documents: list[str], seed: int = 0, limit: int = MAX_ITEMS, seen=frozenset()) -> list[dict]:
    """BLiMP-style pairs: {query: "", choices: [sentence, swapped] in seeded order, gold}. A sentence whose
    ``sentence_key`` is in ``seen`` (the train split's) gives no pair."""
    candidates = []
    for doc_index, document in enumerate(documents):
        for sentence in sentences(document):
            tokens = sentence.split()
            if not 8 <= len(tokens) <= 30 or sentence_key(sentence) in seen:
                continue
            spots = [i for i in range(1, len(tokens) - 2) if tokens[i] != tokens[i + 1]
                     and all(WORD.fullmatch(w) and w.islower() for w in tokens[i:i + 2])]
            if spots:
                candidates.append((doc_index, tokens, spots))
    items = []
    for doc_index, tokens, spots in _spread(candidates, limit):
        rng = np.random.default_rng([seed, doc_index, len(items)])
        i = spots[int(rng.integers(len(spots)))]
        swapped = tokens[:i] + [tokens[i + 1], tokens[i]] + tokens[i + 2:]
        pair = [" ".join(tokens), " ".join(swapped)]
        gold = int(rng.integers(2))
        items.append({"query": "", "choices": pair if gold == 0 else pair[::-1], "gold": gold})
    return items


def _spread(candidates: list, limit: int) -> list:
    """At most ``limit`` candidates spread evenly over the split (not just its first documents)."""
    if len(candidates) <= limit:
        return candidates
    return [candidates[i] for i in np.linspace(0, len(candidates) - 1, limit).round().astype(int)]


# ------------------------------------------------------------------------------------ guessing without reading
def guesses(task: str, items: list[dict], documents: list[str],
            train_counts: Counter | None = None) -> dict[str, list[float]]:
    """What context-free heuristics score on each item: 1 where one picks the answer, 1/k where the answer is among
    k choices it cannot tell apart, else 0. Each looks at the choices alone (their place, length, how often each
    occurs in the passage, in the held-out text, in the corpus, at a sentence's end), never at the passage as
    text, so a task that measures reading keeps them all near chance."""
    features = {"first choice": lambda item, choices: [-i for i in range(len(choices))],
                "last choice": lambda item, choices: list(range(len(choices)))}
    if task == "cloze":
        split = SplitWords(documents, train_counts)

        def in_passage(item, choices):
            passage = Counter(w.lower() for w in words(item["query"]))
            return [passage[c.lower()] for c in choices]

        for name, feature in {"often in the passage": in_passage,
                              "common in the corpus": lambda item, choices: [split.corpus(c) for c in choices],
                              "common in the held-out text": lambda item, choices: [split.counts[c.lower()]
                                                                                    for c in choices],
                              "often at a sentence's end": lambda item, choices: [split.ends[c.lower()]
                                                                                  for c in choices],
                              "long": lambda item, choices: [len(c) for c in choices]}.items():
            features[f"most {name}"] = feature
            features[f"least {name}"] = lambda item, choices, feature=feature: [-v for v in feature(item, choices)]
    credit = {name: [] for name in features}
    for item in items:
        choices = [c.strip() for c in item["choices"]]
        for name, feature in features.items():
            values = feature(item, choices)
            picked = [i for i, v in enumerate(values) if v == max(values)]
            credit[name].append(round(1 / len(picked), 4) if item["gold"] in picked else 0.0)
    return credit


def context_free_baseline(folder: Path, task: str, n: int | None = None) -> dict | None:
    """The best context-free heuristic's accuracy on the first ``n`` items of a built task (lm-eval's limit takes
    the first), or None where the task files hold no guesses."""
    try:
        credit = json.loads((Path(folder) / f"{lm_eval_name(task)}.guesses.json").read_text())["guesses"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    scores = {name: float(np.mean(values[:n] if n else values)) for name, values in credit.items() if values}
    if not scores:
        return None
    best = max(scores, key=scores.get)
    return {"acc": scores[best], "heuristic": best, "n": len(credit[best][:n] if n else credit[best])}


def offline_task_dir(data: TokenData, tasks: list[str], cache: str | Path | None = None, seed: int = 0) -> Path:
    """The lm-eval task files of the named offline tasks for ``data`` (built once, then read from the cache)."""
    fingerprint = str(data.meta.get("fingerprint", ""))[:16] or "unknown"
    folder = cache_dir(cache) / "tasks" / f"{fingerprint}-v{VERSION}-seed{seed}"
    missing = [t for t in tasks if not (folder / f"{lm_eval_name(t)}.yaml").is_file()]
    if missing:
        documents, (seen, train_counts) = held_out_documents(data), train_text(data)
        for task in missing:
            items = (cloze_items(documents, seed, seen=seen, train_counts=train_counts) if task == "cloze" else
                     word_order_items(documents, seed, seen=seen))
            if len(items) < 20:
                raise UserError(f"the validation split of {data.path} gives only {len(items)} {task} items (20 at "
                                "least make an interval; sentences that also occur in the train split give none); "
                                "prepare the dataset with more validation text")
            write_task(lm_eval_name(task), items, folder,
                       {"guesses.json": {"chance": OFFLINE_TASKS[task],
                                        "guesses": guesses(task, items, documents, train_counts)}})
    return folder
