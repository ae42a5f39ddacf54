"""Tables, plots and the claim-by-claim lines of experiments/pretrained_claims (written into --docs)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from inheritune.analysis.scoring import paired_delta

BOOTSTRAP = 2000


def _paired(a: dict, b: dict) -> dict:
    return paired_delta(a, b, BOOTSTRAP, seed=0)


def _ci(d: dict) -> str:
    return f"{d['delta']:+.4f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"


def _blocks(layers: list[int]) -> str:
    from inheritune.analysis.selection import ranges

    return ranges(sorted(layers)) if sorted(layers) == layers else ",".join(map(str, layers))


def group_table(rows: dict, baseline: str, ref: dict) -> tuple[str, dict]:
    """One row per child: blocks, params, loss before/after with CIs, paired delta vs the group's baseline."""
    lines = ["| child | blocks | params | val loss before | val loss after [95% CI] | Δ vs " + baseline +
             " after [paired 95% CI] | Δ vs reference after [paired 95% CI] | tokens | train FLOPs | train s |",
             "|" + "---|" * 10]
    deltas = {}
    for name, r in rows.items():
        after, before = r["after"], r["before"]
        delta = _paired(after, rows[baseline]["after"]) if name != baseline else None
        deltas[name] = delta
        lines.append(f"| {name} | {_blocks(r['layers']) if r['init'] != 'random' else 'random init'} | "
                     f"{r['parameters'] / 1e6:.1f}M | {before['loss']:.3f} | {after['loss']:.4f} "
                     f"[{after['loss_ci95'][0]:.3f}, {after['loss_ci95'][1]:.3f}] | {_ci(delta) if delta else '-'} | "
                     f"{_ci(_paired(after, ref))} | {r['tokens']:,} | {r['training_flops']:.2e} | "
                     f"{r['train_seconds']:.0f} |")
    return "\n".join(lines), deltas


def verdict(delta: dict | None, better: str, worse: str, tie: str) -> str:
    if delta is None:
        return "could not tell"
    low, high = delta["ci95"]
    return better if high < 0 else worse if low > 0 else tie


def which_verdict(r: dict, deltas: dict) -> list[str]:
    """The which-blocks comparison in a few plain sentences: what each side spent, the ranking before and after
    training, which methods first-K resolvably beats or loses to, and how far the best child is from the
    reference (so that nobody reads a ranking of children as a match of the reference)."""
    which, ref, plan = r["which"], r["ref_score"], r["plan"]
    first = which["first"]
    after = sorted(which, key=lambda m: which[m]["after"]["loss"])
    before = sorted(which, key=lambda m: which[m]["before"]["loss"])
    better = [m for m in which if m != "first" and deltas[m] and deltas[m]["ci95"][1] < 0]
    worse = [m for m in which if m != "first" and deltas[m] and deltas[m]["ci95"][0] > 0]
    tied = [m for m in which if m != "first" and m not in better + worse]
    best = which[after[0]]
    gap = _paired(best["after"], ref)
    n_layers = r["report"]["models"][0]["num_layers"]
    where = ("still above" if gap["ci95"][0] > 0 else "below" if gap["ci95"][1] < 0 else
             "not resolvably different from")
    return [
        "**Verdict.** " + f"Every child has {plan['k']} of the reference's {n_layers} blocks (random: the same shape, "
        f"random init) and trained {first['tokens']:,} tokens ({first['steps']} steps of {first['batch']} x "
        f"{plan['seq_len']}) at lr {first['lr']:g} with the same seed, data order and recipe; all are scored on "
        f"the same {len(ref['window_sums'])} windows of {plan['eval_t']} tokens.",
        "Before training (cut, not retrained): " + ", ".join(f"{m} {which[m]['before']['loss']:.2f}" for m in before)
        + ". After: " + ", ".join(f"{m} {which[m]['after']['loss']:.3f}" for m in after) + ".",
        "First-K (Inheritune's choice) " + "; ".join(part for part in (
            f"loses to {', '.join(better)}" if better else "",
            f"beats {', '.join(worse)}" if worse else "",
            f"cannot be told apart from {', '.join(tied)}" if tied else "") if part)
        + " (paired 95% intervals over the windows).",
        f"The best child ({after[0]}) is {where} the reference ({ref['loss']:.3f}; {_ci(gap)})" + (
            ": at this budget the comparison says which blocks recover fastest in a short retraining, not that any "
            "child matches the reference." if gap["ci95"][0] > 0 else "."),
    ]


def profile_line(name: str, model: dict) -> str:
    """One line per analysed model: where its lazy layers are, its rank and first-token mass by depth, and the
    loss of the whole model on the analysed sequences (the last layer's logit lens)."""
    layers = model["layers"]
    lazy = [l for l, x in enumerate(layers) if x["lazy"]]
    low = min(range(len(layers)), key=lambda l: layers[l]["max_rank"])
    heavy = max(range(len(layers)), key=lambda l: layers[l]["first_token_mass"])
    return (f"- {name}: lazy layers {', '.join(map(str, lazy)) or 'none'} (of {len(layers)}); lowest MaxRank "
            f"{layers[low]['max_rank']:.2f} (layer {low}); most first-token mass {layers[heavy]['first_token_mass']:.3f} "
            f"(layer {heavy}); loss of the whole model on these sequences {layers[-1]['logit_lens_loss']:.3f}")


def draw_curves(groups: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4), squeeze=False)
    for ax, (title, rows) in zip(axes[0], groups.items()):
        for name, r in rows.items():
            steps = [s for s, _ in r["curve"]]
            losses = [l for _, l in r["curve"]]
            width = max(1, len(losses) // 10)  # running mean over a tenth of the run
            smooth = [sum(losses[max(0, i - width + 1):i + 1]) / len(losses[max(0, i - width + 1):i + 1])
                      for i in range(len(losses))]
            ax.plot(steps, smooth, label=f"{name} ({r['after']['loss']:.2f})")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (running mean)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_depth_profile(reports: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, model in reports.items():
        layers = model["layers"]
        n = len(layers)
        ax.plot([(l + 0.5) / n for l in range(n)], [x["max_rank"] for x in layers], marker="o", label=name)
        lazy = [l for l, x in enumerate(layers) if x["lazy"]]
        ax.scatter([(l + 0.5) / n for l in lazy], [layers[l]["max_rank"] for l in lazy], s=90, facecolors="none",
                   edgecolors="red")
    ax.set_yscale("log")
    ax.set_xlabel("relative depth (layer + 0.5) / L")
    ax.set_ylabel("MaxRank (tau 0.9), log scale")
    ax.set_title("Attention rank by relative depth (red circles: lazy layers)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def collect(docs: Path, r: dict) -> None:
    docs.mkdir(parents=True, exist_ok=True)
    ref = r["ref_score"]
    which_table, which_d = group_table(r["which"], "first", ref)
    short = "transfer" not in r
    transfer_table, transfer_d = group_table(r["transfer"], "first", ref) if not short else ("", {})
    ablation_table, ablation_d = group_table(r["ablation"], "full", ref) if not short else ("", {})
    sweep_lines = ["| lr | batch (x seq) | steps | tokens | val loss after [95% CI] |", "|---|---|---|---|---|"]
    for (lr, batch), s in sorted(r["sweep"].items()):
        sweep_lines.append(f"| {lr:g} | {batch} x {r['plan']['seq_len']} | {s['steps']} | {s['tokens']:,} | "
                           f"{s['after']['loss']:.4f} [{s['after']['loss_ci95'][0]:.3f}, "
                           f"{s['after']['loss_ci95'][1]:.3f}] |")
    which_lines = [f"- **{m}** vs first-K: " + verdict(which_d[m], "better than first-K", "worse than first-K",
                                                        "no difference the windows can resolve") + f" ({_ci(which_d[m])})"
                   for m in r["which"] if m != "first"]
    transfer_lines = [] if short else [f"- **{m}** vs the first four: " + verdict(transfer_d[m], "transfers better", "transfers less",
                                                                 "no resolvable difference") + f" ({_ci(transfer_d[m])})"
                      for m in r["transfer"] if m != "first"]
    ablation_lines = [] if short else [f"- **{m}** vs the full block: " + verdict(ablation_d[m], "better", "worse",
                                                                 "no resolvable difference") + f" ({_ci(ablation_d[m])})"
                      for m in r["ablation"] if m != "full"]
    groups = {"which blocks (K of L)": r["which"]}
    if not short:
        groups.update({"lazy-layer transfer (4 blocks)": r["transfer"], "sub-module ablation (blocks 0-3)": r["ablation"]})
    draw_curves(groups, docs / "curves.png")
    profiles = {f"{r['reference']} ({r['report']['models'][0]['num_layers']} layers)": r["report"]["models"][0]}
    for key, label in (("plain", ""), ("bos", ", <bos> first")):
        if r.get("gemma") and key in r["gemma"]:
            model = r["gemma"][key]["models"][0]
            profiles[f"Gemma-3-270M ({model['num_layers']} layers{label})"] = model
    draw_depth_profile(profiles, docs / "maxrank_by_depth.png")
    zero_lines = zero_shot_lines(r["zero_shot"]) if r.get("zero_shot") else []
    selections = {m: x["selection"] for m, x in r["which"].items() if x.get("selection")}
    verdict_lines = which_verdict(r, which_d)
    text = "\n".join([
        f"Reference `{r['reference']}`: val loss {ref['loss']:.4f} [{ref['loss_ci95'][0]:.3f}, {ref['loss_ci95'][1]:.3f}]"
        f" on {len(ref['window_sums'])} windows of {r['plan']['eval_t']} tokens ({ref['tokens']:,} scored tokens).",
        "", *([f"## Sweep (first-{r['plan']['k']} child; chosen: lr {r['chosen']['lr']:g}, batch {r['chosen']['batch']})",
               "", *sweep_lines] if r["sweep"] else
              [f"Learning rate {r['chosen']['lr']:g} and batch {r['chosen']['batch']} given (no sweep in this run; the "
               "full run's sweep chose them: docs/pretrained.md)."]), "", f"## Which blocks ({r['plan']['k']} of {r['report']['models'][0]['num_layers']})", "",
        which_table, "", *which_lines, "", *verdict_lines, "", "Selections:", "",
        *[f"- {m}: {_blocks(s['layers'])} — {s['reason']}" for m, s in selections.items()], "",
        *([] if short else [f"## Lazy-layer transfer (4 blocks; spans {r['spans']})", "", transfer_table, "",
                            *transfer_lines, "", "## Sub-module ablation (blocks 0-3)", "", ablation_table, "",
                            *ablation_lines, ""]),
        *([ZERO_SHOT_HEADING, "", *zero_lines, ""] if zero_lines else []),
        "## Lazy layers by family (analyze: "
        f"{r['plan']['analyze_n']} sequences of {r['plan']['analyze_t']} tokens of the corpus's val split)", "",
        *[profile_line(name, model) for name, model in profiles.items()], "",
        f"Stage times of this invocation (s; a stage an earlier invocation finished takes about 0): {r['timings']}"])
    (docs / "tables.md").write_text(text + "\n")
    light = {k: v for k, v in r.items() if k not in ("report", "gemma")}
    light["sweep"] = {f"lr{lr:g}-b{b}": v for (lr, b), v in r["sweep"].items()}
    light["gemma_layers"] = {k: g["models"][0]["layers"] for k, g in r["gemma"].items()} if r.get("gemma") else None
    light["reference_layers"] = r["report"]["models"][0]["layers"]
    (docs / "results.json").write_text(json.dumps(_strip(light), indent=1))
    print(text, flush=True)


ZERO_SHOT_HEADING = ("## Zero-shot (the offline tasks cloze and word-order, built from the corpus's held-out split: "
                     "not standard benchmarks; accuracy [95% CI])")


def zero_shot_lines(zero_shot: dict) -> list[str]:
    """The zero-shot table: one row per model, accuracy with its interval per task (and chance where known)."""
    tasks = [t for t in next(iter(zero_shot.values())) if t != "average"]
    first = next(iter(zero_shot.values()))
    head = [t + (f" (chance {first[t]['chance']:.2f})" if first[t].get("chance") is not None else "") for t in tasks]
    lines = ["| model | " + " | ".join(head) + " | average |", "|" + "---|" * (len(tasks) + 2)]
    for name, res in zero_shot.items():
        cells = []
        for t in tasks:
            low, high = res[t].get("acc_ci") or [res[t]["acc"] - 1.96 * (res[t].get("acc_stderr") or 0),
                                                 res[t]["acc"] + 1.96 * (res[t].get("acc_stderr") or 0)]
            cells.append(f"{res[t]['acc']:.3f} [{low:.3f}, {high:.3f}] (n={res[t].get('n')})")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {res['average']['acc']:.3f} |")
    return lines


def merge_zero_shot(docs: Path, zero_shot: dict, children: dict) -> str:
    """Put a zero-shot rerun into a full run's docs: the zero-shot section of tables.md and the ``zero_shot`` key
    of results.json are replaced; everything else stays as the full run wrote it. Returns the section."""
    section = "\n".join([ZERO_SHOT_HEADING, "", *zero_shot_lines(zero_shot), "",
                          "Children scored (retrained here with the full run's settings; val loss after training, "
                          "to compare with the which-blocks table): "
                          + ", ".join(f"{m} {c['after']['loss']:.4f}" for m, c in children.items()), ""])
    tables = docs / "tables.md"
    text = tables.read_text()
    start = text.find("## Zero-shot")
    end = text.find("## Lazy layers by family")
    if start < 0 or end < start:
        raise SystemExit(f"{tables} has no zero-shot section before 'Lazy layers by family' to replace")
    tables.write_text(text[:start] + section + "\n" + text[end:])
    results = json.loads((docs / "results.json").read_text())
    results["zero_shot"] = _strip(zero_shot)
    (docs / "results.json").write_text(json.dumps(results, indent=1))
    return section


def _strip(value):
    """The results without per-window sums and curves (they stay in the run folder)."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in ("window_sums", "window_counts", "curve")}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value
