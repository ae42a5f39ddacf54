"""Validation loss and perplexity on a prepared dataset's fixed validation windows.

Every model evaluated on the same dataset with the same window arguments sees exactly the same tokens, so
losses are comparable; a bootstrap over windows gives the 95% interval a reader needs to judge a gap.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from inheritune.analysis.plots import draw_comparison
from inheritune.analysis.scoring import (
    check_tokenizer_matches,
    paired_delta,
    validation_loss,
)
from inheritune.analysis.zeroshot import zero_shot
from inheritune.data.dataset import TokenData
from inheritune.models.loading import load_model, parse_dtype, resolve_device
from inheritune.utils.config import option, to_dict
from inheritune.utils.errors import UserError, atomic_write, atomic_write_json, check_output_dir, writing
from inheritune.utils.memory import _status_mb
from inheritune.utils.outputs import refuse_over_inputs


@dataclass
class EvalConfig:
    """Validation loss / perplexity of one or more models on the same fixed windows."""

    models: list[str] = option([], help="models to evaluate (HF dirs, .gguf files, built-in names); the first is the reference")
    data: str = option("", help="prepared dataset directory (from 'inheritune data prepare')")
    out: str = option("", help="directory for results.json (optional)")
    seq_len: int = option(512, help="tokens per validation window")
    stride: int = option(0, help="sliding-window stride; 0 = non-overlapping windows")
    max_windows: int = option(64, help="at most this many windows, spread evenly over the val split; 0 = all")
    batch_size: int = option(8, help="windows per forward pass")
    dtype: str = option("float32", help="float32 or bfloat16")
    device: str = option("cpu", help="cpu, cuda or auto (cuda when there is one)")
    bootstrap: int = option(1000, low=100, high=100_000, help="bootstrap resamples for the 95%% interval")
    seed: int = option(0, low=0, high=2**32 - 1, help="seed of the bootstrap")
    tasks: list[str] = option([], help="zero-shot tasks through lm-eval. Offline, built from --data's validation "
                                       "split (not standard benchmarks: they test use of context and word order on "
                                       "held-out text of the same kind): cloze (LAMBADA-style last word of a "
                                       "passage among 4 content words of its length and frequency, chance 25%%, "
                                       "with the best context-free heuristic's score beside it) and word-order "
                                       "(BLiMP-style: a "
                                       "sentence against itself with two adjacent words swapped, chance 50%%). "
                                       "Also local task .yaml files, BIG-bench names (general_knowledge, ..., "
                                       "bigbench:NAME) where its withdrawn 1.0.0 sdist is cached, or lm-eval task "
                                       "names (need a network)")
    limit: int = option(0, low=0, help="at most this many items per task; 0 = all")
    inference: bool = option(True, help="also measure parameters, memory, prefill and decode tokens/s")
    inference_batch: int = option(1, low=1, high=4096, help="batch size of the inference measurement")
    bos_windows: bool = option(False, help="score windows that start with the tokenizer's BOS followed by seq_len "
                                           "stream tokens (as a model trained with --bos-windows saw them)")
    overwrite: bool = option(False, help="replace results in --out that are about other models")
    progress: bool = option(True, help="show progress bars")

    def __post_init__(self):
        self.device = resolve_device(self.device)
        if isinstance(self.models, str):
            self.models = [self.models]
        if self.seq_len < 2:
            raise UserError("seq_len must be at least 2")
        if self.stride < 0 or self.stride > self.seq_len:
            raise UserError(f"stride must be between 0 and seq_len ({self.seq_len}), got {self.stride}")
        if self.batch_size < 1 or self.max_windows < 0:
            raise UserError("batch_size must be >= 1 and max_windows >= 0")
        if self.bootstrap < 100:
            raise UserError(f"bootstrap must be >= 100 resamples for a 95% interval, got {self.bootstrap}")
        if self.bos_windows and self.stride:
            raise UserError("--bos-windows scores whole windows; it does not combine with --stride")
        if self.max_windows == 1:
            raise UserError("max_windows must be 0 (all) or >= 2: intervals are over windows")


def evaluate(config: EvalConfig, progress: bool | None = None) -> list[dict]:
    """Validation loss (and zero-shot accuracy, inference cost) of each model, side by side: prints a table with
    deltas against the first model and writes results.json/.csv/.md and a bar chart when ``out`` is set."""
    progress = config.progress if progress is None else progress
    if not config.models:
        raise UserError("no model given")
    if not config.data:
        raise UserError("no dataset given (--data)")
    data = TokenData(config.data)
    dtype = parse_dtype(config.dtype)
    if config.out:
        refuse_over_inputs(config.out, [("--data", config.data)] + [
            ("a model", m) for m in config.models])
        check_output_dir(Path(config.out), "results.json", "models", [str(m) for m in config.models], config.overwrite)
    results = []
    for name in config.models:
        started = time.perf_counter()
        model, tokenizer = load_model(name, device=config.device)
        check_tokenizer_matches(tokenizer, data, name)
        if config.seq_len > getattr(model.config, "max_position_embeddings", config.seq_len):
            raise UserError(f"seq_len {config.seq_len} exceeds the context of {name} "
                            f"({model.config.max_position_embeddings})")
        result = validation_loss(model, data, config.seq_len, config.stride, config.max_windows, config.batch_size,
                                 config.device, dtype, config.bootstrap, config.seed, progress,
                                 bos_windows=config.bos_windows)
        result.update(model=str(name), parameters=sum(p.numel() for p in model.parameters()))
        if config.tasks:
            result["zero_shot"] = zero_shot(model, tokenizer, config.tasks, config.batch_size, config.limit or None,
                                            config.device, data=data)
        if config.inference:
            path = name if Path(str(name)).is_dir() else None
            result["inference"] = inference_cost(model, config.seq_len, config.inference_batch, device=config.device,
                                                 path=path)
        result["seconds"] = round(time.perf_counter() - started, 2)
        if results:
            result["paired_vs_first"] = paired_delta(result, results[0], config.bootstrap, config.seed)
        results.append(result)
        del model
    text = side_by_side(results)
    print(text)
    if config.out:
        out = Path(config.out)
        # Each file whole or not at all, results.json (what --out is checked by) last: a full disk leaves one line
        # naming the file and the space, and no empty or half-written report that looks finished.
        again = "Free some space and run the same command again."
        with writing("the results folder", out, fallback=again):
            out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "results.md", text + "\n", "the results table", again)
        atomic_write(out / "results.csv", _csv(results), "the results table", again)
        with writing("the comparison plot", out / "comparison.png", fallback=again):
            draw_comparison(results, out / "comparison.png")
        atomic_write_json(out / "results.json", {"config": to_dict(config), "results": results}, "the results", again)
    return results


def _columns(result: dict, reference: dict) -> dict:
    """One flat row of the side-by-side table."""
    row = {"model": result["model"], "parameters": result["parameters"], "val_loss": result["loss"],
           "ci_low": result["loss_ci95"][0], "ci_high": result["loss_ci95"][1], "perplexity": result["perplexity"],
           "delta_loss": result["loss"] - reference["loss"], "tokens": result["tokens"]}
    if result is not reference and "paired_vs_first" in result:
        row["delta_ci_low"], row["delta_ci_high"] = result["paired_vs_first"]["ci95"]
    for task, scores in result.get("zero_shot", {}).items():
        row[f"{task}_acc"] = scores["acc"]
        if task != "average":
            row[f"{task}_acc_stderr"] = scores.get("acc_stderr")
            if scores.get("acc_ci"):
                row[f"{task}_acc_ci_low"], row[f"{task}_acc_ci_high"] = scores["acc_ci"]
            if scores.get("chance") is not None:
                row[f"{task}_acc_chance"] = scores["chance"]
            if scores.get("context_free"):
                row[f"{task}_acc_context_free"] = scores["context_free"]["acc"]
    inference = result.get("inference") or {}
    for key in ("weights_mb", "disk_mb", "peak_extra_mb", "prefill_tokens_per_s", "decode_tokens_per_s"):
        if key in inference:
            row[key] = inference[key]
    return row


def side_by_side(results: list[dict]) -> str:
    """A markdown table of all models, deltas against the first (the reference)."""
    rows = [_columns(r, results[0]) for r in results]
    tasks = [k for k in rows[0] if k.endswith("_acc")]
    head = ["model", "params", "val loss [95% CI]", "ppl", "Δ loss [paired 95% CI]"] + [
        t[:-4] + " %" + (" [95% CI]" if t + "_ci_low" in rows[0] else "") + _levels(rows[0], t) for t in tasks]
    if "prefill_tokens_per_s" in rows[0]:
        head += ["prefill tok/s", "decode tok/s", "weights MB", "peak extra MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for row in rows:
        cells = [row["model"], f"{row['parameters'] / 1e6:.1f}M",
                 f"{row['val_loss']:.4f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]", f"{row['perplexity']:.2f}",
                 f"{row['delta_loss']:+.4f}" + (f" [{row['delta_ci_low']:+.3f}, {row['delta_ci_high']:+.3f}]"
                                                 if "delta_ci_low" in row else "")]
        for task in tasks:
            interval = (f" [{100 * row[task + '_ci_low']:.1f}, {100 * row[task + '_ci_high']:.1f}]"
                        if task + "_ci_low" in row else "")
            cells.append(f"{100 * row[task]:.1f}{interval}")
        if "prefill_tokens_per_s" in row:
            extra = row.get("peak_extra_mb")
            decode = row.get("decode_tokens_per_s")
            cells += [f"{row['prefill_tokens_per_s']:.0f}", "-" if decode is None else f"{decode:.1f}",
                      f"{row['weights_mb']:.0f}", "-" if extra is None else f"{extra:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _levels(row: dict, task: str) -> str:
    """What a task's accuracy is read against: chance, and what guessing without reading the passage scores on the
    same items (the best of the context-free heuristics)."""
    levels = [f"chance {100 * row[task + '_chance']:.0f}"] if task + "_chance" in row else []
    if task + "_context_free" in row:
        levels.append(f"best context-free heuristic {100 * row[task + '_context_free']:.1f}")
    return f" ({', '.join(levels)})" if levels else ""


def _csv(results: list[dict]) -> str:
    rows = [_columns(r, results[0]) for r in results]
    fields = list(dict.fromkeys(k for row in rows for k in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


@torch.inference_mode()
def inference_cost(model, seq_len: int = 256, batch_size: int = 1, new_tokens: int = 32, device: str = "cpu",
                   path: str | Path | None = None) -> dict:
    """Parameters, weight memory, size on disk, peak extra memory, prefill and decode tokens/s at the stated
    batch and length (after one warm-up pass)."""
    model.eval()
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocab, (batch_size, seq_len), generator=torch.Generator().manual_seed(0)).to(device)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    model(ids[:, :8])  # warm-up
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = _status_mb("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset the RSS high-water mark
        except OSError:
            base = None
    sync = torch.cuda.synchronize if cuda else (lambda: None)  # CUDA runs async: wait before reading the clock
    sync()
    started = time.perf_counter()
    model(ids)
    sync()
    prefill = time.perf_counter() - started
    pad = model.config.eos_token_id if isinstance(model.config.eos_token_id, int) else 0

    def generate(count: int) -> float:
        sync()
        began = time.perf_counter()
        model.generate(ids, max_new_tokens=count, min_new_tokens=count, do_sample=False, pad_token_id=pad)
        sync()
        return time.perf_counter() - began

    # Decode speed from the difference of two generations (1 and new_tokens tokens): both include the same
    # prefill, so it cancels instead of being subtracted from one noisy measurement of another.
    one, many = generate(1), generate(new_tokens)
    decode = batch_size * (new_tokens - 1) / (many - one) if many > one else None
    if cuda:
        extra = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        peak = _status_mb("VmHWM")
        extra = (peak - base) if (peak is not None and base is not None) else None
    disk = None
    if path is not None and Path(path).is_dir():
        disk = sum(p.stat().st_size for p in Path(path).glob("*.safetensors")) / 2**20
    return {"parameters": sum(p.numel() for p in model.parameters()), "weights_mb": weights / 2**20,
            "disk_mb": disk, "peak_extra_mb": extra, "batch_size": batch_size, "seq_len": seq_len,
            "prefill_tokens_per_s": batch_size * seq_len / prefill,
            "decode_tokens_per_s": decode, "device": str(device)}
