"""Zero-shot multiple-choice evaluation through lm-evaluation-harness, offline, on local task files.

The offline tasks (``cloze``, ``word-order``) are built from the evaluated dataset's validation split
(``data.tasks``); BIG-bench multiple-choice tasks come from ``assets.bigbench`` where its withdrawn sdist is still
at hand; a task ``.yaml`` of the user's is read as is. Any other lm-eval task name is passed through for users with
a network.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from inheritune.assets.bigbench import (
    BIGBENCH_DEFAULT,
    TASK_PREFIX,
    fetch_bigbench,
)
from inheritune.data.dataset import TokenData
from inheritune.data.tasks import OFFLINE_TASKS, context_free_baseline, lm_eval_name, offline_task_dir
from inheritune.utils.errors import UserError


def resolve_tasks(tasks: list[str], cache: str | Path | None = None,
                  data: TokenData | None = None) -> tuple[list[str], list[str]]:
    """(lm-eval task names, include paths): offline task names, local YAML files, BIG-bench names, or lm-eval
    names."""
    names, include, bigbench, offline = [], [], [], []
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
        elif task in OFFLINE_TASKS:
            offline.append(task)
        elif task in BIGBENCH_DEFAULT or task.startswith("bigbench:"):
            bigbench.append(task.removeprefix("bigbench:"))
        else:
            names.append(task)
    if offline:
        if data is None:
            raise UserError(f"the offline task '{offline[0]}' is built from a dataset's validation split: give --data")
        include.append(str(offline_task_dir(data, offline, cache)))
        names += [lm_eval_name(t) for t in offline]
    if bigbench:
        include.append(str(fetch_bigbench(bigbench, cache)))
        names += [f"{TASK_PREFIX}{t}" for t in bigbench]
    return names, sorted(set(include))


def wilson(acc: float, n: int, z: float = 1.96) -> list[float]:
    """The Wilson score interval of an accuracy over ``n`` items: inside [0, 1] and not empty at 0% or 100%, where
    acc ± 1.96 stderr leaves [0, 1] or shrinks to a point."""
    center = (acc + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(acc * (1 - acc) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, center - half), min(1.0, center + half)]


def zero_shot(model, tokenizer, tasks: list[str], batch_size: int = 8, limit: int | None = None,
              device: str = "cpu", cache: str | Path | None = None, data: TokenData | None = None) -> dict:
    """Accuracy (and acc_norm) with stderr and a 95% Wilson interval per task, its chance level and the best
    context-free heuristic's accuracy on the same items (``context_free``) where known, and the average accuracy,
    through lm-eval. ``data``: the dataset whose validation split the offline tasks come from."""
    names, include = resolve_tasks(tasks, cache, data)
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
        raise UserError(f"unknown task '{unknown[0]}': not an offline task (cloze, word-order), a local task file "
                        "or a BIG-bench task, and lm-eval's own tasks download their data, which needs a network")
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
    try:
        output = simple_evaluate(model=lm, tasks=names, task_manager=manager, limit=limit, log_samples=False,
                                 verbosity="ERROR")
    except (ConnectionError, OSError) as exc:
        raise UserError(f"lm-eval could not load a task's data ({str(exc).splitlines()[0]}); offline, only the "
                        "offline tasks, local task files and cached BIG-bench tasks work") from None
    return summarize_output(output, names, data, cache)


def summarize_output(output: dict, names: list[str], data: TokenData | None = None,
                     cache: str | Path | None = None) -> dict:
    """lm-eval's output as zero_shot returns it: per task acc (acc_norm) with stderr, n, a Wilson 95% interval,
    chance and the context-free baseline of an offline task, and the average accuracy."""
    results = {}
    short_names = {lm_eval_name(t): t for t in OFFLINE_TASKS}
    for name in names:
        metrics = output["results"][name]
        short = short_names.get(name, name.removeprefix(TASK_PREFIX))
        results[short] = {key.split(",")[0]: value for key, value in metrics.items()
                          if key.split(",")[0] in ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr")}
        results[short]["n"] = output.get("n-samples", {}).get(name, {}).get("effective")
        n = results[short]["n"]
        if isinstance(n, int) and n > 0:
            results[short]["acc_ci"] = wilson(results[short]["acc"], n)
        if short in OFFLINE_TASKS:
            results[short]["chance"] = OFFLINE_TASKS[short]
            baseline = context_free_baseline(offline_task_dir(data, [short], cache), short, n)
            if baseline is not None:
                results[short]["context_free"] = baseline
    results["average"] = {"acc": sum(r["acc"] for r in results.values()) / len(names)}
    return results
