"""`losses.png`: the curves of a run, drawn from its `metrics.jsonl`.

One figure, one panel per concern, shared step axis:
  - d/loss and g/loss
  - d/wasserstein (the critic's real-minus-fake estimate), when logged
  - d/gp (gradient penalty), when logged
  - gradient norms (d/grad_norm, g/grad_norm, d/gp_grad_norm), log scale
  - train/images_per_sec

Called by the training loop at every `sample_every` and at the end, so it must be fast and must
never raise: any problem is logged and the plot skipped. matplotlib is imported lazily with the
Agg canvas (no display needed, pyplot's global state untouched).
"""
from __future__ import annotations

import json
import logging
import math
import os

_log = logging.getLogger(__name__)

# (title, metric keys, log-scale y) in drawing order; a panel without data is left out.
PANELS = (
    ("losses", ("d/loss", "g/loss"), False),
    ("Wasserstein estimate (critic real - fake)", ("d/wasserstein",), False),
    ("gradient penalty", ("d/gp",), False),
    ("gradient norms", ("d/grad_norm", "g/grad_norm", "d/gp_grad_norm"), True),
    ("images / second", ("train/images_per_sec",), False),
)


def read_metrics(path: str) -> dict[str, tuple[list[int], list[float]]]:
    """{metric: (steps, values)} from a metrics.jsonl; bad or partial lines are skipped.

    A line cut short by a crash (the last one) or any non-JSON line is ignored, and so are
    non-numeric and non-finite values (a NaN would wreck the axis limits).
    """
    series: dict[str, tuple[list[int], list[float]]] = {}
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
                step = int(row["step"])
            except (ValueError, KeyError, TypeError):
                continue
            if not isinstance(row, dict):
                continue
            for key, value in row.items():
                if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                if not math.isfinite(value):
                    continue
                steps, values = series.setdefault(key, ([], []))
                steps.append(step)
                values.append(float(value))
    return series


def plot_losses(metrics_jsonl_path: str, out_png: str) -> str | None:
    """Draws the panels of `metrics_jsonl_path` into `out_png`; returns out_png or None.

    Never raises: a missing or empty file, a missing matplotlib or a failed write is logged at
    WARNING (missing data at DEBUG) and returns None, so training goes on.
    """
    try:
        if not os.path.exists(metrics_jsonl_path):
            _log.debug("no %s yet; losses plot skipped", metrics_jsonl_path)
            return None
        series = read_metrics(metrics_jsonl_path)
        panels = [(title, [k for k in keys if k in series], log_y)
                  for title, keys, log_y in PANELS]
        panels = [p for p in panels if p[1]]
        if not panels:
            _log.debug("no plottable metrics in %s; losses plot skipped", metrics_jsonl_path)
            return None
        _draw(series, panels, out_png)
        return out_png
    except Exception as e:  # logging must never stop training
        _log.warning("could not write %s: %s: %s", out_png, type(e).__name__, e)
        return None


def _draw(series, panels, out_png: str) -> None:
    # No pyplot: no global backend switch, no GUI, no figure registry; the Agg canvas is
    # attached explicitly, so this works headless and from any thread.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # Fixed margins, not constrained/tight layout: those measure every tick label and cost
    # seconds per figure; this keeps a 1000-line log under a second.
    height = 2.0 * len(panels) + 0.6
    fig = Figure(figsize=(7, height), dpi=90)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.1, right=0.98, top=1 - 0.3 / height, bottom=0.45 / height,
                        hspace=0.35)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (title, keys, log_y) in zip(axes, panels):
        for key in keys:
            steps, values = series[key]
            ax.plot(steps, values, label=key, linewidth=1.0,
                    marker="." if len(steps) < 30 else None)
        if log_y and all(v > 0 for k in keys for v in series[k][1]):
            ax.set_yscale("log")
        if title.startswith("Wasserstein"):
            ax.axhline(0.0, color="grey", linewidth=0.6, linestyle="--")
        ax.set_title(title, fontsize=9, loc="left")
        ax.tick_params(labelsize=8)
        ax.grid(True, alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=8, loc="upper right")  # "best" scans every point: slow
    axes[-1].set_xlabel("step", fontsize=9)
    out_dir = os.path.dirname(os.path.abspath(out_png))
    os.makedirs(out_dir, exist_ok=True)
    tmp = os.path.join(out_dir, f".{os.path.basename(out_png)}.{os.getpid()}.tmp.png")
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, out_png)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)  # a viewer (or a kill -9) never sees a half-written PNG
