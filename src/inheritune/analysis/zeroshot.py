"""Zero-shot multiple-choice evaluation through lm-evaluation-harness, offline, on local task files.

BIG-bench multiple-choice tasks come from ``assets.bigbench`` (local JSONL + an lm-eval task YAML). Any other lm-eval task name
is passed through for users with a network.
"""

from __future__ import annotations

import os
from pathlib import Path

from inheritune.assets.bigbench import (
    BIGBENCH_DEFAULT,
    TASK_PREFIX,
    fetch_bigbench,
)
from inheritune.utils.errors import UserError


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
