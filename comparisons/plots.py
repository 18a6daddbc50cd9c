"""A comparison's figures: each backend's outputs against the reference's, and its residuals in units of σ.

If the reported standard errors explain the differences, the residuals z = (y − r)/√(σ_y² + σ_r²) follow
N(0, 1): the histogram is drawn over that density, so a too-wide or shifted one is device noise left
uncorrected (see ``agreement``).
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
