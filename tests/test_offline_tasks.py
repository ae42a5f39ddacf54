"""The offline zero-shot tasks measure reading: no guess that ignores the passage's text beats chance, no item comes
from a sentence the model trained on, and their files are written whole under names unique to the process."""

import json
import math
import os
import re
import subprocess
from collections import Counter

import numpy as np
import pytest

from inheritune.utils.errors import UserError

STRIP = ".,;:!?\"'()[]{}-_*"


def corpus_documents() -> list[str]:
    from inheritune.assets.catalog import asset_path

    return [" ".join(json.loads(line)["text"].split()) for line in asset_path("corpus").read_text().splitlines()]


def plain_words(text: str) -> list[str]:
    """Written here again, not imported: the heuristics below must not share the code they check."""
    return [w for w in (t.strip(STRIP) for t in text.split()) if re.fullmatch("[A-Za-z]+", w)]


def wilson(p: float, n: int, z: float) -> tuple[float, float]:
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return center - half, center + half


def heuristic_scores(items: list[dict], counts: Counter) -> dict[str, float]:
    """Mean credit (1/k for a tie of k that holds the answer) of guesses that look at each choice alone."""
    passages = [Counter(w.lower() for w in plain_words(item["query"])) for item in items]
    features = {"passage": lambda i, c: passages[i][c.lower()], "corpus": lambda i, c: counts[c.lower()],
                "length": lambda i, c: len(c)}
    scores = {}
    for name, feature in features.items():
        for pick in (min, max):
            credit = 0.0
            for i, item in enumerate(items):
                values = [feature(i, c.strip()) for c in item["choices"]]
                tied = [i for i, v in enumerate(values) if v == pick(values)]
                credit += (item["gold"] in tied) / len(tied)
            scores[f"{pick.__name__} {name}"] = credit / len(items)
    for place in (0, 3):
        scores[f"position {place}"] = float(np.mean([item["gold"] == place for item in items]))
    return scores


def test_cloze_choices_cannot_be_told_apart_without_reading():
    """On the shipped corpus (1 document in 8 held out, the next one as train), every context-free guess stays
    inside the 99.9% binomial (Wilson) interval around chance: on 01426a4 "least often in the passage" scored
    81% and "shortest" 17% (the passage's own words as distractors, the answer usually new to it)."""
    from inheritune.data.tasks import FUNCTION_WORDS, cloze_items, guesses

    documents = corpus_documents()
    held_out, train = documents[::8][:40], documents[1::8][:40]
    train_counts = Counter(w.lower() for document in train for w in plain_words(document))
    items = cloze_items(held_out, seed=0, train_counts=train_counts)
    assert len(items) >= 300
    counts = train_counts + Counter(w.lower() for document in held_out for w in plain_words(document))
    n = len(items)
    for name, accuracy in heuristic_scores(items, counts).items():
        # chance lies inside the accuracy's 99.9% interval (a fixed seed: the items, so the outcome, never change)
        low, high = wilson(accuracy, n, 3.29)
        assert low <= 0.25 <= high, (name, accuracy)
    for item in items:
        choices = [c.strip() for c in item["choices"]]
        passage = {w.lower() for w in plain_words(item["query"])}
        assert not any(c.lower() in FUNCTION_WORDS for c in choices), choices
        assert len({c.lower() in passage for c in choices}) == 1, choices  # all four occur earlier, or none
        assert len({c.istitle() for c in choices}) == 1, choices
    # what evaluate reports as the context-free baseline is these guesses, counted the same way
    reported = guesses("cloze", items, held_out, train_counts)
    mine = heuristic_scores(items, counts)
    assert np.mean(reported["least often in the passage"]) == pytest.approx(mine["min passage"], abs=1e-3)
    assert np.mean(reported["most common in the corpus"]) == pytest.approx(mine["max corpus"], abs=1e-3)
    assert np.mean(reported["least long"]) == pytest.approx(mine["min length"], abs=1e-3)


def test_items_whose_sentence_occurs_in_train_are_dropped():
    from inheritune.data.tasks import cloze_items, sentence_key, sentences, word_order_items

    documents = corpus_documents()[::8][:20]
    items = cloze_items(documents, seed=0)
    words = word_order_items(documents, seed=0)
    last = lambda item: sentences(item["query"] + item["choices"][item["gold"]])[-1]  # noqa: E731
    # the sentences of every other cloze item and every other pair, as the train split may hold them: in other
    # capitals, spacing and punctuation
    trained = [last(item) for item in items[::2]] + [item["choices"][item["gold"]] for item in words[::2]]
    seen = {sentence_key(" ".join(s.upper().split()).replace(",", " ,") + " .") for s in trained}
    kept = cloze_items(documents, seed=0, seen=seen)
    kept_pairs = word_order_items(documents, seed=0, seen=seen)
    assert not {sentence_key(last(item)) for item in kept} & seen and len(kept) >= len(items) // 3
    assert not {sentence_key(item["choices"][item["gold"]]) for item in kept_pairs} & seen
    assert len(kept_pairs) >= len(words) // 3


@pytest.fixture(scope="module")
def paragraphs_dataset(tmp_path_factory):
    """Sixty documents of the shipped corpus as text files split by paragraph, with 12 paragraphs repeated in
    each file, so that both splits hold them (as boilerplate and quotations do)."""
    from inheritune.assets.catalog import asset_path
    from inheritune.data.dataset import PrepareConfig, TokenData, prepare

    root = tmp_path_factory.mktemp("paragraphs")
    texts = root / "texts"
    texts.mkdir()
    lines = asset_path("corpus").read_text().splitlines()
    documents = [json.loads(line)["text"] for line in lines[200:260]]  # Brown: about 2,000 words each
    repeated = [p for p in documents[0].split("\n\n") if len(p.split()) > 60][:12]
    for i, document in enumerate(documents):
        (texts / f"doc{i:02d}.txt").write_text(document + "\n\n" + "\n\n".join(repeated))
    data = prepare(PrepareConfig(input=[str(texts)], out=str(root / "ds"), tokenizer="gpt2", doc_split="paragraph",
                                 val_fraction=0.3), progress=False)
    return TokenData(data), repeated


def test_offline_items_never_come_from_the_train_split(paragraphs_dataset, tmp_path):
    from inheritune.data.tasks import lm_eval_name, offline_task_dir, sentences
    from inheritune.data.tokenizer import load_tokenizer

    data, repeated = paragraphs_dataset
    folder = offline_task_dir(data, ["cloze", "word-order"], tmp_path / "cache")
    tokenizer = load_tokenizer("gpt2")
    train = tokenizer.decode(np.asarray(data.split("train"), dtype=np.int64).tolist())
    key = lambda s: " ".join(re.findall("[a-z]+", s.lower()))  # noqa: E731
    in_train = {key(s) for s in sentences(" ".join(train.split()))}
    assert any(key(s) in in_train for s in sentences(" ".join(repeated)))  # the split shares sentences
    for task in ("cloze", "word-order"):
        items = [json.loads(line) for line in (folder / f"{lm_eval_name(task)}.jsonl").read_text().splitlines()]
        assert len(items) >= 20
        for item in items:
            text = item["query"] + item["choices"][item["gold"]]
            assert key(sentences(text)[-1]) not in in_train, (task, text[-200:])
    assert not list(folder.glob(".*tmp*"))  # no temporary file left behind


def test_task_files_are_written_under_names_unique_to_the_process(tmp_path):
    from inheritune.utils.taskfiles import write_task

    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / ".t.jsonl.tmp").mkdir()  # a fixed temporary name is in the way (another writer's, say)
    dead = subprocess.Popen(["true"])  # its pid is surely no process's once it has been waited for
    dead.wait()
    stale = folder / f".t.yaml.tmp-{dead.pid}"
    stale.write_text("half a file from a killed process")
    config = write_task("t", [{"query": "q", "choices": [" a", " b"], "gold": 0}], folder)
    assert config == folder / "t.yaml" and (folder / ".t.jsonl.tmp").is_dir()
    assert json.loads((folder / "t.jsonl").read_text()) == {"query": "q", "choices": [" a", " b"], "gold": 0}
    write_task("t", [], folder, {"guesses.json": {"x": 1}})
    assert json.loads((folder / "t.guesses.json").read_text()) == {"x": 1} and (folder / "t.jsonl").read_text() == ""
    assert not stale.exists() and not list(folder.glob(f".*tmp-{os.getpid()}"))


def test_intervals_are_wilson_and_stay_inside_0_and_1():
    """acc ± 1.96 stderr (01426a4) gives [-0.045, 0.145] at 1 of 20 and [0, 0] at 0 of 20."""
    from inheritune.analysis.zeroshot import summarize_output

    for acc, expected in ((0.05, (0.0089, 0.2361)), (0.0, (0.0, 0.1611)), (1.0, (0.8389, 1.0))):
        output = {"results": {"t": {"acc,none": acc, "acc_stderr,none": math.sqrt(acc * (1 - acc) / 19)}},
                  "n-samples": {"t": {"effective": 20}}}  # what lm-eval returns for 20 items
        low, high = summarize_output(output, ["t"])["t"]["acc_ci"]
        assert (low, high) == pytest.approx(expected, abs=1e-4)


def test_too_few_items_left_after_the_train_split_is_refused(tmp_path, paragraphs_dataset, monkeypatch):
    from inheritune.data import tasks

    data, _ = paragraphs_dataset
    monkeypatch.setattr(tasks, "sentence_key", lambda sentence: 0)  # every sentence "occurs in train"
    with pytest.raises(UserError, match="only 0 cloze items.*train split"):
        tasks.offline_task_dir(data, ["cloze"], tmp_path / "cache")
