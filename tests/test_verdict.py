import numpy as np
import pytest

from inheritune.analysis.verdict import loss_slope, reference_check, t975, warning_text


def _history(losses, every=10):
    return [{"step": every * (i + 1), "loss": value, "val_loss": value} for i, value in enumerate(losses)]


def test_slope_of_the_last_half_with_its_interval():
    rng = np.random.default_rng(0)
    falling = 6.0 - 0.02 * np.arange(1, 21) + rng.normal(0, 0.002, 20)  # -0.02 nats per 10 steps
    slope = loss_slope(_history(falling), max_steps=200)
    # 10% of a 200-step budget is 20 steps: -0.04 nats per 10% of the budget; the interval holds it
    assert slope["ci95"][0] <= -0.04 <= slope["ci95"][1] and slope["ci95"][1] < -0.03
    assert slope["points"] == 11 and slope["from_step"] == 100 and slope["to_step"] == 200
    assert loss_slope(_history([5.0, 4.0]), max_steps=20) is None  # too few points to say
    assert t975(1) == pytest.approx(12.706) and t975(22) == pytest.approx(2.086) and t975(10**6) == 1.96


def test_reference_check_warns_on_uniform_attention_and_on_a_falling_loss():
    uniform = {"layers": 4, "t": 100, "lazy": [], "uniform": [0, 1, 2, 3], "attentive": [], "uniform_share": 1.0,
               "max_rank": [5.1, 5.0, 5.0, 5.0], "entropy": [0.99, 1.0, 1.0, 1.0], "uniform_rank": [5, 5, 5, 5]}
    falling = {"steps": 200, "max_steps": 200, "history": _history(6.0 - 0.02 * np.arange(1, 21))}
    check = reference_check(uniform, falling, tolerance=0.01)
    assert not check["meaningful"] and len(check["warnings"]) == 2
    assert not check["attention"]["formed"] and check["training"]["converged"] is False
    text = warning_text(check)
    assert "not evidence" in text and "uniform attention: 4 of 4 layers" in text and "rank 5 at T = 100" in text
    formed = dict(uniform, uniform=[3], attentive=[0, 1, 2], uniform_share=0.25)
    flat = {"steps": 200, "max_steps": 200, "history": _history(np.full(20, 4.0) + 0.001 * (np.arange(20) % 2))}
    passed = reference_check(formed, flat, tolerance=0.01)
    assert passed["meaningful"] and passed["training"]["converged"] and warning_text(passed) == ""
    assert reference_check(formed, None, 0.01)["meaningful"]  # a pretrained reference: attention only


def test_a_check_that_could_not_be_made_is_said_and_does_not_fail():
    from inheritune.analysis.report import _passed

    check = reference_check({"skipped": "the val split is shorter than one sequence of 100 tokens"}, None, 0.01)
    assert check["meaningful"] is None and check["attention"]["formed"] is None  # "could not check", not "passed"
    assert "could not be analysed" in _passed(check) and "Could not check the reference" in _passed(check)
