"""Cut a child model out of a reference: the first k blocks (the Inheritune recipe), chosen blocks, the
paper's sub-module ablations and warm-start baselines. The child is built by the model's own class from a
consistent config (fresh, seeded init), then the inherited tensors are copied in, read shard by shard from
safetensors when the reference is on disk, so peak memory is about the child plus one tensor at a time.
"""

from __future__ import annotations

import copy
import datetime
import json
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from inheritune import __version__
from inheritune.analysis.calibration import DEFAULT_SEQ_LEN, DEFAULT_WINDOWS, as_report, measure_removals
from inheritune.analysis.scoring import check_tokenizer_matches
from inheritune.analysis.selection import MEASURED, NEEDS_REPORT, parse_select, read_report_model, select_layers
from inheritune.assets.sources import resolve_model_path
from inheritune.data.dataset import TokenData
from inheritune.models.architectures import Adapter, adapter_for
from inheritune.models.loading import load_model, parse_dtype
from inheritune.models.weights import open_reference
from inheritune.utils.cards import child_card, write_card
from inheritune.utils.config import option, to_dict
from inheritune.utils.errors import UserError, remove_stale_staging, replace_dir, staging_name
from inheritune.utils.memory import payload_bytes
from inheritune.utils.outputs import CHILD, holds_own_kind, last_good, refuse_over_inputs, writing_staged

# Which parts of each block, and which parts outside the blocks, each copy mode inherits.
COPY_MODES = {
    "full": ({"attention", "mlp", "norm"}, {"embed", "pos_embed", "final_norm", "head", "other"}),
    "authors": ({"attention", "mlp", "norm"}, {"embed", "head", "other"}),  # wpe and final norm left fresh
    "attention": ({"attention"}, {"embed", "pos_embed", "final_norm", "head", "other"}),
    "mlp": ({"mlp"}, {"embed", "pos_embed", "final_norm", "head", "other"}),
    "attention-mlp": ({"attention", "mlp"}, {"embed", "pos_embed", "final_norm", "head", "other"}),
}
INITS = ("inherit", "random", "stacking", "hybrid-stacking", "half-width", "distil")


@dataclass
class InheritConfig:
    """Cut a child out of a reference model."""

    reference: str = option("", help="reference model: HF dir (sharded safetensors read lazily), .gguf, built-in name")
    out: str = option("", help="output directory of the child (an HF model directory)")
    layers: str = option("", help="'12' = first 12 blocks; '0-7,10,12-13' = those blocks in that order; "
                                  "default: half the reference's blocks (the paper's L/2)")
    from_report: str = option("", help="take the layers from an 'inheritune analyze' report.json (its recommended "
                                       "k, or the blocks --select chooses from its measurements)")
    select: str = option("", help="METHOD:K, which K blocks to keep: first (Inheritune), bi (highest Block "
                                  "Influence: ShortGPT), angular (drop the span closest in angle: Gromov et al.), "
                                  "drop-lazy (drop the lazy blocks, then lowest BI), spread (evenly spaced), loss "
                                  "(the K whose single removal raises the loss most: Shortened LLaMA), sleb (what "
                                  "SLEB's iterative elimination leaves); bi, angular and drop-lazy need --from-report, "
                                  "loss and sleb --from-report or --data")
    data: str = option("", help="--select loss:K or sleb:K without a report that measured them: measure on the spot "
                                "on calibration windows of this prepared dataset's train split")
    calibration_windows: int = option(DEFAULT_WINDOWS, low=1, help="--data: calibration windows (SLEB on 30 blocks "
                                                                   "makes about 165 passes over them)")
    calibration_t: int = option(DEFAULT_SEQ_LEN, low=2, help="--data: tokens per calibration window")
    bos_windows: bool = option(False, help="--data: start every calibration window with the tokenizer's BOS (for "
                                           "models trained that way, such as Gemma-3)")
    init: str = option("inherit", help="inherit | random | stacking | hybrid-stacking | half-width | distil")
    copy: str = option("full", help="what inherited blocks bring: full | authors (fresh positional embeddings and "
                                    "final norm) | attention | mlp | attention-mlp (no norms)")
    depth: int = option(0, help="stacking: depth of the stacked child (default twice the base; an odd depth takes "
                                "the first DEPTH blocks of the stack)")
    seed: int = option(0, low=0, high=2**32 - 1, help="seed of the fresh initialisation of everything not copied")
    dtype: str = option("float32", help="dtype of the saved child")
    overwrite: bool = option(False, help="replace a child that inherit cut in --out (only that: another model, a "
                                         "run or other files there are refused)")
    trust_remote_code: bool = option(False, help="allow model code from the reference directory")

    def __post_init__(self):
        if self.init not in INITS:
            raise UserError(f"unknown init '{self.init}'; choose one of {', '.join(INITS)}")
        if self.copy not in COPY_MODES:
            raise UserError(f"unknown copy mode '{self.copy}'; choose one of {', '.join(COPY_MODES)}")
        if self.layers and (self.from_report or self.select):
            raise UserError(f"give either --layers or {'--select' if self.select else '--from-report'}, not both")
        if self.select:
            method, k = parse_select(self.select)
            if method in NEEDS_REPORT and not self.from_report and not (method in MEASURED and self.data):
                raise UserError(f"--select {self.select} chooses from a measurement: pass the reference's analysis "
                                "report with --from-report (made by 'inheritune analyze')")
            if self.init in INITS_WITHOUT_SELECTION:
                raise UserError(f"--init {self.init} does not copy the blocks --select chooses ("
                                f"{INITS_WITHOUT_SELECTION[self.init]}): use --select with --init inherit or stacking")
        if self.depth < 0 or (self.depth and self.init != "stacking"):
            raise UserError("--depth is a positive number, and only for --init stacking")


# Inits whose blocks do not come from the chosen ones: --select with them would record a choice never applied.
INITS_WITHOUT_SELECTION = {"random": "every block is fresh", "half-width": "it keeps every block, narrowed",
                           "hybrid-stacking": "it repeats the first blocks", "distil": "it takes every other block"}


def parse_layers(spec: str | int | list[int], n_layers: int, allow_repeats: bool = False) -> list[int]:
    """'12' -> [0..11]; '0-7,10,12-13' -> that list in that order. Validated against the reference depth."""
    if isinstance(spec, int):
        spec = str(spec)
    if isinstance(spec, (list, tuple)):
        layers = [int(i) for i in spec]
    else:
        text = spec.replace(" ", "")
        try:
            if text.isdigit():
                count = int(text)
                if count == 0:
                    raise UserError("cannot inherit 0 layers: a child needs at least one block")
                if count > n_layers:
                    raise UserError(f"cannot inherit {count} layers from a reference with {n_layers}")
                return list(range(count))
            layers = []
            pieces = text.split(",")
            if "" in pieces:
                raise UserError(f"layer spec '{spec}' has an empty item between commas")
            for piece in pieces:
                low, dash, high = piece.partition("-")
                start, end = int(low), int(high) if dash else int(low)
                if end < start:
                    raise UserError(f"layer range '{piece}' runs backwards")
                layers.extend(range(start, end + 1))
        except ValueError:
            raise UserError(f"cannot read layer spec '{spec}': use '12', or a list like '0-7,10,12-13'") from None
    if not layers:
        raise UserError("the layer spec selects no layers")
    bad = [i for i in layers if not 0 <= i < n_layers]
    if bad:
        raise UserError(f"layer index {bad[0]} is out of range: the reference has layers 0-{n_layers - 1}")
    if not allow_repeats and len(set(layers)) != len(layers):
        dup = next(i for i in layers if layers.count(i) > 1)
        raise UserError(f"layer {dup} is selected twice (only the stacking inits repeat layers)")
    return layers


def layers_from_report(path: str | Path) -> list[int]:
    """The recommended layers of an analysis report (``recommendation.layers`` or ``recommendation.k``)."""
    report_path = Path(path)
    if not report_path.is_file():
        raise UserError(f"report not found: {report_path}")
    try:
        recommendation = json.loads(report_path.read_text())["recommendation"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"{report_path} is not an analysis report with a 'recommendation'") from None
    if not isinstance(recommendation, dict):
        raise UserError(f"{report_path}: its recommendation is {recommendation!r}, not a set of layers")
    layers = recommendation.get("layers")
    if layers:
        if not isinstance(layers, list) or not all(_whole(i) for i in layers):
            raise UserError(f"{report_path}: recommended layers {layers!r} are not a list of layer numbers")
        return [int(i) for i in layers]
    k = recommendation.get("k")
    if not _whole(k) or k < 1:
        raise UserError(f"{report_path}: the recommended depth k is {k!r}, not a number of layers >= 1 (analyse "
                        "the model again)")
    return list(range(int(k)))


def _whole(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer() and value >= 0


def _check_report_is_about(report: str, reference: str) -> None:
    """A recommendation is about one model: refuse one made for another."""
    try:
        analysed = json.loads(Path(report).read_text()).get("config", {}).get("model")
    except (OSError, json.JSONDecodeError, AttributeError):
        return  # layers_from_report gives the precise error
    if not analysed or analysed == reference:
        return

    def where(name):
        path, gguf = resolve_model_path(name)
        return Path(path, gguf or "").resolve() if Path(path).exists() else name

    if where(analysed) != where(reference):
        raise UserError(f"{report} analyses {analysed}, not the reference {reference}; analyse the reference first")


def selection_of(config: InheritConfig, n_layers: int) -> dict | None:
    """What ``--select`` chose (method, k, layers, reason), or None without it."""
    if not config.select:
        return None
    method, k = parse_select(config.select)
    report = read_report_model(config.from_report) if config.from_report else None
    if method in MEASURED and config.data and (report is None or "calibration" not in report or
                                               (method == "sleb" and "sleb" not in report)):
        report = as_report(_measure_on_the_spot(config, method == "sleb"))
    chosen = select_layers(method, k, n_layers, report)
    if method in MEASURED:
        chosen["calibration"] = report["calibration"]
    return {**chosen, "report": config.from_report or None}


def _measure_on_the_spot(config: InheritConfig, sleb: bool) -> dict:
    """The reference's loss without each block (and SLEB's order) on calibration windows of --data's train split."""
    data = TokenData(config.data)
    model, tokenizer = load_model(config.reference, trust_remote_code=config.trust_remote_code)
    if tokenizer is not None:
        check_tokenizer_matches(tokenizer, data, config.reference)
    measured = measure_removals(model, data, config.calibration_windows, config.calibration_t, config.seed,
                                bos_windows=config.bos_windows, sleb=sleb, progress=True)
    cost = measured["calibration"]
    print(f"block removal on {cost['windows']} x {cost['seq_len']} calibration tokens: {cost['full_passes']:.1f} full "
          f"passes, {cost['seconds']:.0f} s", flush=True)
    return measured


def choose_layers(config: InheritConfig, n_layers: int, selection: dict | None = None) -> list[int]:
    """The reference block behind each child block, for every init (``selection``: what --select chose)."""
    if selection is not None:
        spec = list(selection["layers"])
    elif config.from_report:
        spec = layers_from_report(config.from_report)
    else:
        spec = config.layers or str(n_layers // 2)
    if config.init == "half-width":
        return list(range(n_layers))  # full depth; width is what shrinks
    if config.init == "stacking":  # the model's own blocks on top of themselves: 2x depth (or the first `depth`)
        chosen = config.layers or config.from_report or selection
        base = parse_layers(spec, n_layers) if chosen else list(range(n_layers))
        depth = config.depth or 2 * len(base)
        if not len(base) < depth <= 2 * len(base):
            raise UserError(f"stacking {len(base)} blocks gives a depth between {len(base) + 1} and {2 * len(base)}, "
                            f"not {depth}")
        return (base + base)[:depth]
    count = len(parse_layers(spec, n_layers, allow_repeats=True))
    if config.init == "hybrid-stacking":  # reference layers 0..ceil(l/2)-1, twice; the first l of them
        half = (count + 1) // 2
        return (list(range(half)) * 2)[:count]
    if config.init == "distil":  # DistilBERT-style: every other reference layer
        if 2 * (count - 1) >= n_layers:
            raise UserError(f"every other layer of a {n_layers}-layer reference gives at most "
                            f"{(n_layers + 1) // 2} layers, not {count}")
        return list(range(0, 2 * count, 2))
    return parse_layers(spec, n_layers)


def child_config(ref_config, adapter: Adapter, layers: list[int], half_width: bool = False):
    """The reference config with the block count, every per-layer list and (for half-width) the widths changed."""
    config = copy.deepcopy(ref_config)
    n_ref = ref_config.num_hidden_layers
    per_layer = {k: v for k, v in ref_config.to_dict().items() if isinstance(v, list) and len(v) == n_ref}
    config.num_hidden_layers = len(layers)
    for key, values in per_layer.items():
        setattr(config, key, [values[i] for i in layers])
    if half_width:
        heads = ref_config.num_attention_heads
        kv_heads = getattr(ref_config, "num_key_value_heads", None) or heads
        if heads % 2 or ref_config.hidden_size % 2:
            raise UserError(f"half-width needs an even head count and width; the reference has {heads} heads "
                            f"and width {ref_config.hidden_size}")
        head_dim = getattr(ref_config, "head_dim", None) or ref_config.hidden_size // heads
        config.hidden_size = ref_config.hidden_size // 2
        config.num_attention_heads = heads // 2
        if getattr(ref_config, "num_key_value_heads", None):
            if kv_heads > 1 and kv_heads % 2:
                raise UserError(f"half-width needs an even number of key/value heads, the reference has {kv_heads}")
            config.num_key_value_heads = max(1, kv_heads // 2)
        if getattr(ref_config, "head_dim", None):
            config.head_dim = head_dim
        ffn = getattr(ref_config, adapter.ffn_field, None)
        if ffn:
            setattr(config, adapter.ffn_field, ffn // 2)
        if getattr(ref_config, "word_embed_proj_dim", None) == ref_config.hidden_size:
            config.word_embed_proj_dim = config.hidden_size
    return config


def plan_copy(adapter: Adapter, child_keys: list[str], layers: list[int], copy_mode: str, init: str,
              tied: bool) -> dict[str, str | None]:
    """For each child state-dict key, the reference key it is copied from, or None (fresh init)."""
    if init == "random":
        return {key: None for key in child_keys}
    block_parts, outer_parts = COPY_MODES[copy_mode]
    plan = {}
    for key in child_keys:
        in_block = adapter.block_key(key)
        if in_block is not None:
            index, rest = in_block
            source = f"{adapter.blocks}.{layers[index]}.{rest}"
            plan[key] = source if adapter.block_part(rest) in block_parts else None
        else:
            part = adapter.outer_part(key)
            if part == "head" and tied:
                plan[key] = None  # the tie brings it with the embedding
            else:
                plan[key] = key if part in outer_parts else None
    return plan


def build_child(reference, layers: list[int] | None = None, init: str = "inherit", copy_mode: str = "full",
                seed: int = 0, dtype: torch.dtype = torch.float32):
    """The child model (in memory) and a record of what was copied. ``reference`` is a model object or a
    ``weights.Reference`` from ``open_reference``."""
    from transformers import AutoModelForCausalLM

    ref = reference if hasattr(reference, "source") else open_reference(reference)
    adapter = adapter_for(ref.config)
    n_ref = ref.config.num_hidden_layers
    if layers is None:
        layers = list(range(n_ref if init == "half-width" else n_ref // 2))
    config = child_config(ref.config, adapter, layers, half_width=init == "half-width")
    # A block copied to another index keeps its own logit scale only if the scale moves into its weights.
    fold = (adapter.position_scaled(ref.config) and init not in ("random", "half-width")
            and "attention" in COPY_MODES[copy_mode][0] and layers != list(range(len(layers))))
    if fold:
        config.scale_attn_by_inverse_layer_idx = False
    torch.manual_seed(seed)
    child = AutoModelForCausalLM.from_config(config, dtype=dtype)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    state = child.state_dict()
    plan = plan_copy(adapter, list(state), layers, copy_mode, init, tied)
    # Stacking maps one reference key to several child keys: group them.
    targets: dict[str, list[str]] = {}
    for key, src in plan.items():
        if src is not None:
            targets.setdefault(src, []).append(key)
    copied = set()
    with torch.no_grad():
        for src, tensor in ref.source.read(list(targets)):
            for key in targets[src]:
                value = adapter.shrink(tensor, state[key].shape, key, ref.config) if init == "half-width" else tensor
                if value.shape != state[key].shape:
                    raise UserError(f"reference tensor {src} has shape {tuple(value.shape)}, the child's {key} "
                                    f"needs {tuple(state[key].shape)}")
                state[key].copy_(value.to(state[key].dtype))
                copied.add(key)
    missing = sorted(src for src, keys in targets.items() if any(key not in copied for key in keys))
    if missing:
        raise UserError(f"the reference has no tensor for {missing[0]} (and {len(missing) - 1} more)")
    if tied:
        child.tie_weights()
    if fold:
        for block, source in zip(adapter.block_list(child), layers):
            adapter.fold_position_scale(block, source)
    child.eval()
    record = {
        "family": adapter.family,
        "reference_layers": n_ref,
        "layers": layers,
        "init": init,
        "copy": copy_mode,
        "seed": seed,
        "copied": sorted(copied),
        "fresh": sorted(k for k, src in plan.items() if src is None and not (tied and adapter.outer_part(k) == "head")),
        "tied_embeddings": tied,
        "folded_position_scaling": fold,
    }
    return child, record


def inherit(config: InheritConfig) -> Path:
    """Cut the child described by ``config`` and save it as an HF directory with ``inheritune.json``."""
    if not config.reference:
        raise UserError("no reference model given")
    if not config.out:
        raise UserError("no output directory given (--out)")
    out = Path(config.out).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory")
    path, gguf = resolve_model_path(config.reference)
    refuse_over_inputs(out, [("the reference", Path(path) / gguf if gguf else path),
                             ("--from-report", config.from_report), ("--data", config.data)])
    remove_stale_staging(out.parent, [out.name])  # what a killed inherit left (.NAME.tmp-PID)
    replacing = holds_own_kind(out, CHILD, "inherit")  # never a model it did not cut, a run, a user's files
    if replacing and not config.overwrite:
        raise UserError(f"{out} already holds a child made by inherit; pass --overwrite to replace it")
    if config.from_report:
        _check_report_is_about(config.from_report, config.reference)
    ref = open_reference(config.reference, trust_remote_code=config.trust_remote_code)
    adapter_for(ref.config)  # unsupported families fail before any work
    selection = selection_of(config, ref.config.num_hidden_layers)
    layers = choose_layers(config, ref.config.num_hidden_layers, selection)
    child, record = build_child(ref, layers, config.init, config.copy, config.seed, parse_dtype(config.dtype))
    if selection is not None:
        record["selection"] = selection
    if ref.generation_config is not None:
        child.generation_config = ref.generation_config

    record.update(reference=str(config.reference), reference_sha256=ref.checksum(),
                  config=to_dict(config), inheritune_version=__version__,
                  parameters=sum(p.numel() for p in child.parameters()),
                  created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    _save_child(child, ref, record, out, replacing)
    print(f"child with {len(layers)} blocks ({record['parameters']:,} parameters, init {config.init}, "
          f"copy {config.copy}) written to {out}", flush=True)
    return out


def _save_child(child, ref, record: dict, out: Path, replacing: bool) -> None:
    """The child written into a staging folder and swapped in whole; a failed write (a full disk) is one line
    naming the file, the free space against what the child needs, and what is still good."""
    tokenizer_files = [p for p in (ref.files[0].parent.iterdir() if ref.files else [])
                       if p.name.startswith(("tokenizer", "vocab", "merges", "special_tokens"))]
    needed = payload_bytes(child.state_dict()) + sum(p.stat().st_size for p in tokenizer_files)
    fallback = last_good(out, replacing, "child")
    staging = staging_name(out)
    shutil.rmtree(staging, ignore_errors=True)

    @contextmanager
    def saving(what: str, name: str):
        try:
            yield
        except Exception:
            shutil.rmtree(staging, ignore_errors=True)  # first, so that the free space said is what a rerun has
            with writing_staged(f"the child's {what}", out / name, needed, fallback):
                raise

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with saving("weights", "model.safetensors"):
            child.save_pretrained(staging, safe_serialization=True)
        if ref.tokenizer is not None:
            with saving("tokenizer", "tokenizer.json"):
                ref.tokenizer.save_pretrained(staging)
        with saving("record", "inheritune.json"):
            (staging / "inheritune.json").write_text(json.dumps(record, indent=2))
        with saving("model card", "README.md"):
            write_card(staging, child_card(record))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replace_dir(staging, out)
