import json

import pytest

from inheritune.analysis.zeroshot import resolve_tasks, zero_shot
from inheritune.assets.bigbench import convert_bigbench
from inheritune.utils.taskfiles import write_task
from inheritune.evaluate import EvalConfig, evaluate
from inheritune.utils.errors import UserError

BIGBENCH_TASK = {
    "name": "tiny_animals",
    "task_prefix": "Answer the question.",
    "examples": [
        {"input": "How many legs do horses have?", "target_scores": {"two": 0, "four": 1, "six": 0}},
        {"input": "What do cows drink?", "target_scores": {"milk": 0, "water": 1}},
    ],
}


def test_bigbench_converter_builds_bigbench_prompts(tmp_path):
    items = convert_bigbench(BIGBENCH_TASK, "tiny_animals")
    assert items[0] == {"query": "Answer the question.\nQ: How many legs do horses have?\n  choice: two\n  choice: four"
                                 "\n  choice: six\nA: ", "choices": ["two", "four", "six"], "gold": 1}
    assert items[1]["gold"] == 1 and items[1]["choices"] == ["milk", "water"]
    plain = convert_bigbench({**BIGBENCH_TASK, "append_choices_to_input": False, "task_prefix": ""}, "t")
    assert plain[0]["query"] == "Q: How many legs do horses have?\nA: "
    with pytest.raises(UserError, match="not a multiple-choice"):
        convert_bigbench({"examples": [{"input": "x", "target": "y"}]}, "generative")


def test_a_local_task_runs_through_lm_eval_offline(tmp_path, tiny_model_dir):
    from inheritune.models.loading import load_model

    items = convert_bigbench(BIGBENCH_TASK, "tiny_animals") * 3
    config = write_task("tiny_animals_test", items, tmp_path / "tasks")
    model, tokenizer = load_model(tiny_model_dir)
    result = zero_shot(model, tokenizer, [str(config)], batch_size=4)
    assert set(result) == {"tiny_animals_test", "average"}
    scores = result["tiny_animals_test"]
    assert 0.0 <= scores["acc"] <= 1.0 and scores["n"] == 6 and "acc_stderr" in scores and "acc_norm" in scores
    assert result["average"]["acc"] == scores["acc"]


def test_bad_tasks_fail_in_one_line(tmp_path, tiny_model_dir):
    from inheritune.models.loading import load_model

    broken = tmp_path / "broken.yaml"
    broken.write_text("task: [unclosed\n")
    with pytest.raises(UserError, match="does not parse"):
        resolve_tasks([str(broken)])
    with pytest.raises(UserError, match="task file not found"):
        resolve_tasks([str(tmp_path / "missing.yaml")])
    model, tokenizer = load_model(tiny_model_dir)
    with pytest.raises(UserError, match="needs a network"):
        zero_shot(model, tokenizer, ["some_hub_only_task"])


def test_evaluate_side_by_side_with_tasks(tmp_path, tiny_model_dir, text_dir, gpt2_tokenizer_dir):
    from inheritune.data.dataset import PrepareConfig, prepare

    data = prepare(PrepareConfig(input=[str(text_dir)], out=str(tmp_path / "ds"), tokenizer=str(gpt2_tokenizer_dir)),
                   progress=False)
    task = write_task("tiny_animals_side", convert_bigbench(BIGBENCH_TASK, "x"), tmp_path / "tasks")
    results = evaluate(EvalConfig(models=[str(tiny_model_dir), str(tiny_model_dir)], data=str(data), seq_len=32,
                                  tasks=[str(task)], out=str(tmp_path / "ev"), inference_batch=1), progress=False)
    assert results[0]["zero_shot"] == results[1]["zero_shot"]
    assert results[0]["inference"]["prefill_tokens_per_s"] > 0 and results[0]["inference"]["disk_mb"] > 0
    for name in ("results.json", "results.csv", "results.md", "comparison.png"):
        assert (tmp_path / "ev" / name).is_file()
    table = (tmp_path / "ev" / "results.md").read_text()
    assert "tiny_animals_side" in table and "+0.0000" in table
    saved = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert len(saved["results"]) == 2


# ------------------------------------------------------------------------------------ the offline tasks
ADJECTIVES = ["quiet", "bright", "heavy", "gentle", "narrow", "ancient", "cheerful", "distant"]
NOUNS = ["garden", "village", "captain", "letter", "window", "river", "teacher", "carriage", "sister", "mountain"]
VERBS = ["watched", "found", "carried", "praised", "visited", "painted", "followed", "described"]


def english_like(count: int, seed: int = 0) -> list[str]:
    """Documents of varied, plain English sentences (every sentence ends in a plain word)."""
    import random

    rng = random.Random(seed)
    documents = []
    for _ in range(count):
        sentences = []
        for _ in range(40):
            a, n1, v, n2, n3 = (rng.choice(ADJECTIVES), rng.choice(NOUNS), rng.choice(VERBS), rng.choice(NOUNS),
                                rng.choice(NOUNS))
            sentences.append(f"The {a} {n1} {v} the old {n2} by the {n3} every morning with her {rng.choice(NOUNS)}.")
        documents.append(" ".join(sentences))
    return documents


def brown_documents(count: int, first: int = 200) -> list[str]:
    """Documents of the shipped corpus's Brown part (about 2,000 words each)."""
    from inheritune.assets.catalog import asset_path

    return [json.loads(line)["text"] for line in asset_path("corpus").read_text().splitlines()[first:first + count]]


def test_cloze_items_cut_before_a_sentences_last_word():
    from inheritune.data.tasks import CONTEXT_WORDS, cloze_items

    documents = [" ".join(d.split()) for d in brown_documents(20)]
    items = cloze_items(documents, seed=0)
    assert items == cloze_items(documents, seed=0) and items != cloze_items(documents, seed=1)
    assert len(items) >= 100
    for item in items:
        choices = [c.strip() for c in item["choices"]]
        assert len({c.lower() for c in choices}) == 4 and all(c.startswith(" ") for c in item["choices"])
        gold = choices[item["gold"]]
        assert any(document.find(item["query"] + " " + gold) >= 0 for document in documents)
        assert len(item["query"].split()) >= CONTEXT_WORDS
    assert {item["gold"] for item in items} == {0, 1, 2, 3}  # the answer's position is not a cue
    queries = [item["query"] for item in items]
    for earlier, later in zip(queries, queries[1:]):
        assert later[:60] not in earlier  # each item starts a fresh passage


def test_word_order_pairs_swap_two_adjacent_inner_words():
    from inheritune.data.tasks import word_order_items

    items = word_order_items(english_like(3), seed=0)
    assert len(items) >= 20 and items == word_order_items(english_like(3), seed=0)
    for item in items:
        good = item["choices"][item["gold"]].split()
        bad = item["choices"][1 - item["gold"]].split()
        assert item["query"] == "" and sorted(good) == sorted(bad) and good[0] == bad[0]
        diff = [i for i, (g, b) in enumerate(zip(good, bad)) if g != b]
        assert len(diff) == 2 and diff[1] == diff[0] + 1 and good[diff[0]] == bad[diff[1]]
    assert {item["gold"] for item in items} == {0, 1}


def test_offline_tasks_run_through_lm_eval_from_a_prepared_dataset(tmp_path, tiny_model_dir, gpt2_tokenizer_dir):
    from inheritune.data.dataset import PrepareConfig, TokenData, prepare
    from inheritune.models.loading import load_model

    texts = tmp_path / "texts"
    texts.mkdir()
    for i, document in enumerate(brown_documents(12)):
        (texts / f"doc{i:02d}.txt").write_text(document)
    data = TokenData(prepare(PrepareConfig(input=[str(texts)], out=str(tmp_path / "ds"),
                                           tokenizer=str(gpt2_tokenizer_dir), val_fraction=0.5), progress=False))
    with pytest.raises(UserError, match="give --data"):
        resolve_tasks(["cloze"], tmp_path / "cache")
    names, include = resolve_tasks(["cloze", "word-order"], tmp_path / "cache", data)
    assert names == ["inheritune_cloze", "inheritune_word_order"] and len(include) == 1
    held_out = " ".join(" ".join(document.split()) for document in brown_documents(12))
    first = json.loads(open(f"{include[0]}/inheritune_cloze.jsonl").readline())
    assert first["query"] in held_out
    model, tokenizer = load_model(tiny_model_dir)
    result = zero_shot(model, tokenizer, ["cloze", "word-order"], batch_size=8, limit=20, cache=tmp_path / "cache",
                       data=data)
    assert set(result) == {"cloze", "word-order", "average"}
    for task, chance in (("cloze", 0.25), ("word-order", 0.5)):
        scores = result[task]
        assert scores["n"] == 20 and scores["chance"] == chance
        # the Wilson interval by hand (z = 1.96, n = 20): inside [0, 1], never a point, even at 0 or 20 of 20
        p, z = scores["acc"], 1.96
        center, half = (p + z * z / 40) / (1 + z * z / 20), z * (p * (1 - p) / 20 + z * z / 1600) ** 0.5 / (1 + z * z / 20)
        assert scores["acc_ci"] == pytest.approx([center - half, center + half], abs=1e-9)
        assert 0 <= scores["acc_ci"][0] <= p <= scores["acc_ci"][1] <= 1 and half > 0.1
        # beside chance, the best guess that never reads the passage, on the same 20 items
        baseline = scores["context_free"]
        assert baseline["n"] == 20 and 0 <= baseline["acc"] <= 1 and baseline["heuristic"]


def test_too_little_held_out_text_for_the_offline_tasks_is_refused(tmp_path, text_dir, gpt2_tokenizer_dir):
    from inheritune.data.dataset import PrepareConfig, TokenData, prepare

    data = TokenData(prepare(PrepareConfig(input=[str(text_dir)], out=str(tmp_path / "ds"),
                                           tokenizer=str(gpt2_tokenizer_dir)), progress=False))
    with pytest.raises(UserError, match="only 0 cloze items"):  # every sentence there ends in a number
        resolve_tasks(["cloze"], tmp_path / "cache", data)


def test_a_withdrawn_bigbench_is_a_one_line_error_naming_the_manual_step(tmp_path, monkeypatch):
    from inheritune.assets import bigbench

    def withdrawn(spec, downloads, kind):
        raise UserError(f"'pip download {spec}' failed (ERROR: No matching distribution found for {spec}). "
                        f"Manual step: pip download {spec}")

    monkeypatch.setattr(bigbench, "download", withdrawn)
    with pytest.raises(UserError) as caught:
        resolve_tasks(["general_knowledge"], tmp_path / "cache")
    message = str(caught.value)
    assert "\n" not in message and "No matching distribution" in message
    assert f"in {tmp_path / 'cache' / 'downloads'} by hand" in message and "cloze word-order" in message
