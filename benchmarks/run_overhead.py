"""Where the wall time of a finished `inheritune run` went: training steps vs everything around them (model
loads and set-up of each training, validation loss and inference cost of each model, analyses, inheriting,
the report).

Run: .venv/bin/python benchmarks/run_overhead.py RUN_DIR        (e.g. runs/demo/mini after `make demo`)
The run must have been made in one go (a re-entered run's report.json times only the last call). Target
(issue 13): less than 15% of the wall time outside training on the demo config.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    args = parser.parse_args()
    out = Path(args.run_dir)
    state = json.loads((out / "state.json").read_text())
    total = json.loads((out / "report.json").read_text())["wall_seconds"]
    trainings = {k: v for k, v in state.items() if isinstance(v, dict) and "train_seconds" in v}
    measures = {k: v for k, v in state.items() if isinstance(v, dict) and k.endswith("eval") and "seconds" in v}
    training = sum(v["train_seconds"] for v in trainings.values())
    setup = sum(v["wall_seconds"] - v["train_seconds"] for v in trainings.values())
    measuring = sum(v["seconds"] for v in measures.values())
    analyses = sum((state.get(k) or {}).get("seconds", 0.0) if isinstance(state.get(k), dict) else 0.0
                   for k in ("analysis", "reference_attention", "compare_done"))
    rest = total - training - setup - measuring - analyses
    rows = [("training steps (evaluations during training included)", training),
            (f"set-up of {len(trainings)} trainings (loads, final save)", setup),
            (f"measuring {len(measures)} models (load, validation loss, inference cost)", measuring),
            ("analyses (reference, comparison)", analyses), ("the rest (inheriting, report, plots)", rest)]
    print(f"{out}: {total:.0f} s wall in all")
    print("| part | seconds | share |")
    print("|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.1f} | {seconds / total:.1%} |")
    print(f"outside training: {(total - training) / total:.1%} (target < 15%)")


if __name__ == "__main__":
    main()
