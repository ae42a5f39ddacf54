"""Diagnose lazy layers: attention rank, column mass, entropy and sinks per head and layer, block influence,
angular distance and the logit lens per block, a recommended k for inheritance, reports and plots. The measurements live in ``analysis.attention``; this verb samples the sequences, runs them
over each model and writes the report, the CSV tables and the plots.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import time
from pathlib import Path

from inheritune.analysis.attention import (
    AnalyzeConfig,
    bos_of,
    load_tokens,
    measure,
    recommend,
    sample_sequences,
    summarize,
    with_bos,
)
from inheritune.analysis.calibration import measure_removals, report_fields
from inheritune.analysis.plots import draw_analysis
from inheritune.data.dataset import TokenData
from inheritune.data.windows import check_ids
from inheritune.data.tokenizer import tokenizer_identity
from inheritune.models.architectures import adapter_for
from inheritune.models.loading import load_model
from inheritune.utils.config import to_dict
from inheritune.utils.errors import UserError, check_output_dir, remove_stale_staging, replace_dir, staging_name
from inheritune.utils.outputs import ANALYSIS, holds_own_kind, last_good, refuse_over_inputs, writing_staged


def print_table(layers: list[dict], name: str) -> None:
    print(f"\n{name}")
    print(f"{'layer':>5} {'MaxRank':>12} {'unif.':>5} {'mass':>6} {'entropy':>7} {'sink':>6} {'rank1':>5} {'BI':>7} "
          f"{'CE_k':>7}  state")
    for r in layers:
        print(f"{r['layer']:5d} {r['max_rank']:6.2f}±{r['max_rank_std']:5.2f} {r['uniform_rank']:5d} "
              f"{r['avg_mass']:6.2f} {r['entropy']:7.3f} {r['sink_mass']:6.3f} {r['rank1_heads']:5d} "
              f"{r['block_influence']:7.4f} {r['logit_lens_loss']:7.3f}  {r['state']}")
    print("(unif. = the energy rank of uniform causal attention at this T: a layer whose heads sit there with "
          "entropy ~1 has not learnt to attend)")


def _csv(rows: list[dict]) -> bytes:
    flat = [{k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in row.items()} for row in rows]
    handle = io.StringIO(newline="")
    writer = csv.DictWriter(handle, fieldnames=list(flat[0]))
    writer.writeheader()
    writer.writerows(flat)
    return handle.getvalue().encode()


def check_out(config: AnalyzeConfig, model) -> bool:
    """Refuse an --out that is, holds or lies inside an input (the model, --compare, --data), or that holds
    anything but an analysis (a run, a model, a dataset, a user's files: --overwrite never replaces those);
    True when it holds an analysis that this one replaces. Staging folders a killed analyze left go first."""
    out = Path(config.out)
    model_place = config.model if Path(config.model).exists() else model.name_or_path  # a built-in: the cache
    refuse_over_inputs(out, [("the model", model_place), ("--compare", config.compare), ("--data", config.data)])
    remove_stale_staging(out.parent, [out.name])
    replacing = holds_own_kind(out, ANALYSIS, "analyze")
    check_output_dir(out, "report.json", "model", config.model, config.overwrite)
    return replacing


def write_outputs(out: Path, files: dict[str, bytes], replacing: bool) -> None:
    """Every file of an analysis written into a staging folder, then swapped in whole: a full disk or a kill
    leaves the previous analysis (or nothing), never a part of one looking finished."""
    needed = sum(len(data) for data in files.values())
    fallback = last_good(out, replacing, "analysis")
    staging, name = staging_name(out), ""
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        for name, data in files.items():
            (staging / name).write_bytes(data)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)  # first, so that the free space said is what a rerun has
        with writing_staged(f"the analysis's {name or 'folder'}", out / name, needed, fallback):
            raise
    replace_dir(staging, out)


def _analyze_one(name: str, model, tokenizer, sequences, config, progress) -> dict:
    started = time.perf_counter()
    raw = measure(model, sequences, config, progress)
    summary = summarize(raw, config)
    return {"model": name, "model_type": model.config.model_type, "num_layers": len(summary["layers"]),
            "t": int(sequences.shape[1]),
            "num_heads": len(summary["heads"]) // max(1, len(summary["layers"])),
            "parameters": sum(p.numel() for p in model.parameters()), "seconds": round(time.perf_counter() - started, 2),
            "lens_tokens": raw["lens_tokens"],
            "angular_distance_by_span": raw["angular_distance_by_span"], "lens_sequences": raw["lens_sequences"], **summary, "_maps": raw["attention_maps"],
            "_rank_matrix": raw["rank_mean"][..., 0], "_rank_std": raw["rank_std"][..., 0]}


def _check_removal_data(config: AnalyzeConfig) -> None:
    if not (config.data and (Path(config.data) / "meta.json").is_file()):
        raise UserError("--removal measures on a prepared dataset's train split: give --data a dataset made by "
                        "'inheritune data prepare'")


def _measure_removal(main: dict, model, config: AnalyzeConfig, progress: bool) -> None:
    """--removal: each block's removal loss (and SLEB's order) on calibration windows of the dataset's train split,
    merged into the layer rows (layers.csv, report.json) and the model's entry, where inherit --select loss/sleb
    --from-report reads them."""
    _check_removal_data(config)
    measured = measure_removals(model, TokenData(config.data), config.calibration_windows, config.calibration_t,
                                config.seed, config.bos_windows, config.device, sleb=config.removal == "sleb",
                                progress=progress)
    rows, fields = report_fields(measured)
    for row, extra in zip(main["layers"], rows):
        row.update(extra)
    main.update(fields)
    cost = measured["calibration"]
    print(f"block removal on {cost['windows']} x {cost['seq_len']} calibration tokens: {cost['full_passes']:.1f} full "
          f"passes, {cost['seconds']:.0f} s" + (f"; SLEB removes {', '.join(map(str, measured['sleb']['order']))}"
                                               if "sleb" in measured else ""), flush=True)


def analyze(config: AnalyzeConfig, model=None, tokenizer=None, progress: bool | None = None) -> dict:
    """Analyse ``config.model`` (or a given model object with its tokenizer); write the report if ``out``.
    ``progress`` overrides ``config.progress``."""
    progress = config.progress if progress is None else progress
    if config.removal != "none":
        _check_removal_data(config)  # before the attention analysis, not after it
    if model is None:
        if not config.model:
            raise UserError("no model given")
        if config.data and Path(config.data).is_dir():
            TokenData(config.data)  # a damaged dataset fails before the model is loaded
        model, tokenizer = load_model(config.model, dtype=config.dtype, device=config.device,
                                      attn_implementation="eager", trust_remote_code=config.trust_remote_code)
    adapter_for(model.config)
    n_layers = model.config.num_hidden_layers
    bad = [i for i in config.map_layers if i >= n_layers]
    if bad:
        raise UserError(f"--map-layers {bad[0]} is out of range: the model has layers 0-{n_layers - 1}")
    replacing = check_out(config, model) if config.out else False
    tokens, source = load_tokens(config.data, tokenizer)
    if config.bos_windows:
        # a prepared dataset names its own BOS, the one train and evaluate --bos-windows put first
        bos = TokenData(config.data).bos_id() if Path(config.data).is_dir() else bos_of(tokenizer)
        sequences = with_bos(tokens, config.n, config.t, config.seed, bos)
    else:
        sequences = sample_sequences(tokens, config.n, config.t, config.seed)
    check_ids(sequences, model.get_input_embeddings().num_embeddings, source)
    main = _analyze_one(config.model or type(model).__name__, model, tokenizer, sequences, config, progress)
    main["recommendation"] = recommend(main["layers"], config)
    if config.removal != "none":
        _measure_removal(main, model, config, progress)
    results = [main]
    if config.compare:
        other, other_tokenizer = load_model(config.compare, dtype=config.dtype, device=config.device,
                                            attn_implementation="eager", trust_remote_code=config.trust_remote_code)
        if config.out:  # a built-in name's folder is known once loaded
            refuse_over_inputs(Path(config.out), [("--compare", other.name_or_path)])

        if tokenizer_identity(other_tokenizer)["sha256"] != tokenizer_identity(tokenizer)["sha256"]:
            raise UserError(f"{config.compare} uses a different tokenizer than {config.model}; cannot compare "
                            "them on the same sequences")
        results.append(_analyze_one(config.compare, other, other_tokenizer, sequences, config, progress))
    for result in results:
        print_table(result["layers"], f"{result['model']} ({result['num_layers']} layers, tau={config.tau[0]})")
    recommendation = main["recommendation"]
    print(f"\nrecommended k = {recommendation['k']}: {recommendation['reason']} "
          f"(paper default L/2 = {recommendation['paper_default']})")
    report = {
        "config": to_dict(config),
        "data": source,
        "sequences": {"n": config.n, "t": config.t, "seed": config.seed, "bos_windows": config.bos_windows},
        "recommendation": recommendation,
        "models": [{k: v for k, v in r.items() if not k.startswith("_")} for r in results],
    }
    if config.out:
        write_outputs(Path(config.out), {
            "report.json": (json.dumps(report, indent=2) + "\n").encode(),
            "layers.csv": _csv([{"model": r["model"], **row} for r in results for row in r["layers"]]),
            "heads.csv": _csv([{"model": r["model"], **row} for r in results for row in r["heads"]]),
            **draw_analysis(results, config)}, replacing)
        print(f"report, CSVs and plots written to {config.out}")
    report["_results"] = results
    return report


