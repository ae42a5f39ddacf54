"""Peak memory and time of inheriting k of L layers lazily from a multi-shard safetensors reference, vs
loading the whole reference with `from_pretrained` and slicing it.

Run: .venv/bin/python benchmarks/inherit_memory.py [--reference DIR] [--layers 8] [--shard-size 100MB]
Without --reference, SmolLM2-135M (the default asset) is re-saved in shards first. Each method runs in its
own fresh process; peak RSS growth is VmHWM (reset after the imports through /proc/self/clear_refs) minus
the RSS at that point. RSS counts the reference's memory-mapped pages that were touched as well as
allocated memory. (ru_maxrss is not used: Linux carries it over from the parent process across exec.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def measure(method: str, reference: str, layers: str, out: str) -> dict:
    """Run one method in this process and return its peak RSS growth and wall time."""
    import safetensors.torch  # noqa: F401  (imports are part of the baseline, not of the measurement)
    import torch  # noqa: F401
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    from inheritune.inherit import InheritConfig, build_child, inherit, parse_layers

    MODEL_FOR_CAUSAL_LM_MAPPING[type(AutoConfig.from_pretrained(reference))]  # imports the model's code

    baseline = _status_mb("VmRSS")
    _reset_peak()
    started = time.perf_counter()
    if method == "lazy":
        inherit(InheritConfig(reference=reference, layers=layers, out=out, overwrite=True))
    else:
        model = AutoModelForCausalLM.from_pretrained(reference)
        child, _ = build_child(model, parse_layers(layers, model.config.num_hidden_layers))
        child.save_pretrained(out)
    return {"method": method, "seconds": time.perf_counter() - started, "peak_rss_growth_mb": _status_mb("VmHWM") - baseline}


def run_isolated(method: str, reference: str, layers: str, out: str) -> dict:
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import inherit_memory as m; "
            f"print('RESULT' + json.dumps(m.measure({method!r}, {reference!r}, {layers!r}, {out!r})))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", help="sharded safetensors HF directory (default: SmolLM2 re-sharded)")
    parser.add_argument("--layers", default="8")
    parser.add_argument("--shard-size", default="100MB")
    parser.add_argument("--repeats", type=int, default=4, help="runs of each side (even: each goes first as often)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        reference = args.reference
        if reference is None:
            from transformers import AutoModelForCausalLM

            from inheritune.assets.catalog import asset_path

            reference = f"{tmp}/smollm2-sharded"
            AutoModelForCausalLM.from_pretrained(asset_path("smollm2")).save_pretrained(
                reference, max_shard_size=args.shard_size)
        shards = len(list(Path(reference).glob("*.safetensors")))
        size = sum(p.stat().st_size for p in Path(reference).glob("*.safetensors")) / 2**20
        # Each side runs first in turn (the first run of a pair pays for reading the reference into the page
        # cache): lazy, whole, whole, lazy, lazy, whole, ...; every run in its own process.
        runs = {"lazy": [], "whole": []}
        for attempt in range(args.repeats):
            order = ("lazy", "whole") if attempt % 2 == 0 else ("whole", "lazy")
            for method in order:
                runs[method].append(run_isolated(method, reference, args.layers, f"{tmp}/{method}-{attempt}"))
        child = sum(p.stat().st_size for p in Path(f"{tmp}/lazy-0").glob("*.safetensors")) / 2**20
    print(f"reference: {size:.0f} MB in {shards} shards; child ({args.layers} layers): {child:.0f} MB; "
          f"{args.repeats} runs each, alternating which goes first; median [min-max]")
    print("| method | peak RSS growth MB | seconds |")
    print("|---|---|---|")
    medians = {}
    for method, results in runs.items():
        name = "inheritune inherit (lazy, shard by shard)" if method == "lazy" else "from_pretrained + slice"
        memory = [r["peak_rss_growth_mb"] for r in results]
        seconds = [r["seconds"] for r in results]
        medians[method] = (statistics.median(memory), statistics.median(seconds))
        print(f"| {name} | {medians[method][0]:.0f} [{min(memory):.0f}-{max(memory):.0f}] | "
              f"{medians[method][1]:.2f} [{min(seconds):.2f}-{max(seconds):.2f}] |")
    print(f"memory ratio whole / lazy: {medians['whole'][0] / medians['lazy'][0]:.2f}x; "
          f"time ratio whole / lazy: {medians['whole'][1] / medians['lazy'][1]:.2f}x")

if __name__ == "__main__":
    main()
