"""A comparison's figures: each backend's outputs against the reference's, its residuals in units of σ, and
where in the model its errors arise.

If the reported standard errors explain the differences, the residuals z = (y − r)/√(σ_y² + σ_r²) follow
N(0, 1): the histogram is drawn over that density, so a too-wide or shifted one is device noise left
uncorrected (see ``agreement``). The per-edge heatmaps show which edges' circuits land far from the
reference: a bright column is one input's encoding, a single bright cell one circuit (or the qubits it ran on).
"""

from typing import Any

import numpy as np

Result = tuple[np.ndarray, np.ndarray]  # outputs and their standard errors


def _pyplot() -> Any:  # matplotlib.pyplot, imported (with the Agg backend) only when a figure is drawn
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_outputs(reference: Result, results: dict[str, Result], path: str, reference_name: str) -> None:
    """Per backend: outputs (± σ) against the reference's, with the diagonal."""
    plt = _pyplot()
    ref = reference[0].ravel()
    lo, hi = float(ref.min()) - 0.1, float(ref.max()) + 0.1
    cols = max(1, min(4, len(results)))
    rows = -(-len(results) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False, sharex=True, sharey=True)
    for ax, (name, (y, se)) in zip(axes.flat, results.items(), strict=False):
        ax.plot([lo, hi], [lo, hi], color="0.6", lw=1)
        ax.errorbar(ref, y.ravel(), yerr=se.ravel(), fmt="o", ms=3, lw=0.8, capsize=0)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(reference_name)
    for ax in axes[:, 0]:
        ax.set_ylabel("output")
    for ax in list(axes.flat)[len(results):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_residuals(reference: Result, results: dict[str, Result], path: str) -> None:
    """Per backend: the histogram of z over the N(0, 1) density."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, max(1, len(results)), figsize=(3.2 * max(1, len(results)), 3.0), squeeze=False)
    grid = np.linspace(-4, 4, 200)
    for ax, (name, (y, se)) in zip(axes[0], results.items(), strict=False):
        spread = np.sqrt(se.ravel() ** 2 + reference[1].ravel() ** 2)
        z = np.divide(y.ravel() - reference[0].ravel(), spread, out=np.zeros(spread.shape), where=spread > 0)
        ax.hist(np.clip(z, -6, 6), bins=24, range=(-6, 6), density=True, color="tab:blue", alpha=0.7)
        ax.plot(grid, np.exp(-grid**2 / 2) / np.sqrt(2 * np.pi), color="0.2", lw=1, label="N(0, 1)")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("(output − reference) / σ")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_edge_errors(errors: dict[str, list[np.ndarray]], path: str) -> None:
    """Per backend (a row) and QKAN layer (a column): each edge's activation RMSE vs the reference (out × in,
    from ``edge_rmse``), on one colour scale so backends and layers compare at a glance."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator  # after _pyplot has chosen the Agg backend

    layers = max((len(per_layer) for per_layer in errors.values()), default=0)
    rows, cols = max(1, len(errors)), max(1, layers)
    top = max((float(e.max()) for per_layer in errors.values() for e in per_layer if e.size), default=0.0) or 1.0
    fig, axes = plt.subplots(rows, cols, figsize=(2.8 * cols + 0.8, 2.4 * rows), squeeze=False, layout="constrained")
    image = None
    for row, (name, per_layer) in zip(axes, errors.items(), strict=False):
        for k, ax in enumerate(row):
            if k >= len(per_layer):
                ax.set_visible(False)
                continue
            image = ax.imshow(per_layer[k], cmap="viridis", vmin=0.0, vmax=top, interpolation="nearest")
            ax.set_title(f"{name} · layer {k}", fontsize=8)
            ax.set_xlabel("in", fontsize=8)
            ax.set_ylabel("out", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), label="activation RMSE vs reference", shrink=0.8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
