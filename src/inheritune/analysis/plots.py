"""PNG plots of the analysis (and, later, of training runs). matplotlib with the Agg backend: no screen needed."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from inheritune.utils.errors import atomic_write


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(result: dict) -> str:
    path = Path(str(result["model"]))
    name = path.parent.parent.name if path.name == "final" and path.parent.parent.name else path.name
    return f"{name} ({result['num_layers']}L)"


def draw_analysis(results: list[dict], config) -> dict[str, bytes]:
    """maxrank.png, mass.png, rank_heatmap.png, sink_influence.png, logit_lens.png, attention_maps.png, rendered
    (name -> PNG bytes): the caller writes them with the rest of the analysis, knowing the space they need."""
    plt = _plt()
    pngs = {}

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for result in results:
        layers = np.arange(result["num_layers"])
        max_rank = np.array([r["max_rank"] for r in result["layers"]])
        std = np.array([r["max_rank_std"] for r in result["layers"]])
        (line,) = ax.plot(layers, max_rank, marker="o", ms=3, label=_label(result))
        ax.fill_between(layers, np.maximum(max_rank - std, 1.0), max_rank + std, color=line.get_color(), alpha=0.2)
        for state, style in (("uniform", dict(marker="s", s=60, facecolors="none", edgecolors="gray", lw=1.5)),
                             ("lazy", dict(marker="o", s=45, color="red"))):
            chosen = [r["layer"] for r in result["layers"] if r.get("state") == state]
            if chosen:
                ax.scatter(chosen, max_rank[chosen], zorder=3, label=f"{state} layers of {_label(result)}", **style)
    first = results[0]["layers"]
    if first and "uniform_rank" in first[0]:
        uniform = [r["uniform_rank"] for r in first]
        ax.step(np.arange(len(uniform)), uniform, where="mid", color="gray", ls=":", lw=1.5,
                label=f"uniform attention (untrained): rank {min(uniform)}"
                      + (f"-{max(uniform)}" if max(uniform) > min(uniform) else "") + f" at T = {results[0].get('t')}")
    ax.axhline(1 + config.lazy_tolerance, color="red", ls="--", lw=1, label=f"lazy: MaxRank <= {1 + config.lazy_tolerance:g}")
    ax.set(xlabel="layer", ylabel=f"MaxRank (energy rank, tau={config.tau[0]})", yscale="log",
           title="Attention rank by layer (mean ± std over sequences of the top head)")
    ax.legend()
    pngs["maxrank.png"] = render(fig)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for result in results:
        ax.plot([r["avg_mass"] for r in result["layers"]], marker="o", ms=3, label=_label(result))
    ax.set(xlabel="layer", ylabel=f"AvgMass m* (eta={config.eta})", yscale="log",
           title="Columns holding the attention mass (1 = one column, a sink)")
    ax.legend()
    pngs["mass.png"] = render(fig)

    fig, axes = plt.subplots(1, len(results), figsize=(7 * len(results), 4.5), squeeze=False)
    for ax, result in zip(axes[0], results):
        image = ax.imshow(result["_rank_matrix"].T, aspect="auto", origin="lower", cmap="viridis",
                          norm=_log_norm(result["_rank_matrix"]))
        ax.set(xlabel="layer", ylabel="head", title=f"Rank(h, l): {_label(result)} (x uniform, o lazy)")
        for state, style in (("uniform", dict(marker="x", color="white")), ("lazy", dict(marker="o", color="red"))):
            marked = [(h["layer"], h["head"]) for h in result["heads"] if h.get("state") == state]
            if marked:
                ax.scatter(*zip(*marked), s=14, lw=1, **style)
        fig.colorbar(image, ax=ax, label="energy rank")
    pngs["rank_heatmap.png"] = render(fig)

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True)
    for result in results:
        top.plot([r["sink_mass"] for r in result["layers"]], marker="o", ms=3, label=_label(result))
        bottom.plot([r["block_influence"] for r in result["layers"]], marker="o", ms=3, label=_label(result))
    top.set(ylabel="first-token (sink) mass", title="Attention sinks and block influence by layer")
    bottom.set(xlabel="layer", ylabel="block influence (1 - cos)", yscale="log")
    top.legend()
    pngs["sink_influence.png"] = render(fig)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for result in results:
        ks = np.arange(1, result["num_layers"] + 1)
        ax.plot(ks, [r["logit_lens_loss"] for r in result["layers"]], marker="o", ms=3, label=_label(result))
    recommended = results[0].get("recommendation", {}).get("k")
    if recommended:
        ax.axvline(recommended, color="green", ls="--", lw=1, label=f"recommended k = {recommended}")
    ax.set(xlabel="k (blocks kept)", ylabel="CE_k = loss of head(final_norm(x_k))",
           title="Logit lens: loss of a first-k child before training")
    ax.legend()
    pngs["logit_lens.png"] = render(fig)

    chosen = [_map_layers(result, config) for result in results]
    if any(chosen):
        from matplotlib.colors import PowerNorm

        columns = max(len(c) for c in chosen)
        fig, axes = plt.subplots(len(results), columns, figsize=(3.6 * columns, 3.4 * len(results)), squeeze=False)
        for row, (result, layers) in enumerate(zip(results, chosen)):
            for col, layer in enumerate(layers):
                mean = result["_maps"][layer]
                mean = np.where(np.tril(np.ones_like(mean)) > 0, mean, np.nan)  # causal: upper triangle unseen
                axes[row][col].imshow(mean, cmap="magma", norm=PowerNorm(0.4, vmin=0, vmax=1))
                axes[row][col].set(title=f"{_label(result)} layer {layer}", xlabel="key", ylabel="query")
            for col in range(len(layers), columns):
                axes[row][col].axis("off")
        fig.suptitle("Attention (mean over heads, first sequence; colour ~ p^0.4)")
        pngs["attention_maps.png"] = render(fig)
    return pngs


def draw_loss(runs: dict[str, list[dict]], path: Path, title: str = "Training and validation loss") -> Path:
    """Train loss (thin line) and validation loss (markers) of one or more runs against steps."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, history in runs.items():
        trained = [h for h in history if "loss" in h]  # step 0 has a validation loss only
        (line,) = ax.plot([h["step"] for h in trained], [h["loss"] for h in trained], lw=0.8, alpha=0.6,
                          label=f"{name} train")
        evals = [(h["step"], h["val_loss"]) for h in history if "val_loss" in h]
        if evals:
            ax.plot(*zip(*evals), marker="o", ms=4, color=line.get_color(), label=f"{name} val")
    ax.set(xlabel="step", ylabel="loss (nats/token)", title=title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def draw_comparison(results: list[dict], path: Path) -> Path:
    """Bars of validation loss (with 95% intervals) and, when measured, zero-shot average accuracy."""
    plt = _plt()
    names = [Path(str(r["model"])).name for r in results]
    has_tasks = all("zero_shot" in r for r in results)
    fig, axes = plt.subplots(1, 2 if has_tasks else 1, figsize=(5 + 2.5 * len(names), 4), squeeze=False)
    losses = [r["loss"] for r in results]
    errors = np.array([[r["loss"] - r["loss_ci95"][0], r["loss_ci95"][1] - r["loss"]] for r in results]).T
    axes[0][0].bar(names, losses, yerr=errors, capsize=4, color="tab:blue")
    axes[0][0].set(ylabel="validation loss (nats/token)", title="Validation loss, 95% interval")
    if has_tasks:
        accuracy = [100 * r["zero_shot"]["average"]["acc"] for r in results]
        axes[0][1].bar(names, accuracy, color="tab:green")
        axes[0][1].set(ylabel="accuracy (%)", title="Zero-shot average")
    for ax in axes[0]:
        ax.tick_params(axis="x", rotation=20)
    return _save(fig, path)


def _map_layers(result: dict, config) -> list[int]:
    """Early vs late: the first, middle, laziest and last layers (or the ones asked for) that were captured."""
    n = result["num_layers"]
    if config.map_layers:
        wanted = config.map_layers
    else:
        formed = [r for r in result["layers"] if r.get("state") != "uniform"] or result["layers"]
        laziest = min(formed, key=lambda r: r["max_rank"])["layer"]
        wanted = [0, n // 2, laziest, n - 1]
    return sorted({layer for layer in wanted if layer in result["_maps"]})


def _log_norm(values):
    from matplotlib.colors import LogNorm

    return LogNorm(vmin=max(1.0, float(np.min(values))), vmax=max(2.0, float(np.max(values))))


def render(fig) -> bytes:
    """The figure as PNG bytes (and closed)."""
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    _plt().close(fig)
    return buffer.getvalue()


def _save(fig, path: Path) -> Path:
    # whole or not at all: a full disk leaves the previous plot (or none), never a truncated PNG
    atomic_write(path, render(fig), "the plot")
    return path


def draw_emergence(records: list[dict], path: Path) -> Path | None:
    """emergence.png: MaxRank and first-token mass of every layer against tokens seen (attention.jsonl), with
    lazy measurements marked; how the attention of a model in training forms (or does not)."""
    if not records:
        return None
    plt = _plt()
    tokens = np.array([r["tokens"] for r in records], dtype=float)
    rank = np.array([[layer["max_rank"] for layer in r["layers"]] for r in records]).T  # [L, M]
    first = np.array([[layer["first_token_mass"] for layer in r["layers"]] for r in records]).T
    lazy = np.array([[layer["state"] == "lazy" for layer in r["layers"]] for r in records]).T
    n_layers, n = rank.shape
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.25 * n_layers + 3.2), sharey=True)
    extent = [0, n, n_layers - 0.5, -0.5]
    shown = axes[0].imshow(rank, aspect="auto", cmap="viridis_r", norm=_log_norm(rank), extent=extent,
                           interpolation="nearest")
    fig.colorbar(shown, ax=axes[0], label="MaxRank (log; 1 = one column)")
    shown = axes[1].imshow(first, aspect="auto", cmap="magma", vmin=0.0, vmax=max(0.5, float(first.max())),
                           extent=extent, interpolation="nearest")
    fig.colorbar(shown, ax=axes[1], label="mass on position 0 (t >= 16)")
    ticks = sorted({int(i) for i in np.linspace(0, n - 1, min(5, n)).round()})
    for ax, title in zip(axes, ("MaxRank by layer", "Mass on position 0 by layer")):
        ys, xs = np.nonzero(lazy)
        ax.scatter(xs + 0.5, ys, marker="o", s=18, facecolors="none", edgecolors="red", label="lazy")
        ax.set_xticks([i + 0.5 for i in ticks])
        ax.set_xticklabels([f"{tokens[i] / 1e6:.2g}M" for i in ticks])
        ax.set_yticks(range(0, n_layers, max(1, n_layers // 12)))
        ax.set_xlabel("tokens seen")
        ax.set_title(title)
    axes[0].set_ylabel("layer")
    if lazy.any():
        axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"Attention during training ({records[-1]['windows']} validation windows of {records[-1]['t']} "
                 "tokens; red circles: lazy)", y=0.99)
    return _save(fig, path)
