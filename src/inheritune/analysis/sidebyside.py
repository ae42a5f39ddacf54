"""Several children side by side (``run --select first bi ...``, ``--heal ce kd``): one table of every child and
baseline on the same windows, paired intervals against first-K healed the same way and against the best, and a
verdict that names the winner only when the windows separate it from every other model."""

from __future__ import annotations

from inheritune.analysis.scoring import paired_delta
from inheritune.analysis.selection import ranges


def _ci(pair: dict | None) -> str:
    return "-" if pair is None else f"{pair['delta']:+.4f} [{pair['ci95'][0]:+.3f}, {pair['ci95'][1]:+.3f}]"


def _blocks(entry: dict) -> str:
    blocks = entry.get("blocks")
    if not blocks:
        return "random init"
    return ranges(blocks) if sorted(blocks) == blocks else ",".join(map(str, blocks))


def healing(entry: dict) -> str:
    """How a model was retrained: its loss, and which weights learned when not all ('kd, lora')."""
    spec = entry.get("trainable_spec", "all")
    return entry.get("heal", "ce") + ("" if spec == "all" else f", {spec}")


def anchor(children: dict, heal: str | None = None) -> str | None:
    """The paper's child among them: first-K healed ``heal`` when that child was trained, else first-K healed the
    first way the run names (the caller labels that fallback: a kd child against a ce first-K measures the
    healing as much as the blocks)."""
    firsts = [name for name, c in children.items() if c["method"] == "first"]
    return next((n for n in firsts if healing(children[n]) == heal), firsts[0] if firsts else None)


def compare(children: dict, baselines: dict, ref: dict, bootstrap: int) -> dict:
    """Every model's paired deltas (after training, same windows) against first-K healed the same way (its
    ``anchor``), the best and the reference."""
    entries = dict(children) | {f"baseline {n}": b for n, b in baselines.items() if "skipped" not in b}
    best = min(entries, key=lambda n: entries[n]["eval"]["loss"])
    out = {}
    for name, e in entries.items():
        first = anchor(children, healing(e))
        first = None if first == name else first  # first-K itself has nothing to be compared with
        out[name] = {
            "anchor": first,
            "vs_first": paired_delta(e["eval"], entries[first]["eval"], bootstrap) if first else None,
            "vs_best": paired_delta(e["eval"], entries[best]["eval"], bootstrap) if name != best else None,
            "vs_reference": paired_delta(e["eval"], ref, bootstrap)}
    return {"entries": entries, "best": best, "first": anchor(children), "deltas": out}


def _vs_first(found: dict, name: str) -> str:
    """The cell of "Δ vs first-K, same healing"; against first-K healed another way (the run trained none healed
    like this model) it names that anchor and its healing."""
    d = found["deltas"][name]
    other = d["anchor"] and healing(found["entries"][d["anchor"]])
    if d["vs_first"] is None or other == healing(found["entries"][name]):
        return _ci(d["vs_first"])
    return f"{_ci(d['vs_first'])} vs {d['anchor']} ({other}, other healing)"


def table(found: dict) -> str:
    head = ("| model | blocks | healing | val loss before | val loss after [95% CI] | Δ vs first-K, same healing "
            "[paired 95% CI] | Δ vs best [paired 95% CI] | Δ vs reference [paired 95% CI] | tokens | train FLOPs | "
            "train s | peak MB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, e in found["entries"].items():
        d = found["deltas"][name]
        low, high = e["eval"]["loss_ci95"]
        before = e.get("before")
        seconds = e.get("train_seconds", e.get("wall_seconds"))
        lines.append(f"| {name} | {_blocks(e)} | {healing(e)} | "
                     f"{'-' if before is None else format(before['loss'], '.3f')} | {e['eval']['loss']:.4f} "
                     f"[{low:.3f}, {high:.3f}] | {_vs_first(found, name)} | {_ci(d['vs_best'])} | "
                     f"{_ci(d['vs_reference'])} | {e['tokens']:,} | {e['training_flops']:.3g} | "
                     f"{'-' if seconds is None else format(seconds, '.0f')} | "
                     f"{'-' if e.get('peak_memory_mb') is None else format(e['peak_memory_mb'], '.0f')} |")
    return "\n".join(lines)


def verdict(found: dict) -> list[str]:
    """The comparison in plain sentences: what each side spent, the winner (or who cannot be told apart from the
    best), where first-K stands, and the caveat of picking a best on the windows that judge it."""
    entries, deltas, best, first = found["entries"], found["deltas"], found["best"], found["first"]
    tied = [n for n in entries if n != best and deltas[n]["vs_best"]["ci95"][0] <= 0]
    tokens = sorted({e["tokens"] for e in entries.values()})
    flops = {n: e["training_flops"] for n, e in entries.items()}
    lines = []
    if tied:
        lines.append(f"**No single winner**: {best} has the lowest val loss ({entries[best]['eval']['loss']:.4f}), "
                     f"but the windows cannot separate it from {', '.join(tied)} (paired 95% intervals of the "
                     "difference include 0).")
    else:
        lines.append(f"**Winner: {best}** (val loss {entries[best]['eval']['loss']:.4f}): every other model is "
                     "worse, each by a paired 95% interval that excludes 0.")
    for anchored in dict.fromkeys(d["anchor"] for d in deltas.values() if d["anchor"]):  # each first-K in turn
        if anchored == best:
            continue
        heal = healing(entries[anchored])
        # a model paired with first-K healed another way (the fallback) is named with its healing
        group = {n: n if healing(e) == heal else f"{n} (healed by {healing(e)})"
                 for n, e in entries.items() if deltas[n]["anchor"] == anchored}
        better = [label for n, label in group.items() if deltas[n]["vs_first"]["ci95"][1] < 0]
        worse = [label for n, label in group.items() if deltas[n]["vs_first"]["ci95"][0] > 0]
        same = [label for label in group.values() if label not in better + worse]
        role = "the paper's choice" if anchored == first else f"healed by {heal}"
        lines.append(f"First-K ({anchored}, {role}) " + "; ".join(part for part in (
            f"loses to {', '.join(better)}" if better else "", f"beats {', '.join(worse)}" if worse else "",
            f"cannot be told apart from {', '.join(same)}" if same else "") if part) + ".")
    spent = (f"Every model trained {tokens[0]:,} tokens" if len(tokens) == 1 else
             "The models trained " + ", ".join(f"{n} {e['tokens']:,}" for n, e in entries.items()) + " tokens")
    spent += " with the same seed, data order and recipe, and is scored on the same windows"
    if max(flops.values()) > 1.01 * min(flops.values()):
        cheapest = min(flops, key=flops.get)
        spent += ("; equal tokens are not equal compute: " + ", ".join(
            f"{n} {flops[n] / flops[cheapest]:.2f}x" for n in entries if flops[n] > 1.01 * flops[cheapest])
            + f" the training FLOPs of {cheapest} (a KD child pays for the reference's forward pass; frozen "
            "weights skip their gradients)")
    lines.append(spent + ".")
    gap = deltas[best]["vs_reference"]
    if gap["ci95"][0] > 0:
        lines.append(f"The best model is still {gap['delta']:+.4f} nats above the reference: the comparison says "
                     "which choice recovers fastest on this budget, not that any child matches the reference.")
    lines.append("Intervals are pairwise (no correction for the number of comparisons), and the best is picked on "
                 "the windows that judge it: a close winner is a lead, not a result.")
    return lines
