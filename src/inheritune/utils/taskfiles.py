"""Zero-shot task files for lm-evaluation-harness: a JSONL of {query, choices, gold} and a task YAML that reads it
from disk (lm-eval's local-JSONL path), so that a task runs with no network."""

from __future__ import annotations

import json
from pathlib import Path

from inheritune.utils.errors import atomic_write, atomic_write_json, remove_stale_staging


def task_yaml(name: str, data_file: Path) -> str:
    """An lm-eval 0.4 task config for a local JSONL file of {query, choices, gold}."""
    return "\n".join([
        f"task: {name}",
        "dataset_path: json",
        f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data_file))}",
        "test_split: test",
        "output_type: multiple_choice",
        "doc_to_text: \"{{query}}\"",
        "doc_to_choice: \"{{choices}}\"",
        "doc_to_target: \"{{gold}}\"",
        "target_delimiter: \"\"",
        "metric_list:",
        "  - metric: acc\n    aggregation: mean\n    higher_is_better: true",
        "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true",
        "metadata:\n  version: 1.0",
        "",
    ])


def write_task(name: str, items: list[dict], folder: Path, extras: dict[str, object] | None = None) -> Path:
    """JSONL + YAML for lm-eval in ``folder``, and each of ``extras`` ({suffix: value}) as ``name.suffix`` JSON;
    returns the YAML path. Each file is written under a temporary name unique to the process and renamed, the
    YAML last: two processes building the same task never write into one file, and a task whose YAML is there
    is whole."""
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(folder)
    data_file = folder / f"{name}.jsonl"
    atomic_write(data_file, "".join(json.dumps(item) + "\n" for item in items), "the task file")
    for suffix, value in (extras or {}).items():
        atomic_write_json(folder / f"{name}.{suffix}", value, "the task file")
    config = folder / f"{name}.yaml"
    atomic_write(config, task_yaml(name, data_file), "the task file")
    return config
