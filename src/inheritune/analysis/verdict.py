"""Whether a run's verdict can mean anything: before "matched" or "not matched" is trusted, the reference must
be a model worth matching. Two checks, each with its numbers:

- attention: the share of the reference's layers whose heads still average uniformly over the keys they see
  (untrained attention, see ``metrics.attention_state``); half or more means its attention has not formed.
- training: when the run trained the reference, the slope of its validation loss over the last half of its
  budget, with a 95% interval from the eval points; a slope surely steeper than the tolerance means it was
  still learning when it stopped, so a child that "matches" it matches an unfinished model.
"""

from __future__ import annotations

import math

import numpy as np

# Two-sided 95% quantiles of Student's t by degrees of freedom (standard tables); larger df use the next
# smaller entry listed (slightly wider, never narrower, intervals).
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
         20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}
UNIFORM_SHARE_LIMIT = 0.5  # at least this share of uniform layers: the attention has not formed


def t975(df: int) -> float:
    return _T975[max(k for k in _T975 if k <= df)] if df < 1000 else 1.960


def loss_slope(history: list[dict], max_steps: int, last: float = 0.5) -> dict | None:
    """Least-squares slope of the validation loss against training progress over the last ``last`` of the
    budget, in nats per 10% of the budget, with its 95% interval; None with fewer than 3 eval points there."""
    points = [(h["step"], h["val_loss"]) for h in history if "val_loss" in h and h["step"] >= (1 - last) * max_steps]
    if len(points) < 3:
        return None
    x = np.array([p[0] for p in points], dtype=float) / max_steps * 10.0
    y = np.array([p[1] for p in points], dtype=float)
    xc = x - x.mean()
    slope = float((xc * (y - y.mean())).sum() / (xc * xc).sum())
    residual = y - y.mean() - slope * xc
    df = len(points) - 2
    se = math.sqrt(float((residual * residual).sum()) / df / float((xc * xc).sum()))
    half = t975(df) * se
    return {"slope": slope, "ci95": [slope - half, slope + half], "points": len(points),
            "from_step": int(points[0][0]), "to_step": int(points[-1][0])}


def reference_check(attention: dict | None, training: dict | None, tolerance: float) -> dict:
    """The checks on the reference, each with its numbers, and ``meaningful``: true when the checks that could be
    made passed, false when one failed, null when none could be made ("could not check"). ``attention`` is ``analyze.attention_summary`` of the reference; ``training``
    the summary of its training when this run trained it (with ``history`` and ``max_steps``)."""
    check = {"attention": None, "training": None, "warnings": []}
    if attention and "skipped" in attention:
        check["attention"] = {"formed": None, "reason": f"its attention could not be analysed ({attention['skipped']})"}
    elif attention:
        formed = attention["uniform_share"] < UNIFORM_SHARE_LIMIT
        check["attention"] = {**attention, "formed": formed}
        if not formed:
            uniform = attention["uniform"]
            ranks = [attention["max_rank"][l] for l in uniform]
            entropy = [attention["entropy"][l] for l in uniform]
            check["warnings"].append(
                f"the reference has not left uniform attention: {len(uniform)} of {attention['layers']} layers "
                f"still average evenly over the keys they see (MaxRank {min(ranks):.2f}-{max(ranks):.2f} where "
                f"uniform attention has {_span(attention, uniform)}, entropy {min(entropy):.3f}-{max(entropy):.3f} "
                "of the maximum)")
    if training and training.get("history"):
        slope = loss_slope(training["history"], training.get("max_steps") or training["steps"])
        if slope is None:
            check["training"] = {"converged": None, "reason": "fewer than 3 evaluations in the last half of its "
                                                              "training: convergence unknown"}
        else:
            converged = slope["ci95"][1] >= -tolerance
            check["training"] = {**slope, "converged": converged, "tolerance": tolerance}
            if not converged:
                check["warnings"].append(
                    f"its validation loss was still falling when its training stopped ({slope['slope']:+.4f} nats per "
                    f"10% of the budget, 95% CI [{slope['ci95'][0]:+.4f}, {slope['ci95'][1]:+.4f}], from "
                    f"{slope['points']} evaluations over steps {slope['from_step']}-{slope['to_step']}; tolerance "
                    f"{tolerance} nats per 10% of the budget)")
    made = [part for part, key in (("attention", "formed"), ("training", "converged"))
            if check[part] is not None and check[part].get(key) is not None]
    # True: every check that could be made passed; False: one failed; None: none could be made (could not check)
    check["meaningful"] = False if check["warnings"] else (True if made else None)
    return check


def _span(attention: dict, layers: list[int]) -> str:
    ranks = sorted({attention["uniform_rank"][l] for l in layers})
    t = attention.get("t")
    return (f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {ranks[0]}-{ranks[-1]}") + (f" at T = {t}" if t else "")


def warning_text(check: dict) -> str:
    """The plain sentence the report puts under the verdict, or '' when no check failed."""
    if check["meaningful"] is not False:
        return ""
    return ("**This comparison is not evidence for the recipe**: " + "; and ".join(check["warnings"])
            + ". A child that matches (or misses) an unfinished reference says only how inheritance helps an "
            "under-trained model; train the reference further (raise `--budget`) until both checks pass.")
