"""What a training is told: ``TrainRecipe``, the knobs every training of a run shares (the paper's recipe by
default), and ``TrainConfig``, one training (a recipe plus its model, data, budget and output). ``run`` nests a
recipe as its ``train:`` section, so every knob reaches every round and baseline."""

from __future__ import annotations

import math
from dataclasses import dataclass

from inheritune.training.trainable import parse_trainable
from inheritune.utils.config import option
from inheritune.utils.errors import UserError


@dataclass
class TrainRecipe:
    """The training recipe (PAPER.md §2), the same for every training of a run."""

    seq_len: int = option(256, help="tokens per training window")
    micro_batch_size: int = option(8, help="windows per forward pass on each process")
    global_batch_tokens: int = option(0, help="tokens per optimizer step over all processes; 0 = one micro-batch "
                                             "per process (no accumulation)")
    lr: float = option(3e-4, help="peak learning rate (paper: 3e-4 for GPT-2 Medium)")
    min_lr: float = option(1e-5, help="cosine floor")
    warmup_steps: int = option(-1, help="linear warmup steps; -1 = 2%% of the steps, as the paper's 2K of 100K")
    weight_decay: float = option(0.1, help="AdamW decay on matrices only (not norms, biases)")
    beta1: float = option(0.9, help="AdamW beta1")
    beta2: float = option(0.95, help="AdamW beta2")
    grad_clip: float = option(1.0, help="gradient-norm clip; 0 = off")
    schedule: str = option("cosine", help="learning-rate schedule after the warmup: cosine (to min_lr at the end, the "
                                          "paper's) or wsd (constant, then linear to min_lr over the last "
                                          "decay_fraction of the steps: SmolLM2's and MiniCPM's); "
                                          "under run --search every child and baseline trains wsd")
    decay_fraction: float = option(0.2, low=0.01, high=1, help="wsd: share of the steps spent decaying")
    data_order: str = option("random", help="random (windows with replacement) or sequential (no replacement)")
    bos_windows: bool = option(False, help="every training and validation window starts with the tokenizer's BOS (its "
                                           "document separator when it has none) followed by seq_len - 1 stream "
                                           "tokens, so that one token always sits at position 0 (where attention "
                                           "sinks form); losses compare only with runs that did the same")
    seed: int = option(1337, low=0, high=2**32 - 1, help="seed of data order and of fresh weights")
    dtype: str = option("float32", help="float32 or bfloat16 (autocast; weights and optimizer stay fp32); float16 "
                                        "is refused (it needs loss scaling; use bfloat16)")
    tf32: bool = option(True, help="on CUDA, let float32 matmuls use TF32 tensor cores (as nanoGPT); MFU is then "
                                   "quoted against the TF32 peak, else against the plain fp32 peak")
    compile: str = option("auto", help="torch.compile the model: on, off, or auto (on when the run's estimated eager "
                                       "training time is at least 10x the compile cost: 60 s on a CPU, 30 s on a GPU, and it "
                                       "does not track attention)")
    chunked_loss: bool = option(True, help="compute the head and the loss (CE and KD) in chunks of positions, so the "
                                           "full logits never exist (exact; single process; off = the plain path)")
    lora_rank: int = option(8, low=1, high=4096, help="--trainable lora: rank r of each adapter")
    lora_alpha: float = option(16.0, help="--trainable lora: scale alpha (the update is alpha / r * B A)")
    lora_targets: str = option("", help="--trainable lora: module names to adapt, comma-separated (e.g. q_proj,v_proj); "
                                        "empty = every linear layer of the blocks (the head is never adapted)")
    device: str = option("auto", help="auto, cpu or cuda")
    distributed: str = option("ddp", help="under torchrun: ddp or fsdp (FSDP2 fully_shard per block)")
    eval_interval: int = option(50, help="evaluate every this many steps (and at the end); 0 = only at the end")
    eval_windows: int = option(32, help="fixed validation windows (same ones for every model on this dataset)")
    keep_checkpoints: int = option(2, help="how many checkpoints to keep")
    log_interval: int = option(1, help="write metrics every this many steps")
    peak_flops: float = option(0.0, help="peak FLOP/s of one device for MFU; 0 = measured CPU peak / GPU datasheet")
    tensorboard: bool = option(False, help="also log to TensorBoard (needs the tensorboard package)")
    progress: bool = option(True, help="show progress bars")

    def __post_init__(self):
        numbers = {"lr": self.lr, "min_lr": self.min_lr, "weight_decay": self.weight_decay, "grad_clip": self.grad_clip,
                   "peak_flops": self.peak_flops}
        for name, value in numbers.items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise UserError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.lr == 0:
            raise UserError("lr must be > 0")
        if self.min_lr > self.lr:
            raise UserError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        for name, value in (("beta1", self.beta1), ("beta2", self.beta2)):
            if not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
                raise UserError(f"{name} must be in [0, 1), got {value!r}")
        for name in ("global_batch_tokens", "eval_windows", "eval_interval"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.warmup_steps < -1:
            raise UserError(f"warmup_steps must be >= 0 (or -1 for 2% of the steps), got {self.warmup_steps}")
        if self.log_interval < 1 or self.keep_checkpoints < 1:
            raise UserError("log_interval and keep_checkpoints must be >= 1")
        if self.dtype in ("float16", "fp16", "half"):
            raise UserError("float16 training needs loss scaling, which inheritune does not do; use --dtype bfloat16")
        if self.dtype not in ("float32", "fp32", "bfloat16", "bf16"):
            raise UserError(f"dtype must be float32 or bfloat16, not {self.dtype!r}")
        if self.schedule not in ("cosine", "wsd"):
            raise UserError(f"schedule must be cosine or wsd, not {self.schedule!r}")
        if self.data_order not in ("random", "sequential"):
            raise UserError(f"data_order must be random or sequential, not {self.data_order!r}")
        self.compile = {"true": "on", "1": "on", "yes": "on", "false": "off", "0": "off", "no": "off"}.get(
            str(self.compile).lower(), str(self.compile).lower())
        if self.compile not in ("auto", "on", "off"):
            raise UserError(f"compile must be auto, on or off, not {self.compile!r}")
        if self.distributed not in ("ddp", "fsdp"):
            raise UserError(f"distributed must be ddp or fsdp, not {self.distributed!r}")
        if self.seq_len < 2 or self.micro_batch_size < 1:
            raise UserError("seq_len must be >= 2 and micro_batch_size >= 1")


@dataclass
class TrainConfig(TrainRecipe):
    """One training run: the recipe, plus what is trained on what, for how long, and where it is written."""

    model: str = option("", help="HF model dir (e.g. an inherited child), .gguf, built-in name, or a scratch spec "
                                 "(scratch:gpt2-medium, scratch:llama:layers=4,hidden=64,heads=4, config.json)")
    data: str = option("", help="prepared dataset directory")
    out: str = option("", help="run directory: checkpoints, metrics.jsonl, final/ model, loss.png")
    max_steps: int = option(0, help="optimizer steps (or give max_tokens)")
    max_tokens: int = option(0, help="token budget; steps = ceil(max_tokens / global batch tokens)")
    data_offset: int = option(0, help="start the data stream at this step (a second training stage that must not "
                                      "replay the first one's batches, e.g. the stacked stage of stacking)")
    checkpoint_interval: int = option(50, help="checkpoint every this many steps (and at the end)")
    stop_after: int = option(0, help="pause at this step (0 = run to the end): evaluate, checkpoint, write the model at "
                                     "this step to out/snapshot and exit with status 'paused'; the learning-rate "
                                     "schedule stays that of the whole run, and --resume continues it (a search's rungs)")
    trainable: str = option("all", help="which weights learn: all; lora (PEFT adapters on the blocks' linear layers, "
                                        "merged at the end: the model loads without peft); last:K (the last K blocks, "
                                        "the final norm and the head; a head tied to the embeddings trains them too)")
    teacher: str = option("", help="teacher model for knowledge distillation (empty = no KD)")
    teacher_cache: str = option("", help="KD: keep the teacher's final hidden states of each batch in this folder, so "
                                         "that other trainings on the same batches (a search's candidates) read them "
                                         "instead of paying the teacher's forward pass again; exact. Used on the chunked "
                                         "loss of one process (the default); elsewhere it says so and is off")
    kd_alpha: float = option(0.6, help="KD: loss = alpha * CE + (1 - alpha) * KL (paper: 0.6)")
    kd_temperature: float = option(1.0, help="KD temperature (paper: 1)")
    track_attention: int = option(0, low=0, help="every this many steps (and at the end) measure each layer's attention "
                                                 "on fixed validation windows (MaxRank, first-token mass, sink heads, "
                                                 "state) into attention.jsonl and emergence.png; 0 = off")
    track_windows: int = option(8, low=1, high=1024, help="validation windows the attention tracker reads")
    resume: bool = option(False, help="continue the run in --out from its last checkpoint")
    resume_from: str = option("", help="continue from this checkpoint file")
    overwrite: bool = option(False, help="replace a different run in --out")

    def __post_init__(self):
        super().__post_init__()
        for name in ("max_steps", "max_tokens", "data_offset", "checkpoint_interval", "stop_after"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_steps and self.warmup_steps >= self.max_steps:
            raise UserError(f"warmup_steps ({self.warmup_steps}) must be shorter than the run ({self.max_steps} steps)")
        parse_trainable(self.trainable)
        if self.lora_alpha <= 0 or not math.isfinite(self.lora_alpha):
            raise UserError(f"lora_alpha must be a finite number > 0, got {self.lora_alpha!r}")
        if not 0.0 <= self.kd_alpha <= 1.0 or self.kd_temperature <= 0:
            raise UserError("kd_alpha must be in [0, 1] and kd_temperature > 0")
