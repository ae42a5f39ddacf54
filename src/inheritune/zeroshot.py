"""Zero-shot multiple-choice evaluation through lm-evaluation-harness, offline, on local task files.

BIG-bench multiple-choice tasks are converted from the official BIG-bench sdist on PyPI (fetched once; only
the needed ``task.json`` files are extracted) into JSONL + an lm-eval task YAML. Any other lm-eval task name
is passed through for users with a network.
"""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

from .errors import UserError
from .registry import cache_dir, download


BIGBENCH_SPEC = "bigbench==1.0.0"
BIGBENCH_DEFAULT = ("general_knowledge", "social_iqa", "winowhy", "physical_intuition")
TASK_PREFIX = "inheritune_bb_"


def convert_bigbench(task: dict, name: str) -> list[dict]:
    """BIG-bench's zero-shot multiple-choice prompt for each example: {query, choices, gold}.

    The prompt follows BIG-bench's defaults: task prefix, "\\nQ: " + input, the choices listed as
    "\\n  choice: ..." lines, then "\\nA: "; the continuation scored is the choice text itself.
    """
    examples = task.get("examples")
    if not examples or "target_scores" not in examples[0]:
        raise UserError(f"BIG-bench task {name} is not a multiple-choice task (no target_scores)")
    input_prefix = task.get("example_input_prefix", "\nQ: ")
    output_prefix = task.get("example_output_prefix", "\nA: ")
    choice_prefix = task.get("choice_prefix", "\n  choice: ")
    append_choices = task.get("append_choices_to_input", True)
    prefix = task.get("task_prefix", "")
    items = []
    for example in examples:
        choices = list(example["target_scores"])
        scores = [example["target_scores"][c] for c in choices]
        listed = "".join(choice_prefix + c for c in choices) if append_choices else ""
        query = (prefix + input_prefix + example["input"] + listed + output_prefix).lstrip("\n")
        items.append({"query": query, "choices": choices, "gold": scores.index(max(scores))})
    return items


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
    """JSONL + YAML for lm-eval in ``folder``; returns the YAML path."""
    folder.mkdir(parents=True, exist_ok=True)
    data_file = folder / f"{name}.jsonl"
    data_file.write_text("".join(json.dumps(item) + "\n" for item in items))
    config = folder / f"{name}.yaml"
    config.write_text(task_yaml(name, data_file))
    return config


def fetch_bigbench(tasks: list[str], cache: str | Path | None = None) -> Path:
    """Extract (once) the named BIG-bench tasks from the official sdist and write lm-eval task files; returns
    the folder holding them."""
    root = cache_dir(cache) / "bigbench"
    missing = [t for t in tasks if not (root / f"{TASK_PREFIX}{t}.yaml").is_file()]
    if missing:
        sdist = download(BIGBENCH_SPEC, cache_dir(cache) / "downloads", "sdist")
        wanted = {f"bigbench/benchmark_tasks/{t}/task.json": t for t in missing}
        found = {}
        with tarfile.open(sdist) as archive:
            for member in archive:
                tail = member.name.split("/", 1)[-1]  # drop the "bigbench-1.0.0/" folder
                if tail in wanted:
                    found[wanted[tail]] = json.load(archive.extractfile(member))
                    if len(found) == len(wanted):
                        break
        absent = [t for t in missing if t not in found]
        if absent:
            raise UserError(f"BIG-bench has no task '{absent[0]}' with a task.json (subtask folders are not supported)")
        for name, task in found.items():
            write_task(f"{TASK_PREFIX}{name}", convert_bigbench(task, name), root)
    return root


def resolve_tasks(tasks: list[str], cache: str | Path | None = None) -> tuple[list[str], list[str]]:
    """(lm-eval task names, include paths): local YAML files, BIG-bench names, or lm-eval names."""
    names, include, bigbench = [], [], []
    for task in tasks:
        path = Path(task)
        if task.endswith((".yaml", ".yml")):
            if not path.is_file():
                raise UserError(f"task file not found: {path}")
            import yaml

            try:
                config = yaml.safe_load(path.read_text())
            except yaml.YAMLError as exc:
                raise UserError(f"task file {path} does not parse: {str(exc).splitlines()[0]}") from None
            if not isinstance(config, dict) or "task" not in config:
                raise UserError(f"task file {path} has no 'task' name")
            names.append(config["task"])
            include.append(str(path.parent))
        elif task in BIGBENCH_DEFAULT or task.startswith("bigbench:"):
            bigbench.append(task.removeprefix("bigbench:"))
        else:
            names.append(task)
    if bigbench:
        include.append(str(fetch_bigbench(bigbench, cache)))
        names += [f"{TASK_PREFIX}{t}" for t in bigbench]
    return names, sorted(set(include))


def zero_shot(model, tokenizer, tasks: list[str], batch_size: int = 8, limit: int | None = None,
              device: str = "cpu", cache: str | Path | None = None) -> dict:
    """Accuracy (and acc_norm) with stderr per task, and the average accuracy, through lm-eval."""
    names, include = resolve_tasks(tasks, cache)
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise UserError("zero-shot tasks need lm-eval: pip install lm-eval==0.4.13") from None
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    manager = TaskManager(include_path=include or None)
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        raise UserError(f"unknown task '{unknown[0]}': not a local task file or BIG-bench task, and lm-eval's own "
                        "tasks download their data, which needs a network")
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
    try:
        output = simple_evaluate(model=lm, tasks=names, task_manager=manager, limit=limit, log_samples=False,
                                 verbosity="ERROR")
    except (ConnectionError, OSError) as exc:
        raise UserError(f"lm-eval could not load a task's data ({str(exc).splitlines()[0]}); offline, only local "
                        "task files and BIG-bench tasks work") from None
    results = {}
    for name in names:
        metrics = output["results"][name]
        short = name.removeprefix(TASK_PREFIX)
        results[short] = {key.split(",")[0]: value for key, value in metrics.items()
                          if key.split(",")[0] in ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr")}
        results[short]["n"] = output.get("n-samples", {}).get(name, {}).get("effective")
    results["average"] = {"acc": sum(r["acc"] for r in results.values()) / len(names)}
    return results
