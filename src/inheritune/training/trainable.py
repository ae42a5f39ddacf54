"""Which weights a training updates (``--trainable``): every weight (``all``), low-rank adapters on the blocks'
linear layers through PEFT (``lora``, merged back at the end so that the final model is a plain HF directory),
or the last K blocks with the final norm and the head (``last:K``, the recipe of "Reassessing Layer Pruning").

A head tied to the embeddings is one tensor: ``last:K`` trains it, and so trains the input embeddings too (they
cannot be told apart); the record says so. Under ``lora`` the head and the embeddings stay frozen.

Training FLOPs per token (``training_flops_per_token``), with N the parameters that do a matmul for a token
(every weight but the input embeddings; a tied head counted once, as the head), T the context, d the width:

    forward                     2 N + 4 L d T                     (every block runs)
    backward, activations       2 N_path + 8 L_path d T          (only where a gradient must flow: from the
                                                                   head down to the lowest trainable block)
    backward, weights           2 N_train                         (frozen weights get no gradient)

``all`` gives the usual 6 N + 12 L d T. ``lora`` keeps the whole path (the first block's adapters need the
gradient through every block above) and drops the frozen weights' gradients; ``last:K`` keeps the path of the
last K blocks only, unless the head is tied to the embeddings: then the embeddings learn, and the gradient
they need runs back through every block (frozen ones included), so the whole path is paid.
"""

from __future__ import annotations

import torch

from inheritune.models.architectures import adapter_for
from inheritune.utils.errors import UserError

KINDS = ("all", "lora", "last")


def parse_trainable(text: str) -> tuple[str, int]:
    """'all' -> ('all', 0), 'lora' -> ('lora', 0), 'last:3' -> ('last', 3); anything else is refused."""
    kind, colon, count = str(text).strip().partition(":")
    if kind in ("all", "lora") and not colon:
        return kind, 0
    if kind == "last" and colon and count.isdigit() and int(count) >= 1:
        return "last", int(count)
    raise UserError(f"--trainable takes all, lora or last:K (K >= 1 blocks), not {text!r}")


def apply_trainable(model, spec: str, rank: int = 8, alpha: float = 16.0, targets: str = "", seed: int = 0):
    """Freeze what ``spec`` leaves alone (in place); returns (the PEFT wrapper under lora, else None; a record of
    what is trained). The model object itself stays the one the loop trains: PEFT injects its adapters into it.
    LoRA's A matrices are drawn from ``seed`` alone (torch's global random state is left as it was), so an
    adapter starts the same whatever the process did before: a run re-entered after a kill, or a standalone
    ``train`` of a search's winner, starts from the same adapters as the uninterrupted run."""
    kind, k = parse_trainable(spec)
    total = sum(p.numel() for p in model.parameters())
    record = {"trainable": spec, "total_parameters": total}
    wrapper = None
    if kind == "last":
        blocks = adapter_for(model.config).block_list(model)
        if k > len(blocks):
            raise UserError(f"--trainable {spec}: the model has {len(blocks)} blocks")
        adapter = adapter_for(model.config)
        model.requires_grad_(False)
        for module in (*blocks[len(blocks) - k:], adapter.norm(model), adapter.lm_head(model)):
            module.requires_grad_(True)
        tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
        record |= {"blocks": list(range(len(blocks) - k, len(blocks))), "tied_head": tied}
        if tied:
            record["note"] = ("the head is tied to the input embeddings (one tensor): training the head trains the "
                              "embeddings too")
    elif kind == "lora":
        from peft import LoraConfig, get_peft_model  # imported only when asked for

        names = targets.replace(",", " ").split() if targets else "all-linear"
        try:
            # CUDA's generator is forked (and seeded) only where CUDA is already in use: a CPU run never starts it
            with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_initialized() else []):
                torch.manual_seed(seed)
                wrapper = get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0,
                                                           target_modules=names, bias="none"))
        except ValueError as exc:  # a target that matches no module of this model
            raise UserError(f"--lora-targets {targets!r}: {str(exc).splitlines()[0]}") from None
        record |= {"lora": {"rank": rank, "alpha": alpha,
                            "targets": sorted(wrapper.peft_config["default"].target_modules)}}
    record["trainable_parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return wrapper, record


def merged(model, wrapper):
    """The model to save: under lora the adapters merged into their layers (W + alpha / r * B A) by PEFT and
    removed, so the result loads without peft; else the model itself."""
    return wrapper.merge_and_unload() if wrapper is not None else model


def training_flops_per_token(model, seq_len: int) -> float:
    """FLOPs of one training token, counting what frozen weights skip (see the module's docstring)."""
    config = model.config
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    layers, width = config.num_hidden_layers, config.hidden_size
    blocks = list(adapter_for(config).block_list(model))

    def matmul_params(params) -> int:  # the input embeddings are a lookup; a tied head still does its matmul
        return sum(p.numel() for p in params if p is not embed or head is embed)

    unique = list({id(p): p for p in model.parameters()}.values())
    everything = matmul_params(unique)
    trained = matmul_params(p for p in unique if p.requires_grad)
    if embed.requires_grad:
        lowest = 0  # the input embeddings learn (tied to a head that learns, too): the gradient flows through every block
    else:
        lowest = next((i for i, block in enumerate(blocks) if any(p.requires_grad for p in block.parameters())),
                      len(blocks))
    inside = {id(p) for block in blocks[:lowest] for p in block.parameters()}
    path = matmul_params(p for p in unique if id(p) not in inside)
    attention = 4 * width * seq_len  # per block, forward: the scores and their weighted sum
    return 2 * everything + layers * attention + 2 * path + 2 * (layers - lowest) * attention + 2 * trained
