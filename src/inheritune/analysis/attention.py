"""Measuring attention and blocks on sampled sequences: the metrics of every head and layer (captured with
hooks, reduced at once), their per-layer summary, and the k they recommend for inheritance.

Attention probabilities are captured with hooks on each attention module (eager attention) and reduced to
metrics at once, layer by layer, so no L x N x H x T x T tensor is ever kept."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from inheritune.analysis import metrics
from inheritune.analysis.calibration import DEFAULT_SEQ_LEN, DEFAULT_WINDOWS
from inheritune.analysis.scoring import check_tokenizer_matches
from inheritune.analysis.selection import ranges
from inheritune.data.dataset import TokenData
from inheritune.models.architectures import adapter_for
from inheritune.models.loading import resolve_device
from inheritune.utils.config import option
from inheritune.utils.errors import UserError
from inheritune.utils.progress import progress_bar


@dataclass
class AnalyzeConfig:
    """Lazy-layer diagnosis of a causal LM (metric definitions in PAPER.md §1)."""

    model: str = option("", help="model: HF dir, .gguf, or built-in name (smollm2)")
    data: str = option("", help="prepared dataset dir (its val split is used) or a plain text file")
    out: str = option("", help="output directory for report.json, CSVs and plots")
    n: int = option(100, help="number of sequences (paper: 100)")
    t: int = option(100, help="tokens per sequence (paper: 100)")
    seed: int = option(0, low=0, high=2**32 - 1, help="seed of the sequence choice")
    bos_windows: bool = option(False, help="start every sequence with the tokenizer's BOS (else its document "
                                           "separator), then t - 1 tokens of text, as train --bos-windows does; "
                                           "models trained that way (Gemma) expect it")
    batch_size: int = option(10, help="sequences per forward pass")
    dtype: str = option("float32", help="model dtype: float32 or bfloat16 (metrics are computed in float32+)")
    device: str = option("cpu", help="cpu, cuda or auto (cuda when there is one)")
    tau: list[float] = option([0.9], help="energy thresholds; the first is the main one (e.g. 0.9 0.8 0.85 0.95)")
    eta: float = option(0.9, help="column-mass threshold")
    lazy_tolerance: float = option(0.25, low=0, help="a layer is lazy when MaxRank <= 1 + this; a head when its Rank is")
    uniform_rank_tolerance: float = option(0.25, help="a head is uniform (averaging, as untrained attention does) "
                                                      "when its Rank is within this fraction of the uniform causal "
                                                      "matrix's rank at the same T ...")
    uniform_entropy_tolerance: float = option(0.05, help="... and its normalised entropy within this of the uniform "
                                                         "matrix's (1.0 without a sliding window)")
    sink_threshold: float = option(0.3, low=0, high=1, help="a head is a sink head when its first-token mass exceeds this")
    span: int = option(1, help="n of the angular distance of n-block spans")
    lens_sequences: int = option(10, help="sequences used for the logit-lens loss CE_k, a seeded random subset of "
                                          "the N; 0 = all")
    lazy_run: int = option(2, help="size of the layer group whose mean MaxRank < 2 marks the lazy tail (for the "
                                   "recommendation; the paper's group laziness: floor(AvgRank) = 1)")
    map_layers: list[int] = option([], help="layers whose attention maps are drawn (default: first, middle, "
                                           "laziest, last)")
    removal: str = option("none", help="also measure each block's removal on calibration windows of --data's train "
                                       "split (what inherit --select loss/sleb choose from): loss (the loss without "
                                       "each block, about L/2 passes), sleb (SLEB's iterative elimination too, several "
                                       "hundred passes on 30 blocks); none (default) keeps analyze as fast as before")
    calibration_windows: int = option(DEFAULT_WINDOWS, low=1, help="--removal: calibration windows")
    calibration_t: int = option(DEFAULT_SEQ_LEN, low=2, help="--removal: tokens per calibration window")
    compare: str = option("", help="a second model analysed on the same sequences and drawn on the same axes")
    trust_remote_code: bool = option(False, help="allow model code from the model directory")
    overwrite: bool = option(False, help="replace results in --out that are about another model")
    progress: bool = option(True, help="show progress bars")

    def __post_init__(self):
        self.device = resolve_device(self.device)
        if self.removal not in ("none", "loss", "sleb"):
            raise UserError(f"removal must be none, loss or sleb, not {self.removal!r}")
        if self.lazy_run < 1:
            raise UserError(f"lazy_run must be >= 1, got {self.lazy_run}")
        if self.lens_sequences < 0 or any(i < 0 for i in self.map_layers):
            raise UserError("lens_sequences and map_layers must be >= 0")
        if isinstance(self.tau, (int, float)):
            self.tau = [float(self.tau)]
        if not self.tau or any(not 0.0 < t <= 1.0 for t in self.tau):
            raise UserError(f"tau must be in (0, 1], got {self.tau}")
        if self.uniform_rank_tolerance < 0 or self.uniform_entropy_tolerance < 0:
            raise UserError("uniform_rank_tolerance and uniform_entropy_tolerance must be >= 0")
        if not 0.0 < self.eta <= 1.0:
            raise UserError(f"eta must be in (0, 1], got {self.eta}")
        if self.n < 1 or self.t < 2 or self.batch_size < 1 or self.span < 1:
            raise UserError("n, batch_size and span must be >= 1 and t >= 2")


# -------------------------------------------------------------------------------------------- sequences
def sample_sequences(tokens: np.ndarray, n: int, t: int, seed: int) -> torch.Tensor:
    """N distinct, non-overlapping windows of T tokens, chosen with a seed (same seed, same windows)."""
    available = len(tokens) // t
    if available == 0:
        raise UserError(f"the data holds {len(tokens)} tokens, fewer than one sequence of {t}")
    if n > available:
        raise UserError(f"asked for {n} sequences of {t} tokens, but the data holds only {available}")
    chosen = np.sort(np.random.default_rng(seed).choice(available, size=n, replace=False))
    return torch.from_numpy(np.stack([np.asarray(tokens[i * t:(i + 1) * t], dtype=np.int64) for i in chosen]))


def with_bos(tokens: np.ndarray, n: int, t: int, seed: int, bos: int) -> torch.Tensor:
    """The seeded windows of ``sample_sequences`` with T - 1 text tokens each, behind a BOS column."""
    body = sample_sequences(tokens, n, t - 1, seed)
    return torch.cat([torch.full((n, 1), bos, dtype=body.dtype), body], dim=1)


def bos_of(tokenizer) -> int:
    """The token that starts a sequence under --bos-windows: the tokenizer's BOS, else its EOS (document
    separator), as ``TokenData.bos_id`` chooses."""
    for token in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token is not None:
            return int(token)
    raise UserError("the tokenizer names no BOS or EOS token for --bos-windows")


def load_tokens(data: str, tokenizer) -> tuple[np.ndarray, str]:
    """Token ids to analyse: a prepared dataset's val split, or a text file tokenised with the model's tokenizer."""
    path = Path(data).expanduser()
    if not data or not path.exists():
        raise UserError(f"data not found: {data!r} (give a prepared dataset directory or a text file)")
    if path.is_dir():
        dataset = TokenData(path)
        check_tokenizer_matches(tokenizer, dataset, "the model")
        return dataset.split("val"), f"{path} (val split)"
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text (give a text file or a prepared dataset)") from None
    if not text.strip():
        raise UserError(f"{path} holds no text")
    return np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64), str(path)


# -------------------------------------------------------------------------------------------- capture
def _eager(model) -> None:
    if getattr(model.config, "_attn_implementation", "eager") != "eager":
        try:
            model.set_attn_implementation("eager")
        except (ValueError, AttributeError) as exc:
            raise UserError(f"{type(model).__name__} has no eager attention path, needed to read attention "
                            f"probabilities ({exc})".splitlines()[0]) from None


class _Recorder:
    """Accumulates every metric during the forward passes, from hooks on each block's attention module (the
    attention probabilities) and on the blocks themselves (the residual stream in and out)."""

    def __init__(self, model, adapter, config: AnalyzeConfig, n_layers: int, maps: set[int]):
        self.model, self.adapter, self.config = model, adapter, config
        self.maps = maps
        self.per_layer = [{"rank": [], "mass": [], "entropy": [], "sink": [], "first": []} for _ in range(n_layers)]
        self.bi_sum, self.bi_count = np.zeros(n_layers), 0
        self.lens_sum, self.lens_count = np.zeros(n_layers), 0
        self.last_token: list[list[torch.Tensor]] = [[] for _ in range(n_layers + 1)]
        self.attention_maps: dict[int, np.ndarray] = {}
        self.x_in, self.ids, self.lens_rows = None, None, None  # lens_rows: rows of the batch the lens reads

    def attach(self, blocks) -> list:
        hooks = []
        for index, block in enumerate(blocks):
            hooks.append(self.adapter.attention_module(block).register_forward_hook(self._on_attention(index)))
            hooks.append(block.register_forward_pre_hook(self._on_block_input(index), with_kwargs=True))
            hooks.append(block.register_forward_hook(self._on_block_output(index)))
        return hooks

    def _on_attention(self, index: int):
        def hook(module, args, output):
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if weights is None:
                raise UserError(f"{type(module).__name__} returned no attention probabilities under eager "
                                f"attention; family '{self.model.config.model_type}' cannot be analysed")
            weights = weights.float()
            record = self.per_layer[index]
            record["rank"].append(metrics.energy_rank(weights, self.config.tau).cpu())
            record["mass"].append(metrics.column_mass(weights, self.config.eta).cpu())
            record["entropy"].append(metrics.row_entropy(weights).cpu())
            record["sink"].append(metrics.sink_mass(weights).cpu())
            record["first"].append(metrics.first_token_mass(weights).cpu())
            if index in self.maps and index not in self.attention_maps:
                self.attention_maps[index] = weights[0].mean(0).cpu().numpy()
        return hook

    def _on_block_input(self, index: int):
        def hook(module, args, kwargs):
            self.x_in = args[0] if args else kwargs["hidden_states"]
            if index == 0:
                self.last_token[0].append(self.x_in[:, -1].double().cpu())
        return hook

    def _on_block_output(self, index: int):
        def hook(module, args, output):
            x_out = output[0] if isinstance(output, tuple) else output
            self.bi_sum[index] += float(metrics.block_influence(self.x_in, x_out).sum())
            self.last_token[index + 1].append(x_out[:, -1].double().cpu())
            if len(self.lens_rows):  # the logit lens: what the head makes of the stream after this block
                logits = self.adapter.logits(self.model, x_out[self.lens_rows, :-1]).float()
                targets = self.ids[self.lens_rows, 1:]
                self.lens_sum[index] += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                              targets.reshape(-1), reduction="sum"))
        return hook

    def results(self, span: int) -> dict:
        ranks = [torch.cat(r["rank"]).double() for r in self.per_layer]  # [N, H, n_tau]
        finals = torch.stack([torch.cat(x) for x in self.last_token])  # [L+1, N, D]
        n_layers = len(self.per_layer)
        span = min(span, n_layers)
        # every span n: the distance between the input of block l and the output of block l + n - 1
        by_span = {str(n): [float(metrics.angular_distance(finals[l], finals[l + n]).mean())
                            for l in range(n_layers - n + 1)] for n in range(1, n_layers + 1)}
        angular = by_span[str(span)]
        return {
            "rank_mean": np.stack([r.mean(0).numpy() for r in ranks]),  # [L, H, n_tau]
            "rank_std": np.stack([r.std(0, unbiased=False).numpy() for r in ranks]),
            "mass": np.stack([torch.cat(r["mass"]).double().mean(0).numpy() for r in self.per_layer]),  # [L, H]
            "entropy": np.stack([torch.cat(r["entropy"]).mean(0).numpy() for r in self.per_layer]),
            "sink": np.stack([torch.cat(r["sink"]).mean(0).numpy() for r in self.per_layer]),
            "first": np.stack([torch.cat(r["first"]).mean(0).numpy() for r in self.per_layer]),  # [L, H]
            "block_influence": self.bi_sum / self.bi_count,
            "angular_distance": np.array(angular),
            "angular_distance_by_span": by_span,
            "logit_lens": self.lens_sum / max(self.lens_count, 1),
            "lens_tokens": self.lens_count,
            "uniform": [metrics.uniform_reference(int(self.ids.shape[1]), self.config.tau,
                                                  self.adapter.attention_window(self.model.config, l))
                        for l in range(n_layers)],
            "attention_maps": self.attention_maps,
        }


@torch.inference_mode()
def measure(model, sequences: torch.Tensor, config: AnalyzeConfig, progress: bool = True, lens: bool = True) -> dict:
    """All per-head and per-layer metrics of ``model`` on ``sequences`` ([N, T] token ids); without ``lens`` the
    logit lens (the head over every block's output, the costly part) is skipped."""
    adapter = adapter_for(model.config)
    _eager(model)
    blocks = adapter.block_list(model)
    n_layers, n, t = len(blocks), len(sequences), sequences.shape[1]
    context = getattr(model.config, "max_position_embeddings", None)
    if context and t > context:
        raise UserError(f"t = {t} exceeds the model's context of {context} tokens")
    device = next(model.parameters()).device
    # Head-averaged maps of the first sequence: all layers while small, else only the ones asked for.
    maps = set(config.map_layers) if (config.map_layers or t > 256) else set(range(n_layers))
    recorder = _Recorder(model, adapter, config, n_layers, maps or {0, n_layers // 2, n_layers - 1})
    lens = lens_subset(n, config.lens_sequences, config.seed) if lens else []
    hooks = recorder.attach(blocks)
    try:
        for first in progress_bar(range(0, n, config.batch_size), desc="analyze", unit="batch", disable=not progress):
            batch = sequences[first:first + config.batch_size].to(device)
            rows = [i - first for i in lens if first <= i < first + len(batch)]
            recorder.ids, recorder.lens_rows = batch, torch.tensor(rows, dtype=torch.long, device=device)
            model(batch, logits_to_keep=1)
            recorder.bi_count += batch.numel()
            recorder.lens_count += len(rows) * (t - 1)
    finally:
        for hook in hooks:
            hook.remove()
    return recorder.results(config.span) | {"lens_sequences": lens}


def lens_subset(n: int, count: int, seed: int) -> list[int]:
    """The sequences the logit lens reads: ``count`` of the N chosen with the seed (all when 0 or >= N), so that
    CE_k is measured on a fair sample of the validation text, not on its start."""
    if count <= 0 or count >= n:
        return list(range(n))
    return sorted(int(i) for i in np.random.default_rng([seed, 1]).choice(n, size=count, replace=False))


# -------------------------------------------------------------------------------------------- summary
def summarize(raw: dict, config: AnalyzeConfig) -> dict:
    """Per-layer and per-head tables from the raw measurements, with lazy flags."""
    rank = raw["rank_mean"][..., 0]  # main tau
    rank_std = raw["rank_std"][..., 0]
    top_head = rank.argmax(1)
    n_layers, n_heads = rank.shape
    limit = 1.0 + config.lazy_tolerance
    states = [[metrics.attention_state(rank[l, h], raw["entropy"][l, h], raw["uniform"][l], limit,
                                       config.uniform_rank_tolerance, config.uniform_entropy_tolerance)
               for h in range(n_heads)] for l in range(n_layers)]
    layers = []
    for l in range(n_layers):
        uniform_heads = states[l].count("uniform")
        lazy = bool(rank[l].max() <= limit) and uniform_heads == 0
        layers.append({
            "layer": l,
            "max_rank": float(rank[l].max()),
            "max_rank_std": float(rank_std[l, top_head[l]]),
            "max_rank_by_tau": {str(tau): float(raw["rank_mean"][l, :, i].max()) for i, tau in enumerate(config.tau)},
            "avg_rank": float(rank[l].mean()),
            "avg_mass": float(raw["mass"][l].mean()),
            "entropy": float(raw["entropy"][l].mean()),
            "sink_mass": float(raw["sink"][l].mean()),
            "sink_head_fraction": float((raw["sink"][l] > config.sink_threshold).mean()),
            # position 0's mass among queries that have other keys to choose from (t >= 16), and the share of
            # heads where it exceeds the sink threshold: what the attention tracker follows during training
            "first_token_mass": float(raw["first"][l].mean()),
            "max_first_token_mass": float(raw["first"][l].max()),
            "first_token_sink_heads": float((raw["first"][l] > config.sink_threshold).mean()),
            "rank1_heads": states[l].count("lazy"),
            "uniform_heads": uniform_heads,
            "lazy": lazy,
            # uniform: most heads still average evenly over the keys (untrained attention), which is neither
            # lazy nor attentive; compare max_rank with uniform_rank, the uniform causal matrix's at this T
            "state": "lazy" if lazy else "uniform" if 2 * uniform_heads >= n_heads else "attentive",
            "uniform_rank": raw["uniform"][l]["rank"][0],
            "uniform_entropy": raw["uniform"][l]["entropy"],
            "block_influence": float(raw["block_influence"][l]),
            "angular_distance": float(raw["angular_distance"][l]) if l < len(raw["angular_distance"]) else None,
            "logit_lens_loss": float(raw["logit_lens"][l]),  # CE_k for k = l + 1 blocks
        })
    heads = [{"layer": l, "head": h, "rank": float(rank[l, h]), "rank_std": float(rank_std[l, h]),
              "mass": float(raw["mass"][l, h]), "entropy": float(raw["entropy"][l, h]),
              "sink_mass": float(raw["sink"][l, h]), "rank1": states[l][h] == "lazy", "state": states[l][h],
              "sink_head": bool(raw["sink"][l, h] > config.sink_threshold)}
             for l in range(n_layers) for h in range(n_heads)]
    return {"layers": layers, "heads": heads}


def recommend(layers: list[dict], config: AnalyzeConfig) -> dict:
    """The k to inherit: the prefix before the lazy tail, i.e. before the first group of ``lazy_run`` consecutive
    layers that is lazy by the paper's group definition (floor of the group's mean MaxRank = 1), with the
    paper's L/2 and the logit-lens view alongside."""
    n_layers = len(layers)
    max_rank = [layer["max_rank"] for layer in layers]
    uniform = [l for l, layer in enumerate(layers) if layer.get("state") == "uniform"]
    run = config.lazy_run
    # A group holding a uniform layer is never lazy: averaging attention is untrained, not collapsed.
    start = next((l for l in range(1, n_layers - run + 1) if math.floor(sum(max_rank[l:l + run]) / run) == 1
                  and not set(range(l, l + run)) & set(uniform)), None)
    final_loss = layers[-1]["logit_lens_loss"]
    within = next((l + 1 for l, layer in enumerate(layers) if layer["logit_lens_loss"] <= final_loss + 0.5), n_layers)
    if start is not None:
        k = start
        group = ", ".join(f"{max_rank[l]:.2f}" for l in range(start, start + run))
        reason = (f"layers {start}..{start + run - 1} are the first lazy group of {run} (MaxRank {group}: "
                  f"floor of the mean = 1); inherit the {k} blocks before them")
    else:
        k = max(1, n_layers // 2)
        reason = f"no lazy group of {run} consecutive layers; falling back to the paper's L/2 = {k}"
    if uniform:
        reason += (f". Layers {ranges(uniform)} ({len(uniform)} of {n_layers}) still attend uniformly (untrained "
                   "averaging, neither lazy nor attentive): "
                   + ("the model's attention has not formed, so this analysis cannot locate its lazy layers"
                      if 2 * len(uniform) >= n_layers else "they are read as neither"))
    return {"k": k, "layers": list(range(k)), "method": "lazy-prefix", "reason": reason,
            "paper_default": n_layers // 2, "logit_lens_k_within_0.5_nats": within,
            "lazy_layers": [l for l, layer in enumerate(layers) if layer["lazy"]], "uniform_layers": uniform}


def attention_summary(result: dict) -> dict:
    """The state of a model's attention from its analysis: which layers are lazy, uniform (untrained) or
    attentive, and the share of uniform layers (what ``run`` checks before it trusts a verdict)."""
    layers = result["layers"]
    by_state = {state: [r["layer"] for r in layers if r.get("state") == state] for state in ("lazy", "uniform", "attentive")}
    return {"layers": len(layers), "t": result.get("t"), **by_state, "uniform_share": len(by_state["uniform"]) / max(1, len(layers)),
            "max_rank": [round(r["max_rank"], 3) for r in layers], "entropy": [round(r["entropy"], 4) for r in layers],
            "uniform_rank": [r.get("uniform_rank") for r in layers]}
