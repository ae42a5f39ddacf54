"""`run --select first bi ...` and `--heal ce kd`: several children side by side on the same windows, one table
with paired intervals, a verdict that follows the numbers, and KD's cost counted with the teacher's forward."""

import json

import pytest
from test_selection import LAZY, analysed  # noqa: F401 (analysed: the constructed reference and its analysis)

from inheritune.analysis.scoring import paired_delta
from inheritune.analysis.sidebyside import verdict
from inheritune.models.loading import load_model
from inheritune.run import RunConfig, run
from inheritune.training.optim import flops_per_token
from inheritune.utils.config import from_dict
from inheritune.utils.errors import UserError


def _settings(reference, dataset, out, **extra):
    return dict(reference=str(reference), data=str(dataset), out=str(out), start="4", steps=3, seq_len=16,
                micro_batch_size=4, eval_windows=4, eval_interval=0, analyze_n=6, analyze_t=48,
                compare_analysis=False, baselines=["random"], progress=False, device="cpu", seed=7) | extra


def test_side_by_side_children_share_budget_windows_and_one_table(analysed, tmp_path, dataset):  # noqa: F811
    reference, _ = analysed
    out = tmp_path / "run"
    report = run(from_dict(RunConfig, _settings(reference, dataset, out, select="first bi")))
    state = json.loads((out / "state.json").read_text())
    side = report["side_by_side"]
    rows = {row["model"]: row for row in report["rows"]}
    assert set(rows) >= {"child first", "child bi", "baseline random"}
    assert "rounds" not in "".join(state)  # no growth round was trained
    first, bi = (state[f"child/{m}-ce/eval"] for m in ("first", "bi"))
    # same windows, same budget, and each child keeps what `inherit --select` keeps for l = 4
    assert first["window_starts"] == bi["window_starts"] == state["baseline/random/eval"]["window_starts"]
    assert state["child/first-ce/train"]["tokens"] == state["child/bi-ce/train"]["tokens"] \
        == state["baseline/random/train"]["tokens"]
    kept = {m: json.loads((out / "children" / f"{m}-ce" / "child" / "inheritune.json").read_text())["layers"]
            for m in ("first", "bi")}
    assert kept == {"first": [0, 1, 2, 3], "bi": [0, 1, LAZY, 7]}
    # the table's paired deltas are the paired bootstrap of the two children's window losses
    expected = paired_delta(bi, first, 1000)
    assert side["deltas"]["bi"]["vs_first"]["delta"] == pytest.approx(expected["delta"])
    assert side["deltas"]["bi"]["vs_first"]["ci95"] == pytest.approx(expected["ci95"])
    assert side["before"]["first"] == pytest.approx(state["child/first-ce/before"]["loss"])
    assert state["baseline/random/before"]["loss"] > first["loss"]  # random init, before any training
    losses = {"first": first["loss"], "bi": bi["loss"], "baseline random": state["baseline/random/eval"]["loss"]}
    assert side["best"] == min(losses, key=losses.get)
    text = (out / "report.md").read_text()
    assert "| first | 0-3 | ce |" in text and "| bi | 0-1, 6-7 | ce |" in text
    assert "| baseline random | random init | ce |" in text
    assert ("**Winner: " in text) != ("**No single winner**" in text)


def test_the_verdict_names_a_winner_only_when_every_interval_excludes_zero():
    def entry(sums, tokens=100, flops=1.0):
        return {"eval": {"loss": sum(sums) / (10 * len(sums)), "window_sums": sums, "window_counts": [10] * len(sums)},
                "tokens": tokens, "training_flops": flops, "method": "x"}

    from inheritune.analysis.sidebyside import compare

    clear = {"a": entry([10.0, 11, 12, 13]), "b": entry([20.0, 21, 22, 23])} | {"first": entry([30.0, 31, 32, 33])}
    clear["first"]["method"] = "first"
    ref = entry([1.0, 1, 1, 1])["eval"]
    found = compare(clear, {}, ref, 200)
    assert found["best"] == "a" and verdict(found)[0].startswith("**Winner: a**")
    assert "First-K (first, the paper's choice) loses to a, b." in verdict(found)
    noisy = {"a": entry([10.0, 30, 12, 13]), "first": entry([30.0, 11, 13, 12], flops=2.5)}
    noisy["first"]["method"] = "first"
    lines = verdict(compare(noisy, {}, ref, 200))
    assert lines[0].startswith("**No single winner**") and "cannot separate it from first" in lines[0]
    assert "first 2.50x the training FLOPs of a" in " ".join(lines)


def test_kd_healing_counts_the_teachers_forward_and_is_compared_at_equal_tokens(analysed, tmp_path, dataset):  # noqa: F811
    reference, _ = analysed
    out = tmp_path / "run"
    report = run(from_dict(RunConfig, _settings(reference, dataset, out, select="first", heal="ce kd",
                                                baselines=["kd"], kd_alpha=0.5, kd_temperature=2.0)))
    state = json.loads((out / "state.json").read_text())
    ce, kd = state["child/first-ce/train"], state["child/first-kd/train"]
    assert ce["tokens"] == kd["tokens"]
    child, _ = load_model(str(out / "children" / "first-kd" / "child"))
    teacher, _ = load_model(str(reference))
    per_token = flops_per_token(child, 16)
    assert ce["training_flops"] == pytest.approx(per_token * ce["tokens"])
    # 6N + 12LdT for the child, the teacher's forward (2N + 4LdT: a third of its training FLOPs) on top
    assert kd["training_flops"] == pytest.approx((per_token + flops_per_token(teacher, 16) / 3) * kd["tokens"])
    run_json = json.loads((out / "children" / "first-kd" / "train" / "run.json").read_text())
    assert run_json["teacher"] == str(reference) and run_json["kd_alpha"] == 0.5
    assert "teacher" not in json.loads((out / "children" / "first-ce" / "train" / "run.json").read_text()) or \
        not json.loads((out / "children" / "first-ce" / "train" / "run.json").read_text())["teacher"]
    text = (out / "report.md").read_text()
    assert "equal tokens are not equal compute: kd" in text
    assert "| baseline kd | random init | kd |" in text  # random init, distilled like the kd children
    assert {r["model"] for r in report["rows"]} >= {"child ce", "child kd"}


def test_a_rerun_with_other_data_is_refused_and_deletes_nothing(analysed, tmp_path, dataset, text_dir,  # noqa: F811
                                                                gpt2_tokenizer_dir):
    from inheritune.data.dataset import PrepareConfig, prepare

    reference, _ = analysed
    out = tmp_path / "run"
    run(from_dict(RunConfig, _settings(reference, dataset, out, select="first bi", baselines=[])))
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    other = prepare(PrepareConfig(input=[str(text_dir)], out=str(tmp_path / "other"), tokenizer=str(gpt2_tokenizer_dir),
                                  val_fraction=0.3), progress=False)
    with pytest.raises(UserError, match="data .* -> "):
        run(from_dict(RunConfig, _settings(reference, other, out, select="first bi", baselines=[])))
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    # the same comparison on the other data, in its own folder, trains and scores afresh
    report = run(from_dict(RunConfig, _settings(reference, other, tmp_path / "run-other", select="first bi",
                                                baselines=[])))
    old = json.loads((out / "state.json").read_text())
    new = json.loads((tmp_path / "run-other" / "state.json").read_text())
    assert new["child/first-ce/eval"]["window_starts"] != old["child/first-ce/eval"]["window_starts"] or \
        new["child/first-ce/eval"]["loss"] != old["child/first-ce/eval"]["loss"]
    assert report["config"]["data"] == str(other)


def test_bad_side_by_side_settings_are_refused(analysed, tmp_path, dataset):  # noqa: F811
    reference, _ = analysed
    with pytest.raises(UserError, match="names 'bi' twice"):
        from_dict(RunConfig, _settings(reference, dataset, tmp_path / "r", select="bi first bi"))
    with pytest.raises(UserError, match="unknown --heal 'distil'"):
        from_dict(RunConfig, _settings(reference, dataset, tmp_path / "r", heal="distil"))
    with pytest.raises(UserError, match="--grow continue"):
        from_dict(RunConfig, _settings(reference, dataset, tmp_path / "r", select="first", heal="ce kd",
                                       grow="continue"))
