"""The configuration of ``inheritune run``: the recipe end to end, its selections, healings and baselines."""

from __future__ import annotations

from dataclasses import dataclass

from inheritune.analysis.calibration import DEFAULT_SEQ_LEN, DEFAULT_WINDOWS
from inheritune.analysis.selection import parse_select
from inheritune.training.recipe import TrainConfig, TrainRecipe
from inheritune.training.trainable import parse_trainable
from inheritune.utils.config import option, to_dict
from inheritune.utils.errors import UserError

HEALS = ("ce", "kd")
BASELINES = ("random", "random-2x", "stacking", "hybrid-stacking", "half-width", "kd")


@dataclass
class RunConfig:
    """The recipe end to end (PAPER.md §2-3). Training fields apply to every round and baseline alike."""

    reference: str = option("smollm2", help="pretrained reference: HF dir, .gguf, built-in name")
    reference_from_scratch: str = option("", help="instead, train the reference first from this scratch spec "
                                                  "(e.g. scratch:gpt2-medium) with the round budget")
    data: str = option("", help="prepared dataset directory")
    out: str = option("", help="run directory")
    start: str = option("half", help="first child depth: 'half' (L/2, the paper), a number, or 'auto' (analyze)")
    step: int = option(2, help="layers added per round")
    select: list[str] = option(["first"], help="which l blocks each child keeps: first (blocks 0..l-1, the paper), "
                                              "bi (highest Block Influence, ShortGPT), angular (drop the span closest "
                                              "in angle, Gromov et al.), drop-lazy, spread, loss (largest loss rise "
                                              "when removed alone), sleb (SLEB's iterative elimination: measured once "
                                              "on calibration windows of the train split); chosen anew for each l "
                                              "from one analysis of the reference (see 'inheritune inherit "
                                              "--select'). Several methods (or several --heal modes): one child per "
                                              "combination at the start depth, side by side on the same budget, "
                                              "seed, data order and windows, no growth rounds")
    heal: list[str] = option(["ce"], help="how the children are retrained: ce (cross-entropy on the data, the paper) "
                                          "or kd (distillation from the reference: --kd-alpha x CE + (1 - alpha) x "
                                          "KL at --kd-temperature; the reference's forward pass is counted in the "
                                          "child's FLOPs); both: 'ce kd' side by side")
    trainable: list[str] = option(["all"], help="which weights each child trains: all, lora (PEFT adapters, merged at "
                                                "the end; --lora-rank, --lora-alpha, --lora-targets), last:K (the last "
                                                "K blocks, final norm and head); several: side by side, like --select "
                                                "and --heal")
    search: str = option("", help="halving: find the best candidate (every combination of --select, --heal and "
                                  "--trainable) at this budget by successive halving: each rung trains the survivors "
                                  "further on one warmup-stable-decay schedule over the full budget and keeps the "
                                  "best 1/eta; the finalists train to the full budget and are compared side by "
                                  "side. Empty: train every candidate to the end")
    eta: int = option(2, low=2, high=16, help="--search halving: keep the best 1/eta of each rung")
    max_rounds: int = option(3, help="cap on growth rounds")
    tolerance: float = option(0.0, low=-100, high=100, help="stop when child val loss <= reference val loss + tolerance")
    grow: str = option("reinherit", help="reinherit (paper: fresh child of l + step layers, trained from step 0) or "
                                         "continue (keep the trained child, append the next reference layers)")
    steps: int = option(200, help="optimizer steps per round (and per baseline), before --budget scaling")
    budget: float = option(1.0, low=1e-6, high=1e6, help="multiplies every training budget (use > 1 on real hardware)")
    max_total_flops: float = option(0.0, low=0, help="stop growing once the training FLOPs spent exceed this; 0 = no cap")
    baselines: list[str] = option(["random"], help=f"baselines on the same budget: {', '.join(BASELINES)}; "
                                                            "none for no baseline")
    nproc_per_node: int = option(1, help="> 1: each training runs under torchrun with this many processes")
    kd_alpha: float = option(0.6, low=0, high=1, help="KD (baseline kd, --heal kd): weight of CE")
    kd_temperature: float = option(1.0, low=1e-3, high=1e3, help="KD (baseline kd, --heal kd): temperature")
    tasks: list[str] = option([], help="zero-shot tasks for every final model (see 'inheritune evaluate --tasks')")
    task_limit: int = option(0, low=0, help="at most this many items per zero-shot task; 0 = all")
    analyze_n: int = option(100, low=1, help="sequences for the analysis (start auto, and the final comparison)")
    analyze_t: int = option(100, low=2, help="tokens per analysis sequence")
    calibration_windows: int = option(DEFAULT_WINDOWS, low=1, help="--select loss/sleb: calibration windows of the "
                                                                   "train split, measured once per run")
    calibration_t: int = option(DEFAULT_SEQ_LEN, low=2, help="--select loss/sleb: tokens per calibration window")
    compare_analysis: bool = option(True, help="analyse reference vs final child side by side at the end")
    track_reference: int = option(0, low=0, help="with --reference-from-scratch: track the reference's attention "
                                                 "every this many steps while it trains (emergence.png in the "
                                                 "report); 0 = off")
    keep_stage_checkpoints: bool = option(False, help="keep every finished stage's checkpoints (each about 3x its "
                                                       "model: weights and optimizer state); by default they are "
                                                       "deleted once the stage's model is written and recorded")
    train: TrainRecipe = option(default_factory=TrainRecipe, help="the training recipe of every round and baseline "
                                                                  "(its keys also work flat: --lr, --seq-len, ...)")
    bootstrap: int = option(1000, low=100, high=100_000, help="bootstrap resamples of the validation windows for intervals (paired for deltas)")
    convergence_tolerance: float = option(0.01, low=0, help="a reference trained by the run counts as converged unless its "
                                                     "val loss surely falls faster than this many nats per 10%% of its "
                                                     "budget over the last half (else the verdict is flagged)")

    def __post_init__(self):
        if self.step <= 0:
            raise UserError(f"step must be > 0, got {self.step}")
        if self.max_rounds < 1:
            raise UserError("max_rounds must be >= 1")
        if self.nproc_per_node < 1:
            raise UserError("nproc_per_node must be >= 1")
        self.select = _names(self.select, "select") or ["first"]
        for method in self.select:
            parse_select(f"{method}:1")  # an unknown method is refused with the list of methods
        self.heal = _names(self.heal, "heal") or ["ce"]
        unknown = [h for h in self.heal if h not in HEALS]
        if unknown:
            raise UserError(f"unknown --heal '{unknown[0]}'; choose from {', '.join(HEALS)}")
        self.trainable = _names(self.trainable, "trainable") or ["all"]
        for spec in self.trainable:
            parse_trainable(spec)
        if self.grow == "continue" and (self.select != ["first"] or self.side_by_side):
            raise UserError("--grow continue appends the next blocks in order to one trained child: use it with "
                            "--select first and one --heal (other selections choose their blocks anew for each "
                            "depth; several are trained side by side, without growth)")
        if self.search not in ("", "halving"):
            raise UserError(f"search must be halving (or empty), not {self.search!r}")
        if self.search:  # refused now, not after the reference is measured
            count = len(self.children())
            if count < 2:
                raise UserError("--search halving needs at least two candidates: name several --select, --heal or "
                                "--trainable values")
            if count <= self.eta:  # (eta >= 2: checked with the other bounds)
                raise UserError(f"--search halving with {count} candidates at --eta {self.eta} has no cut to make: "
                                "every candidate would train to the end; leave out --search to train them side by "
                                "side, or lower --eta")
            total = round(self.steps * self.budget)
            check_schedule(self, rung_steps(count, self.eta, total), total)
            if not self.reference_from_scratch:  # then --schedule trains nothing here: record what every training
                self.train.schedule = "wsd"  # of the search (candidates and baselines) runs on
        if self.grow not in ("reinherit", "continue"):
            raise UserError(f"grow must be reinherit or continue, not {self.grow!r}")
        if isinstance(self.baselines, str):
            self.baselines = self.baselines.split(",")
        self.baselines = [b for b in self.baselines if b and b != "none"]  # --baselines none: no baseline
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            raise UserError(f"unknown baseline '{unknown[0]}'; choose from {', '.join(BASELINES)}")
        if round(self.steps * self.budget) < 1:
            raise UserError(f"a budget of {self.steps} x {self.budget} steps is too small to train and evaluate once")
        if self.start not in ("half", "auto") and not str(self.start).isdigit():
            raise UserError(f"start must be 'half', 'auto' or a number of layers, not {self.start!r}")
        if not self.convergence_tolerance >= 0:
            raise UserError(f"convergence_tolerance must be >= 0, got {self.convergence_tolerance}")
        if self.bootstrap < 100:
            raise UserError(f"bootstrap must be >= 100 resamples for a 95% interval, got {self.bootstrap}")
        if self.train.eval_windows == 1:
            raise UserError("eval_windows must be 0 (all windows of the val split) or >= 2 (intervals are over "
                            "windows), got 1")
        self.train_config("x", "x", round(self.steps * self.budget))  # every training knob is validated now, not after hours of work


    @property
    def side_by_side(self) -> bool:
        """Several selections or healings: one child each at the start depth, no growth rounds."""
        return len(self.select) * len(self.heal) * len(self.trainable) > 1

    def children(self) -> list[tuple[str, str, str]]:
        """(selection, healing, trainable) of every child the run trains side by side (or the one it grows)."""
        return [(method, heal, spec) for method in self.select for heal in self.heal for spec in self.trainable]

    def child_name(self, method: str, heal: str, spec: str) -> str:
        """A child's name in the report: the parts that vary across the run's children ('bi', 'bi+kd',
        'first+lora')."""
        varied = [part for part, options in ((method, self.select), (heal, self.heal), (spec, self.trainable))
                  if len(options) > 1]
        return "+".join(varied) or method

    @staticmethod
    def child_folder(method: str, heal: str, spec: str) -> str:
        """Its folder under children/ (and its state.json key): 'bi-kd', 'bi-kd-last3' (all adds nothing, so that
        runs made before --trainable re-enter as they were)."""
        return f"{method}-{heal}" + ("" if spec == "all" else "-" + spec.replace(":", ""))

    def heal_args(self, heal: str, reference: str, trainable: str = "all") -> dict:
        """The training arguments of a healing (the reference as teacher for kd, nothing for ce) and of the
        weights it trains."""
        return {"trainable": trainable} | ({"teacher": reference, "kd_alpha": self.kd_alpha,
                                            "kd_temperature": self.kd_temperature} if heal == "kd" else {})

    def train_config(self, model: str, out: str, steps: int, **extra) -> TrainConfig:
        """The TrainConfig of one stage: the run's whole recipe, this stage's model, budget and output."""
        return TrainConfig(**(to_dict(self.train) | dict(model=model, data=self.data, out=out, max_steps=steps,
                                                         checkpoint_interval=max(10, steps // 4)) | extra))


def _names(value, what: str) -> list[str]:
    """A list option given as a list, or as one string of names separated by spaces or commas; each name once."""
    names = value.replace(",", " ").split() if isinstance(value, str) else [n for item in value for n in
                                                                             str(item).replace(",", " ").split()]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"--{what} names {twice[0]!r} twice")
    return names


def rung_steps(candidates: int, eta: int, steps: int) -> list[int]:
    """The step each rung trains its survivors to: steps / eta^(R - r) for r = 1..R, R = ceil(log_eta n)."""
    rungs, reach = 0, 1
    while reach < candidates:
        reach, rungs = reach * eta, rungs + 1
    return [max(1, steps // eta ** (rungs - r)) for r in range(1, max(rungs, 1) + 1)]


def check_schedule(config, rungs: list[int], steps: int) -> None:
    """Refuse a search whose scores would not be read in the stable phase of one shared schedule."""
    if len(set(rungs)) < len(rungs):
        raise UserError(f"a budget of {steps} steps is too short for {len(rungs)} rungs at eta {config.eta} (rungs at "
                        f"steps {rungs}); raise --steps or --eta, or name fewer candidates")
    recipe = config.train
    warmup = recipe.warmup_steps if recipe.warmup_steps >= 0 else max(1, round(0.02 * steps))
    if warmup >= rungs[0]:
        raise UserError(f"the warmup ({warmup} steps) must end before the first rung is scored (step {rungs[0]}); "
                        "lower --warmup-steps or raise --steps")
    decay_start = steps - max(1, round(recipe.decay_fraction * steps))
    if len(rungs) > 1 and decay_start < rungs[-2]:
        raise UserError(f"--decay-fraction {recipe.decay_fraction} starts the decay at step {decay_start}, before the "
                        f"last rung begins (step {rungs[-2]}): earlier rungs would be scored mid-decay; use at most "
                        f"{1 - rungs[-2] / steps:.2f}")
