"""A Markdown report with plots from one or more run directories.

    from regprune.report import write_report
    write_report(["runs/dress-r0.25", "runs/dress-r0.5", "runs/slice-r0.25"], "runs/report")

A run directory holds `regprune.json` (a pruned model, or a regprune.sweep cell) and/or `eval.json` (from
`regprune eval --json`); a directory with neither is refused. An eval.json without regprune.json is taken as
the dense reference when it evaluates the model the pruned runs started from (or is a sweep's `dense`
cell); otherwise it is listed as an evaluation of an unknown model. Whatever a run does not hold (zero-shot
accuracies, speed, training history, recovery, slice magnitudes) is left out of the report, never filled in.

Written to `out_dir` (checked writable before any work; report.md last, atomically, after its plots):
`report.md` and the PNG plots it links to by relative path:
- `ppl_vs_ratio.png`, `zeroshot_vs_ratio.png`: metric against pruning ratio, one line per method;
- `magnitudes_<run>.png`: for DReSS runs, RMS after/before regularization of the removed and the kept
  slices, per matrix type and layer (the DReSS paper's Figures 3 and 6);
- `layer_weights_<run>.png`: for TRSP runs, the learned weight of every block (removed ones highlighted) and
  each block's identity gap before/after stage 2;
- `training_curves.png`: LM loss, regularization loss, energy left, recovery losses per step.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from ..errors import RegpruneError
from ..io import atomic_write_text, check_writable
from .runs import Run, dense_rows, load_runs

__all__ = ["write_report", "load_runs", "Run"]


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "run"


def write_report(run_dirs, out_dir) -> Path:
    """Write `out_dir/report.md` and its PNG plots for the given run directories; return report.md's path.

    The output is checked first (it can be written), then every run directory, before anything is
    written. The plots are drawn in a hidden staging directory and moved in only when all of them are done;
    report.md is written last, atomically: a failure leaves no report.md pointing at missing plots."""
    if isinstance(run_dirs, (str, os.PathLike)):
        run_dirs = [run_dirs]
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RegpruneError(f"report output {out} exists and is not a directory")
    check_writable(out, "report output")
    runs = load_runs(list(run_dirs))  # validates every directory before anything is written
    try:
        from . import plots
    except ImportError as e:  # pragma: no cover - matplotlib is a dependency of the report only
        raise RegpruneError(f"the report needs matplotlib ({e}); install it with `pip install matplotlib`") from None
    from .markdown import render

    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".report-plots-"))
    try:
        dense = dense_rows(runs)
        text = render(runs, dense, _plot_all(plots, runs, dense, staging))
        for png in sorted(staging.iterdir()):
            os.replace(png, out / png.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return atomic_write_text(out / "report.md", text)


def _plot_all(plots, runs: list[Run], dense: list, where: Path) -> dict:
    """Draw every plot the runs have data for into `where`; {kind: path or None (or {run: path})}."""
    label_colors = plots.colors_for(list(dict.fromkeys(r.label for r in runs if r.kind == "pruned")))
    run_colors = plots.colors_for([r.name for r in runs])

    ppl_keys = list(dict.fromkeys(k for r in runs for k in r.measured.ppl))
    acc_keys = list(dict.fromkeys(k for r in runs for k in r.measured.acc))
    made: dict = {"magnitudes": {}}
    made["ppl"] = plots.plot_vs_ratio(runs, dense, [("ppl", k, f"perplexity, {k}") for k in ppl_keys],
                                      where / "ppl_vs_ratio.png", label_colors, ylabel="perplexity ↓")
    acc_panels = [("acc", k, f"zero-shot accuracy, {k}") for k in acc_keys]
    if acc_panels:
        acc_panels.append(("mean_acc", "", "mean zero-shot accuracy"))
    made["acc"] = plots.plot_vs_ratio(runs, dense, acc_panels, where / "zeroshot_vs_ratio.png", label_colors,
                                      percent=True, ylabel="accuracy (%) ↑")
    made["layer_weights"] = {}
    stems: set[str] = set()
    for r in runs:
        if r.magnitudes or r.layer_weights:
            stem = _file_stem(r.name)
            while stem in stems:
                stem += "_"
            stems.add(stem)
        if r.magnitudes:
            made["magnitudes"][r.name] = plots.plot_magnitudes(r, where / f"magnitudes_{stem}.png")
        if r.layer_weights:
            made["layer_weights"][r.name] = plots.plot_layer_weights(r, where / f"layer_weights_{stem}.png")
    made["training"] = plots.plot_training(runs, where / "training_curves.png", run_colors)
    return made
