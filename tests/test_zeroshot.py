import json

import pytest

from inheritune.analysis.zeroshot import resolve_tasks, zero_shot
from inheritune.assets.bigbench import convert_bigbench, write_task
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
