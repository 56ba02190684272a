"""PNG plots of a report (matplotlib, Agg backend: no display needed).

Each function returns the path it wrote, or None when the runs hold nothing to plot (then the report
leaves the plot out rather than drawing an empty or made-up one).
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .runs import DenseRow, Measurements, Run  # noqa: E402

# Order of matrix panels (a block reads the residual stream, attends, writes; then the MLP likewise).
MATRIX_ORDER = ["input_layernorm", "q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj", "post_attention_layernorm",
                "gate_proj", "up_proj", "gate_up_proj", "down_proj"]
SELECTED_COLOR, KEPT_COLOR = "tab:red", "tab:blue"


def colors_for(labels: list[str]) -> dict[str, str]:
    cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    return {lab: matplotlib.colors.to_hex(cmap(i % cmap.N)) for i, lab in enumerate(labels)}


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


def _grid(n: int, ncols: int, w: float = 4.2, h: float = 3.2):
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _metric(meas: Measurements, kind: str, key: str):
    if kind == "mean_acc":
        return meas.mean_acc
    return getattr(meas, kind).get(key)


def plot_vs_ratio(runs: list[Run], dense: list[DenseRow], panels: list[tuple[str, str, str]],
                  path: Path, colors: dict[str, str], *, percent: bool = False, ylabel: str = "") -> Path | None:
    """One panel per (kind, key, title); one line per series label; x = pruning ratio; dense dashed.

    Several runs with the same label and ratio (seeds) are drawn as their mean with a +-1 std bar.
    """
    pruned = [r for r in runs if r.kind == "pruned" and r.ratio is not None]
    panels = [p for p in panels if any(_metric(r.measured, p[0], p[1]) for r in pruned)]
    if not panels:
        return None
    scale = 100.0 if percent else 1.0
    fig, axes = _grid(len(panels), 3)
    for ax, (kind, key, title) in zip(axes, panels):
        values_all = []
        labels = sorted({r.label for r in pruned}, key=list(colors).index)
        for lab in labels:
            pts: dict[float, list[float]] = {}
            for r in pruned:
                m = _metric(r.measured, kind, key)
                if r.label == lab and m is not None:
                    pts.setdefault(r.ratio, []).append(m.value * scale)
            if not pts:
                continue
            xs = sorted(pts)
            ys = [statistics.fmean(pts[x]) for x in xs]
            es = [statistics.stdev(pts[x]) if len(pts[x]) > 1 else 0.0 for x in xs]
            values_all += ys
            ax.errorbar(xs, ys, yerr=es if any(es) else None, marker="o", capsize=3, color=colors[lab], label=lab)
        for i, row in enumerate(dense):
            m = _metric(row.measured, kind, key)
            if m is None:
                continue
            v = m.value * scale
            values_all.append(v)
            name = "dense" if len(dense) == 1 else f"dense ({row.model})"
            ax.axhline(v, color="0.35", ls=("--", ":", "-.")[i % 3], lw=1.2, label=name)
            ax.plot([0.0], [v], marker="*", ms=10, color="0.35", ls="none")
        has_dense = any(_metric(d.measured, kind, key) for d in dense)
        ratios = sorted({r.ratio for r in pruned} | ({0.0} if has_dense else set()))
        ax.set_xticks(ratios)
        ax.set_xlim(min(ratios) - 0.05, max(ratios) + 0.05)
        positive = [v for v in values_all if v > 0]
        if kind == "ppl" and positive and max(positive) / min(positive) > 20:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("pruning ratio (fraction of hidden channels removed)", fontsize=8)
        ax.set_ylabel(ylabel, fontsize=9)
        ax.grid(alpha=0.3)
    return _legend_and_save(fig, axes, path)


def _matrix_key(m: str) -> tuple:
    return (MATRIX_ORDER.index(m), m) if m in MATRIX_ORDER else (len(MATRIX_ORDER), m)


def plot_magnitudes(run: Run, path: Path) -> Path | None:
    """Per matrix type and layer: RMS after / before regularization of the selected and the kept slices."""
    rows = run.magnitudes
    layered = [r for r in rows if r.get("layer") is not None]
    glob = [r for r in rows if r.get("layer") is None]
    matrices = sorted({r["matrix"] for r in layered}, key=_matrix_key)
    n = len(matrices) + (1 if glob else 0)
    if n == 0:
        return None
    fig, axes = _grid(n, 4, w=3.6, h=2.8)
    for ax, mat in zip(axes, matrices):
        mrows = sorted((r for r in layered if r["matrix"] == mat), key=lambda r: r["layer"])
        for key, color, marker, name in (("selected_ratio", SELECTED_COLOR, "o", "regularized (removed) channels"),
                                         ("kept_ratio", KEPT_COLOR, "s", "kept channels")):
            pts = [(r["layer"], r[key]) for r in mrows if isinstance(r.get(key), (int, float))]
            if pts:
                ax.plot(*zip(*pts), marker=marker, ms=4, color=color, label=name)
        ax.axhline(1.0, color="0.6", lw=0.8, ls=":")
        ax.set_title(mat, fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("layer", fontsize=8)
        ax.set_ylabel("RMS after / before", fontsize=8)
        ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]))
        ax.grid(alpha=0.3)
    if glob:
        ax = axes[-1]
        names = [r["matrix"] for r in glob]
        xs = range(len(glob))
        sel = [r.get("selected_ratio") if isinstance(r.get("selected_ratio"), (int, float)) else math.nan for r in glob]
        kept = [r.get("kept_ratio") if isinstance(r.get("kept_ratio"), (int, float)) else math.nan for r in glob]
        ax.bar([x - 0.2 for x in xs], sel, width=0.4, color=SELECTED_COLOR, label="regularized (removed) channels")
        ax.bar([x + 0.2 for x in xs], kept, width=0.4, color=KEPT_COLOR, label="kept channels")
        ax.set_xticks(list(xs), names, rotation=20, fontsize=8)
        ax.axhline(1.0, color="0.6", lw=0.8, ls=":")
        ax.set_title("outside the blocks", fontsize=10)
        ax.set_ylabel("RMS after / before", fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    h, lab = axes[0].get_legend_handles_labels()
    nrows = math.ceil(n / 4)
    top = 1 - 0.5 / (2.8 * nrows)  # room for the title and the legend, about half an inch
    fig.suptitle(f"{run.name}: slice RMS after / before regularization", y=0.995, fontsize=11)
    fig.legend(h, lab, loc="upper center", ncol=2, fontsize=9, bbox_to_anchor=(0.5, top + 0.02), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, top - 0.01))
    return _save(fig, path)


def plot_layer_weights(run: Run, path: Path) -> Path | None:
    """Per block: the learned weight (TRSP stage-1 alpha), the removed blocks highlighted; and, where recorded,
    each block's identity gap ||out - in||^2 / ||in||^2 before and after stage 2 (log scale)."""
    w = run.layer_weights
    if not w:
        return None
    removed = set(run.removed_layers)
    gaps = [run.details.get(k) for k in ("identity_gap_before", "identity_gap_after")]
    has_gaps = all(isinstance(g, list) and len(g) == len(w) and all(isinstance(x, (int, float)) for x in g)
                   for g in gaps)
    fig, axes = _grid(2 if has_gaps else 1, 1, w=max(6.0, 0.28 * len(w)), h=3.0)
    xs = list(range(len(w)))
    colors = [SELECTED_COLOR if i in removed else KEPT_COLOR for i in xs]
    ax = axes[0]
    ax.bar(xs, w, color=colors)
    ax.axhline(1.0, color="0.6", lw=0.8, ls=":")
    ax.axhline(0.0, color="0.3", lw=0.8)
    ax.set_ylabel("learned weight alpha", fontsize=9)
    ax.set_title(f"{run.name}: per-block weights after stage 1 (red: removed)", fontsize=10)
    if has_gaps:
        ax = axes[1]
        ax.bar([x - 0.2 for x in xs], gaps[0], width=0.4, color="0.6", label="before stage 2")
        ax.bar([x + 0.2 for x in xs], gaps[1], width=0.4, color=colors, label="after stage 2 (red: removed)")
        ax.set_yscale("log")
        ax.set_ylabel("||out - in||² / ||in||²", fontsize=9)
        ax.set_title("identity gap per block", fontsize=10)
        ax.legend(fontsize=8)
    for ax in axes:
        ax.set_xticks(xs)
        ax.tick_params(axis="x", labelsize=7)
        ax.set_xlabel("block", fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return _save(fig, path)


TRAINING_PANELS = [
    ("history", "lm_loss", "LM loss (regularization run)"),
    ("history", "reg_loss", "regularization loss (normalized)"),
    ("history", "extra_loss", "penalty added to the loss (mode=loss)"),
    ("history", "energy_left", "energy left in the selected channels"),
    ("history", "alpha_l1", "TRSP stage 1: sum of |layer weights|"),
    ("history", "gap_left", "TRSP stage 2: identity gap of the removed blocks / its start"),
    ("recovery", "lm_loss", "recovery (LoRA): LM loss"),
    ("recovery", "eval_loss", "recovery (LoRA): held-out eval loss"),
]


def plot_training(runs: list[Run], path: Path, colors: dict[str, str]) -> Path | None:
    """LM loss, regularization loss, energy left vs step (one line per run), and the recovery losses."""
    def series(r: Run, where: str, key: str):
        h = r.history if where == "history" else r.recovery_history
        return [(row["step"], row[key]) for row in h if isinstance(row.get(key), (int, float))]

    panels = [p for p in TRAINING_PANELS if any(series(r, p[0], p[1]) for r in runs)]
    if not panels:
        return None
    fig, axes = _grid(len(panels), 3)
    for ax, (where, key, title) in zip(axes, panels):
        for r in runs:
            pts = series(r, where, key)
            if pts:
                ax.plot(*zip(*pts), marker="." if len(pts) < 40 else None, color=colors[r.name], label=r.name)
        ax.set_title(title, fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("optimizer step", fontsize=8)
        ax.grid(alpha=0.3)
    return _legend_and_save(fig, axes, path)


def _legend_and_save(fig, axes, path):
    handles, labels = [], []
    for ax in axes:  # one legend for the figure, each entry once
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8,
               bbox_to_anchor=(0.5, -0.02 - 0.03 * math.ceil(len(labels) / 4)))
    fig.tight_layout()
    return _save(fig, path)
