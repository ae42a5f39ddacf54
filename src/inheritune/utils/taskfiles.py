"""Zero-shot task files for lm-evaluation-harness: a JSONL of {query, choices, gold} and a task YAML that reads it
from disk (lm-eval's local-JSONL path), so that a task runs with no network."""

from __future__ import annotations

import json
from pathlib import Path


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


def write_task(name: str, items: list[dict], folder: Path) -> Path:
    """JSONL + YAML for lm-eval in ``folder`` (each written under a temporary name, then renamed); returns the
    YAML path."""
    folder.mkdir(parents=True, exist_ok=True)
    data_file = folder / f"{name}.jsonl"
    tmp = folder / f".{name}.jsonl.tmp"
    tmp.write_text("".join(json.dumps(item) + "\n" for item in items))
    tmp.replace(data_file)
    config = folder / f"{name}.yaml"
    tmp = folder / f".{name}.yaml.tmp"
    tmp.write_text(task_yaml(name, data_file))
    tmp.replace(config)
    return config
