"""The recipe's report: a table like the paper's, the val-loss curves of every run, and a plain verdict."""

from __future__ import annotations

import math
from pathlib import Path

from inheritune.analysis.plots import draw_loss
from inheritune.analysis.scoring import paired_delta
from inheritune.analysis import sidebyside
from inheritune.analysis.selection import ranges
from inheritune.analysis.verdict import warning_text
from inheritune.utils.config import to_dict
from inheritune.utils.errors import atomic_write, atomic_write_json


def _row(name: str, layers, init: str, trained: dict | None, measured: dict, ref: dict, bootstrap: int,
         cumulative: float | None) -> dict:
    inference = measured.get("inference", {})
    ref_loss = ref["loss"]
    paired = paired_delta(measured, ref, bootstrap) if measured is not ref and "window_sums" in measured else None
    return {
        "model": name, "layers": layers, "init": init,
        "steps": trained["steps"] if trained else None, "tokens": trained["tokens"] if trained else None,
        "parameters": inference.get("parameters"), "val_loss": measured["loss"], "val_loss_ci95": measured["loss_ci95"],
        "perplexity": measured["perplexity"], "delta_vs_reference": measured["loss"] - ref_loss,
        "delta_ci95": paired["ci95"] if paired else None,
        "training_flops": trained["training_flops"] if trained else None,
        "cumulative_flops": cumulative,
        "wall_seconds": trained.get("train_seconds", trained.get("wall_seconds")) if trained else None,
        "prefill_tokens_per_s": inference.get("prefill_tokens_per_s"),
        "decode_tokens_per_s": inference.get("decode_tokens_per_s"),
        "weights_mb": inference.get("weights_mb"), "peak_extra_mb": inference.get("peak_extra_mb"),
        "zero_shot_avg": measured["zero_shot"]["average"]["acc"] if "zero_shot" in measured else None,
        "history": trained.get("history") if trained else None,
        "model_dir": trained.get("model_dir") if trained else None,
    }


def _fmt(value, spec: str, empty: str = "-") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return empty
    return format(value, spec)


def _spent(b: dict) -> str:
    stages = b.get("stages") or []
    if len(stages) > 1:
        return " + ".join(f"{s['steps']} steps" + (f" (data from step {s['data_offset']})" if s.get("data_offset") else "")
                          for s in stages) + f" = {b['tokens']:,} tokens"
    return f"{b['steps']} steps, {b['tokens']:,} tokens"


def _passed(check: dict) -> str:
    """What the reference's checks found when they passed."""
    parts = []
    attention = check.get("attention")
    if attention and attention.get("formed") is None:
        parts.append(attention["reason"])
    elif attention:
        parts.append(f"its attention has formed ({len(attention['uniform'])} of {attention['layers']} layers uniform, "
                     f"{len(attention['lazy'])} lazy)")
    training = check.get("training")
    if training and training.get("converged"):
        parts.append(f"its validation loss had levelled off ({training['slope']:+.4f} nats per 10% of the budget "
                     f"over the last half, 95% CI [{training['ci95'][0]:+.4f}, {training['ci95'][1]:+.4f}])")
    elif training:
        parts.append(training.get("reason", "its convergence is unknown"))
    elif check.get("attention"):
        parts.append("its training curve is not known to this run (pretrained)")
    if not parts:
        parts.append("no analysis of its attention and no training curve of it were available")
    if check.get("meaningful") is None:
        intro = "Could not check the reference (neither check could be made), so the verdict is unverified: "
    else:
        intro = ("The reference passed the checks that make the verdict meaningful: " if attention and
                 attention.get("formed") is not None else "No check of the reference speaks against the verdict: ")
    return intro + "; ".join(parts) + "."


def table(rows: list[dict]) -> str:
    tasks = any(r["zero_shot_avg"] is not None for r in rows)
    head = ("| model | layers | init | steps | tokens | params | val loss [95% CI] | ppl | Δ vs ref [paired 95% CI] | "
            + ("zero-shot avg | " if tasks else "") + "train FLOPs | total FLOPs spent | train time | prefill tok/s | "
            "decode tok/s | weights MB |")
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for r in rows:
        low, high = r["val_loss_ci95"]
        lines.append(
            f"| {r['model']} | {r['layers']} | {r['init']} | {_fmt(r['steps'], 'd')} | {_fmt(r['tokens'], ',')} | "
            f"{_fmt(r['parameters'] and r['parameters'] / 1e6, '.1f')}M | {r['val_loss']:.4f} [{low:.3f}, {high:.3f}] | "
            f"{r['perplexity']:.1f} | {r['delta_vs_reference']:+.4f}"
            + (f" [{r['delta_ci95'][0]:+.3f}, {r['delta_ci95'][1]:+.3f}]" if r["delta_ci95"] else "") + " | "
            + (f"{_fmt(r['zero_shot_avg'] and 100 * r['zero_shot_avg'], '.1f')} | " if tasks else "")
            + f"{_fmt(r['training_flops'], '.2e')} | {_fmt(r['cumulative_flops'], '.2e')} | "
            f"{_fmt(r['wall_seconds'], '.0f')} s | {_fmt(r['prefill_tokens_per_s'], '.0f')} | "
            f"{_fmt(r['decode_tokens_per_s'], '.1f')} | {_fmt(r['weights_mb'], '.0f')} |")
    return "\n".join(lines)


def _blocks_of(round_: dict) -> str:
    """A round's kept blocks and the reason its --select gave for them."""
    selection = round_.get("selection")
    blocks = ranges(round_["blocks"]) if round_.get("blocks") else f"0-{round_['layers'] - 1}"
    return f"{blocks} ({selection['reason']})" if selection else blocks


def search_section(search: dict) -> list[str]:
    """The search's rungs as tables (val loss and paired delta against the rung's best), the cuts the windows
    could not make surely, and what the search spent against training every candidate to the end."""
    lines = [f"## Search (successive halving, eta {search['eta']}, {search['candidates']} candidates)", "",
             "Every candidate follows one warmup-stable-decay schedule over the full budget; each rung is scored in "
             "its stable phase on the run's fixed windows, and survivors continue from their own checkpoint.", ""]
    for number, rung in enumerate(search["rungs"], 1):
        lines += [f"Rung {number}: {len(rung['candidates'])} candidates at {rung['tokens']:,} tokens each "
                  f"(step {rung['steps']})", "",
                  "| candidate | val loss [95% CI] | Δ vs the rung's best [paired 95% CI] | kept |", "|---|---|---|---|"]
        for c in rung["candidates"]:
            pair = c["delta_vs_best"]
            delta = "-" if pair is None else f"{pair['delta']:+.4f} [{pair['ci95'][0]:+.3f}, {pair['ci95'][1]:+.3f}]"
            lines.append(f"| {c['name']} | {c['val_loss']:.4f} [{c['ci95'][0]:.3f}, {c['ci95'][1]:.3f}] | {delta} | "
                         f"{'yes' if c['kept'] else 'no'} |")
        for cut in rung["unclear_cut"]:
            lines.append(f"\nThe windows cannot separate {cut['dropped']} (dropped) from {cut['kept']} (kept): paired "
                         f"Δ {cut['delta']['delta']:+.4f} [{cut['delta']['ci95'][0]:+.3f}, "
                         f"{cut['delta']['ci95'][1]:+.3f}] includes 0; the cut between them is a coin toss.")
        lines.append("")
    fraction = search["fraction_of_grid"]
    lines += [f"**Search winner: {search['winner']}.** The search spent {search['training_flops']:.3g} training "
              f"FLOPs; training every candidate to the full budget would spend {search['grid_training_flops']:.3g}"
              + (f" (the search: {fraction:.0%} of that)." if fraction else ".")
              + " Both count each KD candidate's teacher forward pass, also where the search's teacher cache let a "
                "candidate read it instead of computing it, so the search's own compute was lower still. For the "
                "same reason a KD candidate's train seconds are not its own cost: the first to reach a batch paid "
                "the teacher's pass for all of them.", ""]
    return lines


def write_report(config, out: Path, reference: str, n_layers: int, ref: dict, ref_training: dict | None,
                 analysis: dict | None, start: int, rounds: list[dict], baselines: dict, matched: bool,
                 comparison: str | None, sessions: dict, check: dict | None = None,
                 children: dict | None = None, search: dict | None = None) -> dict:
    """report.md, report.json and val_loss.png of a run: its growth rounds, or (``children``) the children it
    trained side by side."""
    ref_loss = ref["loss"]
    bootstrap = config.bootstrap
    ref_flops = ref_training["training_flops"] if ref_training else 0.0
    ref_name = "reference (trained from scratch)" if ref_training else f"reference ({Path(str(reference)).name})"
    rows = [_row(ref_name, n_layers, "scratch" if ref_training else "pretrained",
                 ref_training, ref, ref, bootstrap, ref_flops if ref_training else None)]
    spent = ref_flops
    for name, c in (children or {}).items():  # side by side: each child's own cost (+ the reference's training)
        rows.append(_row(f"child {name}", c["layers"], f"inherit+{c['heal']}", c, c["eval"], ref, bootstrap,
                         c["training_flops"] + ref_flops))
    for r in ([] if children else rounds):  # Inheritune's cost: the reference's training (when this run trained it) and every round so far
        spent += r["training_flops"]
        rows.append(_row(f"Inheritune {r['name']}", r["layers"], "inherit", r, r["eval"], ref, bootstrap, spent))
    for name, b in baselines.items():
        if "skipped" not in b:
            own = b["training_flops"] + (ref_flops if b.get("uses_reference") else 0.0)
            rows.append(_row(f"baseline {name}", b["layers"], name, b, b["eval"], ref, bootstrap, own))
    best = min(rounds, key=lambda r: r["eval"]["loss"])
    lines = [f"# Inheritune run: {out}", ""]
    if analysis:
        lines += [f"Start: l = {start} from `analyze` ({analysis['reason']}); the paper's default would be "
                  f"L/2 = {analysis['paper_default']}.", ""]
    else:
        lines += [f"Start: l = {start} ({config.start}).", ""]
    shown = list(children.values()) if children else rounds
    lines += [f"Blocks kept ({', '.join(config.select)}; healed by {', '.join(config.heal)}): "
              + "; ".join(f"{r['name']}: {_blocks_of(r)}" for r in shown), ""]
    final = rounds[-1]
    found = sidebyside.compare(children, baselines, ref, bootstrap) if children else None
    if search:
        lines += search_section(search)
    if children:
        lines += [f"Side by side: {len(children)} children of {final['layers']} layers" +
                  (" and the baselines" if baselines else "") + ", each trained from its cut on the same budget.", "",
                  sidebyside.table(found), "", *sidebyside.verdict(found), ""]
    elif matched:
        pair = paired_delta(final["eval"], ref, bootstrap)
        lines += [f"**Matched**: the {final['layers']}-layer child reaches val loss {final['eval']['loss']:.4f} "
                  f"<= reference {ref_loss:.4f}{f' + {config.tolerance}' if config.tolerance else ''} after "
                  f"{len(rounds)} round(s) (child - reference = {pair['delta']:+.4f}, paired 95% CI "
                  f"[{pair['ci95'][0]:+.4f}, {pair['ci95'][1]:+.4f}]"
                  + ("; the child is significantly better)." if pair["ci95"][1] < 0 else
                     "; within noise of the reference)."), ""]
    else:
        gap = best["eval"]["loss"] - ref_loss
        lines += [f"**Not matched** within this budget ({len(rounds)} round(s) of {rounds[0]['steps']} steps, "
                  f"{rounds[0]['tokens']:,} tokens each): the best child ({best['layers']} layers) is at val loss "
                  f"{best['eval']['loss']:.4f}, {gap:+.4f} nats from the reference's {ref_loss:.4f}.", ""]
        if not ref_training:
            lines += ["The reference was pretrained on far more data than this run can spend, so a child trained for "
                      "minutes is not expected to match it; what this run shows is how far each round got and how "
                      "inheritance compares with the baselines on the same budget. Raise `--budget` on real "
                      "hardware.", ""]
    if check is not None:
        lines += [warning_text(check) or _passed(check), ""]
    for name, b in ({} if children else baselines).items():
        if "skipped" in b:
            lines += [f"- baseline {name}: skipped ({b['skipped']})"]
            continue
        pair = paired_delta(b["eval"], final["eval"], bootstrap)
        verdict = ("significant: the paired 95% interval excludes 0" if pair["significant"]
                   else "not significant: the paired 95% interval includes 0")
        lines += [f"- baseline {name} ({b['layers']} layers, {_spent(b)}): val loss {b['eval']['loss']:.4f}; the final "
                  f"{final['layers']}-layer Inheritune child is {'better' if pair['delta'] > 0 else 'worse'} by {abs(pair['delta']):.4f} nats "
                  f"[paired 95% CI of baseline - child: {pair['ci95'][0]:+.4f}, {pair['ci95'][1]:+.4f}] ({verdict})."]
    spent_line = (f"- Inheritune spent {rows[len(rounds)]['cumulative_flops']:.3g} training FLOPs in all: "
                  + (f"the reference's training ({ref_flops:.3g}) + " if ref_training else "")
                  + " + ".join(f"{r['name']} ({r['training_flops']:.3g})" for r in rounds) + ".")
    lines += [] if children else [spent_line]
    lines += ["", table(rows), "",
              f"Validation: {ref['windows']} fixed windows of {config.train.seq_len} tokens ({ref['tokens']:,} tokens) of "
              f"the val split of `{config.data}`, identical for every model; loss intervals are bootstrap 95% over windows "
              f"({bootstrap} resamples), deltas are paired bootstrap intervals over the same windows. "
              "Training FLOPs = (6 N + 12 L d T) per token, plus the teacher's forward pass (2 N + 4 L d T) for KD. "
              "'Total FLOPs spent' adds what a method needed before its own training: the reference's training for "
              "Inheritune and for the baselines built from the reference (KD, hybrid stacking, half-width) when this "
              "run trained the reference"
              + ("" if ref_training else " (it did not: the pretrained reference's own training is counted nowhere)")
              + "; stacking counts both of its stages. "
              f"Inference: batch 1, {config.train.seq_len}-token prefill, 16 decoded tokens.", "",
              "![validation loss](val_loss.png)", ""]
    emergence = out / "reference" / "emergence.png"
    if emergence.is_file():
        lines += ["How the reference's attention formed while it trained (MaxRank and first-token mass per layer "
                  "against tokens seen; `reference/attention.jsonl`):", "", "![emergence](reference/emergence.png)",
                  ""]
    if comparison:
        lines += [f"Reference vs final child, attention rank by layer (from `{comparison}`):", "",
                  "![rank by layer](compare/maxrank.png)", ""]
    final_dir = rounds[-1]["model_dir"]
    lines += ["## The final child" if not children else "## The final child (the best of the side-by-side)", "",
              f"`{final_dir}` is a Hugging Face directory:", "", "```python",
              "from transformers import AutoModelForCausalLM, AutoTokenizer",
              f"model = AutoModelForCausalLM.from_pretrained({final_dir!r})",
              f"tokenizer = AutoTokenizer.from_pretrained({final_dir!r})", "```", "",
              f"Total wall time of this run: {sessions['seconds'] / 60:.1f} min"
              + (f" over {sessions['count']} sessions (a stop and a re-entry each)." if sessions["count"] > 1 else ".")]
    # whole or not at all (a full disk leaves the previous report, never an empty one); a rerun writes it again
    redo = "every finished stage is kept in state.json: free some space and run the same command again"
    atomic_write(out / "report.md", "\n".join(lines) + "\n", "the run's report", redo)
    histories = {r["model"]: r["history"] for r in rows if r.get("history")}
    if histories:
        draw_loss(histories, out / "val_loss.png", title="Validation (markers) and training loss of every run")
    report = {"config": to_dict(config), "matched": matched, "start": start, "reference_loss": ref_loss,
              "rounds": [{"name": r["name"], "layers": r["layers"], "blocks": r.get("blocks"),
                          "selection": r.get("selection")} for r in rounds],
              "rows": [{k: v for k, v in r.items() if k != "history"} for r in rows], "analysis": analysis,
              "side_by_side": None if not found else {
                  "best": found["best"], "first": found["first"], "deltas": found["deltas"],
                  "before": {n: c["before"]["loss"] for n, c in children.items()}},
              "search": search,
              "wall_seconds": sessions["seconds"], "sessions": sessions["count"], "reference_check": check,
              "meaningful": check["meaningful"] if check is not None else None}
    atomic_write_json(out / "report.json", report, "the run's report", redo)
    print("\n" + "\n".join(lines[:next(i for i, x in enumerate(lines) if x.startswith("## The final child"))]),
          flush=True)
    return report
