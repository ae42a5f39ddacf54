"""Layer selection (inherit --from-report --select METHOD:K) on a tiny GPT-2 whose blocks are built so that each
method has exactly one right answer."""

import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from inheritune.analysis.attention import AnalyzeConfig
from inheritune.analysis.selection import parse_select, select_layers
from inheritune.analyze import analyze
from inheritune.cli import main as cli_main
from inheritune.inherit import InheritConfig, inherit
from inheritune.utils.errors import UserError

IDENTITY = (2, 3, 4)  # blocks that leave the stream unchanged: Block Influence 0, and span 2-4 has angle 0
QUIET = 5             # a block whose output is scaled down: the smallest influence of the working blocks
LAZY = 6              # every head attends to position 0 only (rank-1 attention), with a large output


def _constructed_gpt2():
    torch.manual_seed(0)
    config = GPT2Config(n_layer=8, n_embd=32, n_head=4, vocab_size=50257, n_positions=64, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        model.transformer.wpe.weight[0].zero_()
        model.transformer.wpe.weight[0, 0] = 30.0  # position 0 stands out along dimension 0
        for l, block in enumerate(model.transformer.h):
            if l in IDENTITY:
                for proj in (block.attn.c_proj, block.mlp.c_proj):
                    proj.weight.zero_()
                    proj.bias.zero_()
            elif l == QUIET:
                block.attn.c_proj.weight.mul_(0.05)
                block.mlp.c_proj.weight.mul_(0.05)
            elif l == LAZY:
                block.attn.c_attn.weight[:, :64].zero_()  # queries constant, keys read dimension 0
                block.attn.c_attn.bias[:64].zero_()
                for head in range(4):
                    block.attn.c_attn.bias[head * 8] = 40.0
                    block.attn.c_attn.weight[0, 32 + head * 8] = 1.0
                block.attn.c_proj.weight.mul_(20.0)
                block.mlp.c_proj.weight.mul_(20.0)
    return model


@pytest.fixture
def analysed(tmp_path, dataset, gpt2_tokenizer):
    model = _constructed_gpt2()
    reference = tmp_path / "ref"
    model.save_pretrained(reference)
    gpt2_tokenizer.save_pretrained(reference)
    analyze(AnalyzeConfig(model=str(reference), data=str(dataset), n=6, t=48, out=str(tmp_path / "analysis")),
            progress=False)
    report = tmp_path / "analysis" / "report.json"
    layers = json.loads(report.read_text())["models"][0]["layers"]
    bi = [layer["block_influence"] for layer in layers]
    # the construction did what it says: zero influence, then the quiet block, then the rest; one lazy block
    assert max(bi[l] for l in IDENTITY) < 1e-6 < bi[QUIET] < min(bi[l] for l in (0, 1, LAZY, 7))
    assert [l for l, layer in enumerate(layers) if layer["lazy"]] == [LAZY]
    return reference, report


@pytest.mark.parametrize("select, expected", [
    ("first:4", [0, 1, 2, 3]),
    ("bi:4", [0, 1, LAZY, 7]),            # ShortGPT keeps the lazy block: its influence is high
    ("angular:5", [0, 1, 5, 6, 7]),       # the 3-block span with the smallest angle is the identity span 2-4
    ("drop-lazy:4", [0, 1, QUIET, 7]),    # the lazy block goes first, then the three of zero influence
    ("drop-lazy:7", [0, 1, 2, 3, 4, 5, 7]),
    ("spread:4", [0, 2, 5, 7]),
])
def test_each_method_keeps_the_blocks_it_should(analysed, tmp_path, select, expected):
    reference, report = analysed
    child = inherit(InheritConfig(reference=str(reference), from_report=str(report), select=select,
                                  out=str(tmp_path / "child")))
    record = json.loads((child / "inheritune.json").read_text())
    assert record["layers"] == expected
    assert record["selection"]["method"] == select.split(":")[0] and record["selection"]["layers"] == expected
    assert record["selection"]["reason"] in (child / "README.md").read_text()


def test_first_and_spread_need_no_report_and_the_rest_refuse_without_one(tmp_path, tiny_model_dir):
    child = inherit(InheritConfig(reference=str(tiny_model_dir), select="first:1", out=str(tmp_path / "a")))
    assert json.loads((child / "inheritune.json").read_text())["layers"] == [0]
    assert select_layers("spread", 3, 30)["layers"] == [0, 14, 29]
    assert select_layers("spread", 1, 30)["layers"] == [0]
    with pytest.raises(UserError, match="--from-report"):
        InheritConfig(reference=str(tiny_model_dir), select="bi:1", out=str(tmp_path / "b"))
    for bad in ("bi", "bi:0", "best:3", "bi:x", "first:-1"):
        with pytest.raises(UserError, match="METHOD:K|K must be"):
            parse_select(bad)
    with pytest.raises(UserError, match="not both"):
        InheritConfig(reference=str(tiny_model_dir), select="first:1", layers="1")
    with pytest.raises(UserError, match="cannot keep 3 blocks"):
        select_layers("first", 3, 2)


def test_select_errors_are_one_line_from_the_cli(tmp_path, tiny_model_dir, capsys):
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"recommendation": {"k": 1}}))  # no per-layer table
    code = cli_main(["inherit", str(tiny_model_dir), "--from-report", str(report), "--select", "bi:1",
                     "--out", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "per-layer table" in err[0]
    assert not (tmp_path / "c").exists()


def test_the_angular_distances_of_every_span_are_zero_exactly_over_the_identity_blocks(analysed):
    """An off-by-one in the spans (a block too many or too few) moves where the zeros are: checked span by span,
    not only through the one choice where the identity blocks tie."""
    _, report = analysed
    spans = json.loads(report.read_text())["models"][0]["angular_distance_by_span"]
    for n in (1, 2, 3, 4):
        zero = [start for start, d in enumerate(spans[str(n)]) if d < 1e-4]
        expected = [start for start in range(8 - n + 1) if all(l in IDENTITY for l in range(start, start + n))]
        assert zero == expected, (n, spans[str(n)])
        assert len(spans[str(n)]) == 8 - n + 1
    assert select_layers("angular", 6, 8, {"layers": [{}] * 8, "angular_distance_by_span": spans})["layers"] == \
        [0, 1, 4, 5, 6, 7]


def test_a_report_of_another_layer_count_is_refused_through_select(analysed, tmp_path, gpt2_tokenizer):
    reference, report = analysed
    smaller = GPT2LMHeadModel(GPT2Config(n_layer=6, n_embd=32, n_head=4, vocab_size=50257, n_positions=64))
    smaller.save_pretrained(reference)  # the same folder now holds a 6-layer model; the report analysed 8
    with pytest.raises(UserError, match="the report analyses 8 layers, the reference has 6"):
        inherit(InheritConfig(reference=str(reference), from_report=str(report), select="bi:4",
                              out=str(tmp_path / "child")))
    assert not (tmp_path / "child").exists()


def test_ties_in_block_influence_break_alike_in_bi_and_drop_lazy():
    layers = [{"block_influence": bi, "lazy": False} for bi in (0.5, 0.1, 0.1, 0.5, 0.1, 0.9, 0.5)]
    report = {"layers": layers}
    for k in range(1, 8):
        assert select_layers("bi", k, 7, report)["layers"] == select_layers("drop-lazy", k, 7, report)["layers"], k
    assert select_layers("bi", 5, 7, report)["layers"] == [0, 1, 3, 5, 6]  # of the tied 0.1s the earliest stays


@pytest.mark.parametrize("init", ["distil", "hybrid-stacking", "half-width", "random"])
def test_select_with_an_init_that_ignores_it_is_refused(analysed, tmp_path, init):
    reference, report = analysed
    with pytest.raises(UserError, match=f"--init {init} does not copy the blocks --select chooses"):
        inherit(InheritConfig(reference=str(reference), from_report=str(report), select="bi:4", init=init,
                              out=str(tmp_path / "child")))
    assert not (tmp_path / "child").exists()
    stacked = inherit(InheritConfig(reference=str(reference), from_report=str(report), select="bi:2",
                                    init="stacking", out=str(tmp_path / "stacked")))
    record = json.loads((stacked / "inheritune.json").read_text())
    chosen = record["selection"]["layers"]
    assert len(chosen) == 2 and record["layers"] == chosen + chosen  # stacking applies the choice: recorded


def test_run_select_grows_children_of_the_blocks_inherit_select_keeps(analysed, tmp_path, dataset):
    """Every round of `run --select bi` keeps exactly the blocks `inherit --from-report <the run's analysis>
    --select bi:l` keeps for its l; the report says which and why; another --select in the same folder is refused."""
    from inheritune.run import RunConfig, run
    from inheritune.utils.config import from_dict

    reference, _ = analysed
    settings = dict(reference=str(reference), data=str(dataset), out=str(tmp_path / "run"), select="bi", start="4",
                    step=2, max_rounds=2, steps=2, tolerance=-100.0, seq_len=16, micro_batch_size=4, eval_windows=4,
                    eval_interval=0, analyze_n=6, analyze_t=48, compare_analysis=False, baselines=[],
                    progress=False, device="cpu")
    report = run(from_dict(RunConfig, settings))
    analysis = tmp_path / "run" / "analysis" / "report.json"
    assert [r["layers"] for r in report["rounds"]] == [4, 6]
    for r in report["rounds"]:
        alone = inherit(InheritConfig(reference=str(reference), from_report=str(analysis), select=f"bi:{r['layers']}",
                                      out=str(tmp_path / f"alone-{r['layers']}")))
        expected = json.loads((alone / "inheritune.json").read_text())["layers"]
        child = tmp_path / "run" / "rounds" / r["name"] / "child"
        assert json.loads((child / "inheritune.json").read_text())["layers"] == r["blocks"] == expected
        assert r["selection"]["method"] == "bi" and r["selection"]["reason"] in (child / "README.md").read_text()
    assert report["rounds"][0]["blocks"] == [0, 1, LAZY, 7]  # the constructed influence decides, not the order
    text = (tmp_path / "run" / "report.md").read_text()
    assert "Blocks kept (bi; healed by ce): round-0-l4: 0-1, 6-7 (the 4 blocks of highest Block Influence" in text
    with pytest.raises(UserError, match=r"select \[.bi.\] -> \[.first.\]"):
        run(from_dict(RunConfig, {**settings, "select": "first"}))
    with pytest.raises(UserError, match="METHOD:K with METHOD one of"):
        from_dict(RunConfig, {**settings, "select": "best"})


def test_loss_and_sleb_from_a_report_that_carries_the_calibration(analysed, tmp_path, dataset):
    """The measurement written into an analysis report (as analyze writes it) is what inherit --from-report reads:
    a block that leaves the stream unchanged costs nothing to remove (in a random model other removals may even lower
    the loss), and the measured losses and SLEB's order decide what is kept."""
    from inheritune.analysis.calibration import measure_removals, report_fields
    from inheritune.data.dataset import TokenData

    reference, report = analysed
    measured = measure_removals(_constructed_gpt2(), TokenData(dataset), windows=4, seq_len=16, sleb=True)
    deltas = [measured["removal_loss"][l] - measured["reference_loss"] for l in range(8)]
    assert max(abs(deltas[l]) for l in IDENTITY) < 1e-6 < min(abs(deltas[l]) for l in (0, 1, QUIET, LAZY, 7))
    full = json.loads(report.read_text())
    rows, fields = report_fields(measured)
    for row, extra in zip(full["models"][0]["layers"], rows):
        row.update(extra)
    full["models"][0].update(fields)
    with_calibration = tmp_path / "report-calibrated.json"
    with_calibration.write_text(json.dumps(full))
    for select, expected in (("sleb:4", sorted(measured["sleb"]["order"][4:] + [measured["sleb"]["last"]])),
                             ("loss:4", sorted(sorted(range(8), key=lambda l: -deltas[l])[:4]))):
        child = inherit(InheritConfig(reference=str(reference), from_report=str(with_calibration), select=select,
                                      out=str(tmp_path / select.replace(":", "-"))))
        record = json.loads((child / "inheritune.json").read_text())
        assert record["layers"] == record["selection"]["layers"] == expected
        assert "4 windows of 16 tokens of the train split" in record["selection"]["reason"]
        assert record["selection"]["reason"] in (child / "README.md").read_text()
