"""Charts as SVG geometry, computed here and drawn by the templates: no chart library, no script needed to see
them. Every mark carries its data (``data-*`` attributes and a title), which is what hovering shows and what a
test counts.

All charts use a viewBox of ``WIDTH`` × ``HEIGHT`` user units and scale to their container.
"""

from dataclasses import dataclass
from datetime import datetime

import numpy as np

WIDTH, HEIGHT, MARGIN = 600.0, 480.0, 36.0
PALETTE = ("#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#db2777", "#0891b2", "#65a30d")


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    value: int
    label: str


def throughput_bars(per_minute: list[int], height: float = 120.0) -> list[Bar]:
    """Jobs finished per minute over the last hour, oldest on the left."""
    top = max(max(per_minute, default=0), 1)
    step = WIDTH / max(len(per_minute), 1)
    bars = []
    for i, n in enumerate(per_minute):
        h = (height - 4.0) * n / top
        ago = len(per_minute) - i
        bars.append(Bar(x=i * step + 1.0, y=height - h, width=step - 2.0, height=h, value=n,
                        label=f"{n} finished {ago - 1}–{ago} min ago"))
    return bars


@dataclass(frozen=True)
class Point:
    """One output of one sample on one backend: plotted at (reference, value), error bar ± σ."""

    cx: float
    cy: float
    top: float
    bottom: float
    series: int
    backend: str
    tip: str


@dataclass(frozen=True)
class Scatter:
    points: list[Point]
    series: list[tuple[str, str]]  # backend, colour
    diagonal: tuple[float, float, float, float]  # x1, y1, x2, y2 of y = x
    ticks: list[tuple[float, float, str]]  # x (or y) position, value label: the same on both axes
    colours: tuple[str, ...] = PALETTE


def scatter(inputs: np.ndarray, reference: np.ndarray, results: dict[str, tuple[np.ndarray, np.ndarray]]) -> Scatter:
    """Each backend's outputs (± σ) against the reference's, one point per (sample, output, backend); both axes
    span every error bar, so none is cut off."""
    values = [reference.ravel()] + [(r[0] + sign * r[1]).ravel() for r in results.values() for sign in (-1, 1)]
    lo = float(min(v.min() for v in values))
    hi = float(max(v.max() for v in values))
    pad = 0.05 * (hi - lo or 1.0)
    lo, hi = lo - pad, hi + pad

    def sx(v: float) -> float:
        return MARGIN + (v - lo) / (hi - lo) * (WIDTH - 2 * MARGIN)

    def sy(v: float) -> float:
        return HEIGHT - MARGIN - (v - lo) / (hi - lo) * (HEIGHT - 2 * MARGIN)

    points = []
    outputs = reference.shape[1] if reference.ndim == 2 else 1
    ref = reference.reshape(len(inputs), outputs)
    for s, (backend, (out, err)) in enumerate(results.items()):
        out, err = out.reshape(ref.shape), err.reshape(ref.shape)
        for i, j in np.ndindex(ref.shape):
            x = ", ".join(f"{v:.3g}" for v in inputs[i])
            output = f" output {j}" if outputs > 1 else ""
            points.append(Point(
                cx=sx(ref[i, j]), cy=sy(out[i, j]), top=sy(out[i, j] + err[i, j]), bottom=sy(out[i, j] - err[i, j]),
                series=s % len(PALETTE), backend=backend,
                tip=f"{backend}{output} at input ({x}): {out[i, j]:.4f} ± {err[i, j]:.4f}, reference {ref[i, j]:.4f}"))
    ticks = [(sx(v), sy(v), label) for v, label in nice_ticks(lo, hi)]
    return Scatter(points=points, series=[(b, PALETTE[s % len(PALETTE)]) for s, b in enumerate(results)],
                   diagonal=(sx(lo), sy(lo), sx(hi), sy(hi)), ticks=ticks)


def nice_ticks(lo: float, hi: float, about: int = 5) -> list[tuple[float, str]]:
    """Round values inside [lo, hi], a step of 1, 2 or 5 × 10^k, labelled with the decimals that step needs."""
    raw = (hi - lo) / about
    power = 10.0 ** np.floor(np.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    decimals = max(0, -int(np.floor(np.log10(step))))
    values = np.arange(np.ceil(lo / step) * step, hi + step * 1e-9, step)
    return [(float(v), f"{v:.{decimals}f}") for v in values]


@dataclass(frozen=True)
class Span:
    """A stretch of a job's life on the timeline: queued, or one round from submission to absorption."""

    x: float
    width: float
    row: int
    label: str
    kind: str  # queued | round | open


def timeline(created: datetime, started: datetime | None, finished: datetime | None,
             rounds: list[tuple[int, datetime, datetime | None]], now: datetime) -> tuple[list[Span], float]:
    """Spans scaled to the job's life so far (to its end once it ended); returns them and the seconds the width
    stands for."""
    end = finished or now
    total = max((end - created).total_seconds(), 1e-3)

    def x(t: datetime) -> float:
        return (t - created).total_seconds() / total * WIDTH

    queued_until = started or end
    spans = [Span(0.0, max(x(queued_until), 1.5), 0, f"queued {(queued_until - created).total_seconds():.2f} s",
                  "queued")]
    for number, submitted, absorbed in rounds:
        stop = absorbed or end
        seconds = (stop - submitted).total_seconds()
        label = (f"round {number}: submitted +{(submitted - created).total_seconds():.2f} s, "
                 + (f"absorbed after {seconds:.2f} s" if absorbed else f"waiting {seconds:.2f} s"))
        spans.append(Span(x(submitted), max(x(stop) - x(submitted), 1.5), number + 1, label,
                          "round" if absorbed else "open"))
    return spans, total
