"""Which K blocks of a reference a child keeps, chosen by the methods of the field from one analysis report.

``inherit REF --from-report report.json --select METHOD:K``:

- ``first``: the first K blocks (Inheritune; no report needed: ``--select first:K`` is ``--layers K``);
- ``bi``: the K blocks of highest Block Influence (1 - cos between a block's input and output), in their
  order (ShortGPT, Men et al. 2024);
- ``angular``: drop the n = L - K consecutive blocks whose input and output are closest in angle, i.e. the
  start l minimising arccos(cos(x_l, x_{l+n})) / pi on the last token (Gromov et al., "The Unreasonable
  Ineffectiveness of the Deeper Layers", 2024);
- ``drop-lazy``: drop the blocks the report measured as lazy (rank-1 attention), then the blocks of lowest
  Block Influence among the rest until K remain (when more than L - K are lazy: the lazy ones of lowest BI);
- ``spread``: K evenly spaced blocks from the first to the last (the DistilBERT-style initialisation);
- ``loss``: the K blocks whose single removal raises the calibration loss most (Shortened LLaMA's one-shot PPL
  criterion, Kim et al. 2024);
- ``sleb``: the K blocks SLEB's iterative elimination keeps (Song et al., ICML 2024): it removed, one at a time,
  the block whose removal raised the calibration loss least, measuring again after each removal.

``loss`` and ``sleb`` read what ``analysis.calibration.measure_removals`` measured, stored in the report by
``calibration.report_fields``: ``removal_loss`` in each layer row, ``calibration`` and ``sleb`` in the model entry.

Each choice comes back with the list and a sentence saying why, which ``inherit`` writes into
``inheritune.json`` and the model card.
"""

from __future__ import annotations

import json
from pathlib import Path

from inheritune.utils.errors import UserError

METHODS = ("first", "bi", "angular", "drop-lazy", "spread", "loss", "sleb")
NEEDS_REPORT = ("bi", "angular", "drop-lazy", "loss", "sleb")
MEASURED = ("loss", "sleb")  # chosen from calibration losses, which inherit can also measure on the spot
HOW_TO_MEASURE = ("measure them on the spot with inherit --data DATASET, or analyse the reference with its "
                  "calibration measurement")


def parse_select(text: str) -> tuple[str, int]:
    """'bi:15' -> ('bi', 15), refusing anything else with the spelling it wants."""
    method, colon, count = str(text).strip().partition(":")
    if not colon or method not in METHODS:
        raise UserError(f"--select takes METHOD:K with METHOD one of {', '.join(METHODS)} (e.g. bi:15), "
                        f"not '{text}'")
    if not count.isdigit() or int(count) < 1:
        raise UserError(f"--select {text}: K must be a number of blocks >= 1")
    return method, int(count)


def read_report_model(path: str | Path) -> dict:
    """The analysed model's entry of an ``inheritune analyze`` report (its per-layer table)."""
    report_path = Path(path)
    if not report_path.is_file():
        raise UserError(f"report not found: {report_path}")
    try:
        model = json.loads(report_path.read_text())["models"][0]
        layers = model["layers"]
        if not isinstance(layers, list) or not layers:
            raise TypeError
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, IndexError, TypeError):
        raise UserError(f"{report_path} is not an analysis report with a per-layer table") from None
    return model


def select_layers(method: str, k: int, n_layers: int, report: dict | None = None) -> dict:
    """The blocks ``method`` keeps out of ``n_layers`` (sorted), with the reason. ``report`` is the analysed
    model's entry (``read_report_model``); only ``first`` and ``spread`` work without one."""
    if k > n_layers:
        raise UserError(f"cannot keep {k} blocks of a reference with {n_layers}")
    if report is not None and len(report["layers"]) != n_layers:
        raise UserError(f"the report analyses {len(report['layers'])} layers, the reference has {n_layers}")
    if method in MEASURED and report is None:
        raise UserError(f"--select {method}:{k} chooses from calibration losses: pass the reference's analysis "
                        f"report with --from-report, or {HOW_TO_MEASURE}")
    if method in NEEDS_REPORT and report is None:
        raise UserError(f"--select {method}:{k} chooses from a measurement: pass the reference's analysis report "
                        "with --from-report")
    if method == "first":
        layers, reason = list(range(k)), f"the first {k} blocks (Inheritune)"
    elif method == "spread":
        layers = sorted({round(i * (n_layers - 1) / (k - 1)) for i in range(k)}) if k > 1 else [0]
        reason = f"{k} evenly spaced blocks from 0 to {n_layers - 1} (DistilBERT-style)"
    elif method == "bi":
        layers, reason = _by_block_influence(report, k)
    elif method == "angular":
        layers, reason = _angular(report, k, n_layers)
    elif method == "drop-lazy":
        layers, reason = _drop_lazy(report, k, n_layers)
    elif method == "loss":
        layers, reason = _by_removal_loss(report, k)
    else:
        layers, reason = _sleb(report, k, n_layers)
    return {"method": method, "k": k, "layers": layers, "reason": reason}


def _influence(report: dict) -> list[float]:
    values = [layer.get("block_influence") for layer in report["layers"]]
    if not all(isinstance(v, (int, float)) for v in values):
        raise UserError("the report has no Block Influence for every layer; analyse the reference again")
    return [float(v) for v in values]


def _by_block_influence(report: dict, k: int) -> tuple[list[int], str]:
    # Ties in influence drop the later block (keep the earlier), in bi and drop-lazy alike.
    bi = _influence(report)
    keep = sorted(sorted(range(len(bi)), key=lambda l: (-bi[l], l))[:k])
    dropped = [l for l in range(len(bi)) if l not in keep]
    floor = min(bi[l] for l in keep)
    return keep, (f"the {k} blocks of highest Block Influence (ShortGPT): drops {ranges(dropped) or 'none'}, "
                  f"whose BI is at most {max((bi[l] for l in dropped), default=0):.4f} (kept: >= {floor:.4f})")


def _angular(report: dict, k: int, n_layers: int) -> tuple[list[int], str]:
    n = n_layers - k
    if n == 0:
        return list(range(n_layers)), "all blocks (nothing to drop)"
    spans = report.get("angular_distance_by_span") or {}
    distances = spans.get(str(n))
    if distances is None and n == 1:  # older reports: the single-block distances are in the per-layer table
        distances = [layer.get("angular_distance") for layer in report["layers"]]
    if not distances or not all(isinstance(d, (int, float)) for d in distances):
        raise UserError(f"the report has no angular distances over spans of {n} blocks; analyse the reference "
                        "again with this version (it records every span)")
    start = min(range(len(distances)), key=lambda l: (distances[l], l))
    keep = [l for l in range(n_layers) if not start <= l < start + n]
    return keep, (f"drops blocks {start}-{start + n - 1}: the span of {n} whose input and output are closest in "
                  f"angle ({distances[start]:.4f} of pi; Gromov et al.)")


def _drop_lazy(report: dict, k: int, n_layers: int) -> tuple[list[int], str]:
    bi = _influence(report)
    lazy = [l for l, layer in enumerate(report["layers"]) if layer.get("lazy")]
    to_drop = n_layers - k
    if len(lazy) >= to_drop:
        dropped = sorted(sorted(lazy, key=lambda l: (bi[l], -l))[:to_drop])
        why = f"drops {to_drop} of the {len(lazy)} lazy blocks ({ranges(lazy)}), those of lowest Block Influence"
    else:
        rest = sorted((l for l in range(n_layers) if l not in lazy), key=lambda l: (bi[l], -l))
        extra = rest[:to_drop - len(lazy)]
        dropped = sorted(lazy + extra)
        why = (f"drops the lazy blocks ({ranges(lazy) or 'none measured'}), then {ranges(sorted(extra)) or 'none'}, "
               "the remaining blocks of lowest Block Influence")
    return [l for l in range(n_layers) if l not in dropped], why


def _calibration(report: dict) -> str:
    record = report.get("calibration") or {}
    fingerprint = str(record.get("fingerprint") or "?")[:12]
    return (f"calibration: {record.get('windows', '?')} windows of {record.get('seq_len', '?')} tokens of the "
            f"{record.get('split', 'train')} split of {record.get('data', '?')} (fingerprint {fingerprint}, seed "
            f"{record.get('seed', '?')}{', BOS windows' if record.get('bos_windows') else ''})")


def _by_removal_loss(report: dict, k: int) -> tuple[list[int], str]:
    # Ties in removal loss drop the later block (keep the earlier), as bi does.
    losses = [layer.get("removal_loss") for layer in report["layers"]]
    if not all(isinstance(v, (int, float)) for v in losses):
        raise UserError(f"--select loss needs the loss of the reference with each block removed, which the report "
                        f"does not hold: {HOW_TO_MEASURE}")
    reference = (report.get("calibration") or {}).get("reference_loss")
    base = float(reference) if isinstance(reference, (int, float)) else min(losses)
    keep = sorted(sorted(range(len(losses)), key=lambda l: (-losses[l], l))[:k])
    dropped = [l for l in range(len(losses)) if l not in keep]
    kept = ", ".join(f"{l} ({losses[l] - base:+.4f})" for l in keep)
    return keep, (f"the {k} blocks whose single removal raises the calibration loss most (Shortened LLaMA's one-shot "
                  f"criterion; {base:.4f} nats with every block): removing one of them raises it by (nats) {kept}; "
                  f"drops {ranges(dropped) or 'none'}, each raising it by at most "
                  f"{max((losses[l] - base for l in dropped), default=0):+.4f}; {_calibration(report)}")


def _sleb(report: dict, k: int, n_layers: int) -> tuple[list[int], str]:
    record = report.get("sleb") or {}
    order, losses = record.get("order"), record.get("losses")
    if not isinstance(order, list) or not isinstance(losses, list) or len(order) != n_layers - 1 or \
            sorted(order + [record.get("last")]) != list(range(n_layers)):
        raise UserError(f"--select sleb needs SLEB's order of removal, which the report does not hold: "
                        f"{HOW_TO_MEASURE} (with SLEB)")
    n = n_layers - k
    dropped, later = order[:n], order[n:] + [record["last"]]
    keep = sorted(later)
    if n == 0:
        return keep, f"all blocks (nothing to drop); SLEB would remove {', '.join(map(str, later))} in that order"
    return keep, (f"SLEB's iterative elimination removed blocks {', '.join(map(str, dropped))} in that order, each "
                  f"the block whose removal raised the calibration loss least at its step (to {losses[n - 1]:.4f} "
                  f"nats after the last); at every step each of the {k} kept blocks raised it more, and it would "
                  f"remove them next in the order {', '.join(map(str, later))}; {_calibration(report)}")


def ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    parts, begin = [], None
    for i, value in enumerate(indices):
        if begin is None:
            begin = value
        if i + 1 == len(indices) or indices[i + 1] != value + 1:
            parts.append(f"{begin}-{value}" if value > begin else f"{value}")
            begin = None
    return ", ".join(parts)
