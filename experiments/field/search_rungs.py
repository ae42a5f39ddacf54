"""The rungs a ``run --search halving`` has scored so far, from its state.json: each rung's candidates by val loss,
with the paired Δ against the rung's best (what report.md will show once the search ends). For a search still
running, or one stopped before its end.

    python experiments/field/search_rungs.py runs/evidence/search-80k
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from inheritune.analysis.scoring import paired_delta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    args = parser.parse_args()
    state = json.loads((args.run / "state.json").read_text())
    rungs: dict[int, dict[str, dict]] = {}
    for key, value in state.items():
        found = re.fullmatch(r"search/rung-(\d+)/(.+)/eval", key)
        if found:
            trained = state.get(key.replace("/eval", "/train"), {})
            rungs.setdefault(int(found[1]), {})[found[2]] = {**value, "tokens": trained.get("tokens")}
    for number in sorted(rungs):
        scored = rungs[number]
        order = sorted(scored, key=lambda n: scored[n]["loss"])
        best = order[0]
        print(f"\nRung {number}: {len(order)} candidates scored\n")
        print("| candidate | tokens | val loss [95% CI] | Δ vs the rung's best [paired 95% CI] |\n|---|---|---|---|")
        for name in order:
            e = scored[name]
            pair = paired_delta(e, scored[best], 2000) if name != best else None
            delta = "-" if pair is None else f"{pair['delta']:+.4f} [{pair['ci95'][0]:+.3f}, {pair['ci95'][1]:+.3f}]"
            print(f"| {name} | {e['tokens']:,} | {e['loss']:.4f} [{e['loss_ci95'][0]:.3f}, {e['loss_ci95'][1]:.3f}] "
                  f"| {delta} |")


if __name__ == "__main__":
    main()
