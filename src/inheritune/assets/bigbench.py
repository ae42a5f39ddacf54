"""BIG-bench multiple-choice tasks from the official BIG-bench 1.0.0 sdist (only the needed ``task.json`` files are
extracted), converted to JSONL + an lm-eval task YAML. Optional: PyPI stopped serving that sdist in 2026 (only
``bigbench 0.0.1`` is left), so it is used where the cache holds it or it can still be fetched, and otherwise the
error names the manual step. Nothing the project installs or tests depends on it."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from inheritune.assets.registry import cache_dir, download
from inheritune.utils.errors import UserError
from inheritune.utils.taskfiles import write_task

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


def fetch_bigbench(tasks: list[str], cache: str | Path | None = None) -> Path:
    """Extract (once) the named BIG-bench tasks from the official sdist and write lm-eval task files; returns
    the folder holding them."""
    root = cache_dir(cache) / "bigbench"
    missing = [t for t in tasks if not (root / f"{TASK_PREFIX}{t}.yaml").is_file()]
    if missing:
        downloads = cache_dir(cache) / "downloads"
        try:
            sdist = download(BIGBENCH_SPEC, downloads, "sdist")
        except UserError as exc:
            reason = str(exc).split(" failed (", 1)[-1].split("). Manual step", 1)[0]
            raise UserError(f"BIG-bench 1.0.0 is not in the cache and could not be fetched ({reason}); PyPI no "
                            f"longer serves it: put bigbench-1.0.0.tar.gz (358 MB) in {downloads} by hand, or use the "
                            "offline tasks (--tasks cloze word-order)") from None
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
