"""`run --select first bi ...` and `--heal ce kd`: several children side by side on the same windows, one table
with paired intervals, a verdict that follows the numbers, and KD's cost counted with the teacher's forward."""

import json

import pytest
from test_selection import LAZY, analysed  # noqa: F401 (analysed: the constructed reference and its analysis)

from inheritune.analysis.scoring import paired_delta, validation_loss
from inheritune.analysis.sidebyside import verdict
from inheritune.data.dataset import TokenData
from inheritune.models.loading import load_model
from inheritune.run import RunConfig, run
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
    # the verdict these window losses call for: a winner only when every other model is separated from the best
    evals = {"first": first, "bi": bi, "baseline random": state["baseline/random/eval"]}
    tied = [n for n in evals if n != side["best"] and paired_delta(evals[n], evals[side["best"]], 1000)["ci95"][0] <= 0]
    expected = (f"**No single winner**: {side['best']} has the lowest val loss ({losses[side['best']]:.4f}), but the "
                f"windows cannot separate it from {', '.join(tied)} (" if tied else
                f"**Winner: {side['best']}** (val loss {losses[side['best']]:.4f}): every other model is worse")
    assert expected in text and ("**Winner: " in text) == (not tied)
    # a damaged child record on re-entry: one line naming the file, and the run's files stay as they were
    record = out / "children" / "bi-ce" / "child" / "inheritune.json"
    record.write_text('{"layers": [0, 1,')
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "state.json"}
    with pytest.raises(UserError, match=r"inheritune.json \(the cut child's record\) is damaged"):
        run(from_dict(RunConfig, _settings(reference, dataset, out, select="first bi")))
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "state.json"} == files


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


def _scored(sums, method="x", heal="ce", flops=1.0):
    """A model as compare() sees it: window losses of 10 tokens each on four shared windows."""
    return {"eval": {"loss": sum(sums) / 40, "loss_ci95": [0.0, 9.9], "window_sums": sums, "window_counts": [10] * 4},
            "tokens": 100, "training_flops": flops, "method": method, "heal": heal}


def test_each_model_is_compared_with_first_k_healed_the_same_way():
    """--select first bi --heal ce kd: a kd child against first-K by KD, a ce one against first-K by CE, baselines
    too (random by CE, kd by KD). Before the fix every model was compared with first-K by CE."""
    from inheritune.analysis.sidebyside import compare, table

    children = {"first+ce": _scored([50.0, 51, 52, 53], "first"), "bi+ce": _scored([30.0, 31, 32, 34], "bi"),
                "first+kd": _scored([40.0, 42, 41, 43], "first", "kd", 2.0),
                "bi+kd": _scored([20.0, 22, 21, 23], "bi", "kd", 2.0)}
    baselines = {"random": _scored([70.0, 70, 71, 72], heal="ce"),
                 "kd": _scored([60.0, 61, 60, 62], heal="kd", flops=2.0)}
    found = compare(children, baselines, _scored([1.0, 1, 1, 1])["eval"], 200)
    deltas = found["deltas"]
    assert {n: d["anchor"] for n, d in deltas.items()} == {
        "first+ce": None, "bi+ce": "first+ce", "first+kd": None, "bi+kd": "first+kd", "baseline random": "first+ce",
        "baseline kd": "first+kd"}
    # by hand: (sum of the model's windows - sum of its first-K's) / 40 tokens
    assert deltas["bi+kd"]["vs_first"]["delta"] == pytest.approx((86 - 166) / 40)
    assert deltas["bi+ce"]["vs_first"]["delta"] == pytest.approx((127 - 206) / 40)
    assert deltas["baseline kd"]["vs_first"]["delta"] == pytest.approx((243 - 166) / 40)
    assert deltas["first+kd"]["vs_first"] is None and found["first"] == "first+ce"
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[5] for line in table(found).splitlines()[2:]}
    assert rows["bi+kd"].startswith("-2.0000 [") and rows["baseline kd"].startswith("+1.9250 [")
    assert rows["first+kd"] == "-" and "other healing" not in table(found)
    lines = verdict(found)
    assert "First-K (first+ce, the paper's choice) loses to bi+ce; beats baseline random." in lines
    assert "First-K (first+kd, healed by kd) loses to bi+kd; beats baseline kd." in lines


def test_without_first_k_healed_the_same_way_the_anchor_is_named():
    """--heal kd alone: the CE baseline can only be paired with first-K by KD, and its cell and the verdict say so;
    with no first-K at all there is nothing to pair with."""
    from inheritune.analysis.sidebyside import compare, table

    children = {"first": _scored([40.0, 42, 41, 43], "first", "kd"), "bi": _scored([20.0, 22, 21, 23], "bi", "kd")}
    found = compare(children, {"random": _scored([70.0, 70, 71, 72])}, _scored([1.0, 1, 1, 1])["eval"], 200)
    assert found["deltas"]["baseline random"]["anchor"] == "first"
    assert found["deltas"]["baseline random"]["vs_first"]["delta"] == pytest.approx((283 - 166) / 40)
    row = next(line for line in table(found).splitlines() if line.startswith("| baseline random |"))
    assert row.split(" | ")[5].startswith("+2.9250 [") and row.split(" | ")[5].endswith(" vs first (kd, other healing)")
    assert "First-K (first, the paper's choice) loses to bi; beats baseline random (healed by ce)." in verdict(found)
    alone = compare({"bi": children["bi"]}, {"random": _scored([70.0, 70, 71, 72])}, _scored([1.0] * 4)["eval"], 200)
    assert alone["first"] is None and all(d["vs_first"] is None for d in alone["deltas"].values())


def test_kd_healing_counts_the_teachers_forward_and_is_compared_at_equal_tokens(analysed, tmp_path, dataset):  # noqa: F811
    reference, _ = analysed
    out = tmp_path / "run"
    report = run(from_dict(RunConfig, _settings(reference, dataset, out, select="first", heal="ce kd",
                                                baselines=["kd"], kd_alpha=0.5, kd_temperature=2.0)))
    state = json.loads((out / "state.json").read_text())
    ce, kd = state["child/first-ce/train"], state["child/first-kd/train"]
    assert ce["tokens"] == kd["tokens"]
    # Counted by hand for test_selection's GPT-2 (width d = 32, 64 positions, vocabulary 50257, tied head) at
    # T = 16: per token 6 N + 12 L d T, N = the parameters outside the token embedding (the position table is
    # among them, as flops_per_token counts it; the tied head once), for the 4-block child; KD adds the 8-block
    # teacher's forward, 2 N + 4 L d T. 3 steps of 4 rows of 16 tokens.
    d, T = 32, 16
    # one block: ln_1, c_attn (q, k, v), attn c_proj, ln_2, c_fc, mlp c_proj, each weight plus bias
    block = 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + 2 * d + (d * 4 * d + 4 * d) + (4 * d * d + d)
    assert block == 12_704
    outside = 64 * d + 2 * d + 50_257 * d  # positions, final norm, the tied head
    child = 6 * (4 * block + outside) + 12 * 4 * d * T
    teacher_forward = 2 * (8 * block + outside) + 4 * 8 * d * T
    assert ce["tokens"] == kd["tokens"] == 3 * 4 * 16
    assert ce["training_flops"] == pytest.approx(child * 192, rel=1e-12)
    assert kd["training_flops"] == pytest.approx((child + teacher_forward) * 192, rel=1e-12)
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
    trained = tmp_path / "run-other" / new["child/first-ce/train"]["model_dir"]  # kept relative to the run
    assert json.loads((trained.parent / "run.json").read_text())["data"] == str(other)  # trained on it
    assert (trained / "model.safetensors").read_bytes() != \
        (out / old["child/first-ce/train"]["model_dir"] / "model.safetensors").read_bytes()
    # and scored on it: its loss is its final model's on the other data's windows, not on the first data's
    model, _ = load_model(str(trained))
    on = {str(d): validation_loss(model, TokenData(d), 16, 0, 4, 4, "cpu", keep_windows=True)
          for d in (other, dataset)}
    assert new["child/first-ce/eval"]["loss"] == pytest.approx(on[str(other)]["loss"], rel=1e-6)
    assert new["child/first-ce/eval"]["window_starts"] == on[str(other)]["window_starts"]
    assert abs(on[str(other)]["loss"] - on[str(dataset)]["loss"]) > 1e-3
    assert report["side_by_side"]["deltas"]["bi"]["vs_first"]["delta"] == pytest.approx(
        new["child/bi-ce/eval"]["loss"] - on[str(other)]["loss"], rel=1e-6)


def test_bad_side_by_side_settings_are_refused(analysed, tmp_path, dataset):  # noqa: F811
    reference, _ = analysed
    with pytest.raises(UserError, match="names 'bi' twice"):
        from_dict(RunConfig, _settings(reference, dataset, tmp_path / "r", select="bi first bi"))
    with pytest.raises(UserError, match="unknown --heal 'distil'"):
        from_dict(RunConfig, _settings(reference, dataset, tmp_path / "r", heal="distil"))
    with pytest.raises(UserError, match="--grow continue"):
        from_dict(RunConfig, _settings(reference, dataset, tmp_path / "r", select="first", heal="ce kd",
                                       grow="continue"))
