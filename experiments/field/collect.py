"""One table of the children of several finished ``inheritune run`` folders, each paired with a chosen partner.

The partner is named by a template over a child's own parts, so one script answers both questions of
docs/pretrained.md's "field" sections:

    # blocks chosen by measured loss against bi, healed the same way
    python experiments/field/collect.py runs/field/select-20k --versus "bi-{heal}"
    # LoRA and last:3 against training every weight, same blocks and healing (children of several runs)
    python experiments/field/collect.py runs/field/trainable-20k runs/field/select-20k --versus "{method}-{heal}"

A child's folder name is METHOD-HEAL[-SPEC] (SPEC: lora, last3; all-weights children have none). Every pair is
checked to have been scored on the same windows; the interval is the paired bootstrap of ``inheritune run``'s
report. Train seconds are the training's own time; peak memory and trained parameters come from its summary.
Where two runs hold a child of the same folder name, the partner is the one of the run named first.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from inheritune.analysis.scoring import paired_delta

HEALS = ("ce", "kd")


def parts(folder: str) -> dict:
    pieces = folder.split("-")
    if pieces[-1] in HEALS:
        return {"method": "-".join(pieces[:-1]), "heal": pieces[-1], "spec": "all"}
    return {"method": "-".join(pieces[:-2]), "heal": pieces[-2], "spec": pieces[-1]}


def children(run: Path) -> dict[str, dict]:
    state = json.loads((run / "state.json").read_text())
    config = json.loads((run / "run.json").read_text()) if (run / "run.json").is_file() else {}
    recipe = config.get("train", {})
    found = {}
    for key, value in state.items():
        pieces = key.split("/")
        if not (key.startswith("child/") and pieces[-1] == "eval"):
            continue
        folder = pieces[1]
        summary_file = run / "children" / folder / "train" / "summary.json"
        summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
        trained = state.get(f"child/{folder}/train", {})
        before = state.get(f"child/{folder}/before", {})
        label = folder + (f" r{recipe['lora_rank']}" if "lora" in folder and "lora_rank" in recipe else "")
        found[label] = {**parts(folder), "folder": folder, "run": str(run), "eval": value, "before": before.get("loss"),
                        "lr": recipe.get("lr"),
                        "tokens": trained.get("tokens"), "flops": trained.get("training_flops"),
                        "seconds": trained.get("train_seconds"), "peak_mb": summary.get("peak_memory_mb"),
                        "trained": (summary.get("trainable") or {}).get("trainable_parameters")}
    return found


def table(models: dict[str, dict], versus: str) -> str:
    lines = [f"| child | lr | tokens | val loss [95% CI] | Δ vs {versus} [paired 95% CI] | train FLOPs | train s | "
             "peak MB | trained params |", "|---|---|---|---|---|---|---|---|---|"]
    by_folder = {}
    for label, m in models.items():
        by_folder.setdefault(m["folder"], m)
    for label, m in sorted(models.items(), key=lambda x: (x[1]["heal"], x[1]["eval"]["loss"])):
        partner = by_folder.get(versus.format(**m))
        delta = "-"
        if partner is not None and partner is not m:
            if partner["eval"]["window_starts"] != m["eval"]["window_starts"]:
                raise SystemExit(f"{label} ({m['run']}) and {partner['folder']} ({partner['run']}) were scored on "
                                 "other windows: not comparable")
            d = paired_delta(m["eval"], partner["eval"], 2000)
            delta = f"{d['delta']:+.4f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"
        ci = m["eval"].get("loss_ci95") or [float("nan")] * 2
        trained = f"{m['trained']:,}" if isinstance(m["trained"], int) else "-"
        lines.append(f"| {label} | {m['lr']:g} | {m['tokens']:,} | {m['eval']['loss']:.4f} [{ci[0]:.3f}, {ci[1]:.3f}] | {delta} | "
                     f"{m['flops']:.3g} | {m['seconds']:.0f} | {m['peak_mb'] or '-'} | {trained} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run folders (their state.json)")
    parser.add_argument("--versus", default="bi-{heal}",
                        help="the partner's folder name, from the child's {method}, {heal} and {spec}")
    args = parser.parse_args()
    models = {}
    for run in args.runs:
        for label, m in children(run).items():
            models[label if label not in models else f"{label} ({run.name})"] = m
    print(table(models, args.versus))


if __name__ == "__main__":
    main()
