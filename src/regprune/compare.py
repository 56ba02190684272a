"""`regprune compare`: methods × ratios on one model from one config, as one table like the DReSS
paper's Table 1 (perplexity, zero-shot accuracy, parameters, speed), in JSON and Markdown.

The config is a sweep config (see `regprune.sweep`; variants such as `wanda-2of4` are labels with
`[options.<label>] method = ...`), and the run is a sweep: resumable cell by cell. What this module adds
is the layout: one row per (method, ratio), the dense model first, parameters as counted and as a
fraction of the dense model, and the speed ratios measured against the dense model in the same run.
What a ratio means depends on the method (hidden channels, blocks, or weights); the notes say so.
The output is locked from the first cell to compare.md (a second `sweep` / `compare` on it is refused at
once) and every file is written atomically; the tables are formatted by `regprune.formatting`.

    regprune compare compare.toml      # runs what is missing, writes <output>/compare.{json,md}
"""
from __future__ import annotations

import statistics
from pathlib import Path

from .errors import RegpruneError
from .formatting import fmt_acc, fmt_millions, fmt_pct, fmt_ppl, fmt_speedup, kv_text, or_missing, table_with_notes
from .io import atomic_write_json, atomic_write_text
from .sweep import DENSE, finished_cells, protocol_notes
from .sweep.runner import _as_config, _run_sweep, output_lock

RATIO_MEANING = {
    "dress": "hidden channels", "slice": "hidden channels", "slicegpt": "hidden (embedding) dimensions",
    "sleb": "transformer blocks", "shortgpt": "transformer blocks", "trsp": "transformer blocks",
    "magnitude": "weights of the block Linears (zeros, same shapes)", "wanda": "weights of the block Linears "
    "(zeros, same shapes)", "sparsegpt": "weights of the block Linears (zeros, same shapes)",
    "compresso": "parameters (heads, FFN channels, hidden channels)",
}


def _mean(values):
    values = [v for v in values if isinstance(v, (int, float))]
    return statistics.fmean(values) if values else None


def compare_rows(output_dir) -> tuple[list[dict], dict]:
    """One dict per (label, ratio) with the numbers of the table, seeds averaged; and the context."""
    cfg, results, methods, ratios, n_seeds = finished_cells(output_dir)
    dense = next((r for r in results if r["method"] == DENSE), None)
    dense_params = dense.get("parameters") if dense else None
    sources = list(dict.fromkeys(k for r in results for k in (r.get("perplexity") or {})))
    tasks = list(dict.fromkeys(k for r in results for k in (r.get("zeroshot") or {})))
    groups = [(DENSE, None)] + [(m, r) for m in methods for r in ratios]  # a label's missing ratios: no row
    rows = []
    for label, ratio in groups:
        rs = [r for r in results if r["method"] == label and (label == DENSE or r.get("ratio") == ratio)]
        if not rs:
            continue
        first = rs[0]
        method = DENSE if label == DENSE else first.get("method_name") or (first.get("spec") or {}).get("method", label)
        row = {"label": label, "method": method, "ratio": ratio, "seeds": len(rs),
               "ratio_of": RATIO_MEANING.get(method, "see the method") if label != DENSE else None,
               "parameters": _mean(r.get("parameters") for r in rs),
               "parameters_nonzero": _mean(r.get("parameters_nonzero", r.get("parameters")) for r in rs),
               "perplexity": {s: _mean((r.get("perplexity") or {}).get(s) for r in rs) for s in sources},
               "zeroshot": {t: _mean((r.get("zeroshot") or {}).get(t) for r in rs) for t in tasks},
               "mean_acc": _mean(r.get("mean_acc") for r in rs),
               "prune_seconds": _mean(r.get("prune_seconds") for r in rs)}
        if dense_params:
            row["parameter_fraction"] = row["parameters"] / dense_params
            row["nonzero_fraction"] = row["parameters_nonzero"] / dense_params
        sp = [r.get("speed") for r in rs if isinstance(r.get("speed"), dict)]
        timed = [(s.get("models") or {}).get("model") or {} for s in sp]  # run_eval's name for the pruned model
        row["speed"] = {
            "prompt_speedup": _mean(x.get("speedup_prompt") for x in timed),
            "generation_speedup": _mean(x.get("speedup_generation") for x in timed),
            "ideal_linear_speedup": _mean(s.get("ideal_linear_speedup") for s in sp),
        } if sp else None
        rows.append(row)
    context = {"config": cfg, "sources": sources, "tasks": tasks, "n_seeds": n_seeds,
               "notes": protocol_notes(cfg, results, methods) if results else [],
               "speed_protocol": next((r["speed"].get("protocol") for r in results
                                       if isinstance(r.get("speed"), dict)), None)}
    return rows, context


def compare_markdown(rows: list[dict], context: dict) -> str:
    sources, tasks = context["sources"], context["tasks"]
    has_speed = any(r.get("speed") for r in rows)
    has_nonzero = any(r.get("parameters_nonzero") != r.get("parameters") for r in rows)
    head = ["method", "ratio", "params (M)", "% dense"] + (["nonzero %"] if has_nonzero else []) \
        + [f"PPL {s} ↓" for s in sources] + [f"{t} ↑" for t in tasks] + (["mean acc ↑"] if tasks else []) \
        + (["prompt ×", "generation ×", "linear ideal ×"] if has_speed else [])
    body = []
    for r in rows:
        cells = [r["label"], or_missing(r["ratio"], lambda v: f"{v:g}"), fmt_millions(r["parameters"]),
                 fmt_pct(r.get("parameter_fraction", float("nan")))]
        if has_nonzero:
            cells.append(fmt_pct(r.get("nonzero_fraction", float("nan"))))
        cells += [or_missing(r["perplexity"].get(s), fmt_ppl) for s in sources]
        cells += [or_missing(r["zeroshot"].get(t), fmt_acc) for t in tasks]
        if tasks:
            cells.append(or_missing(r["mean_acc"], fmt_acc))
        if has_speed:
            sp = r.get("speed") or {}
            cells += [fmt_speedup(sp.get(k)) for k in ("prompt_speedup", "generation_speedup", "ideal_linear_speedup")
                      ] if r["label"] != DENSE else [fmt_speedup(1.0)] * 3
        body.append(cells)
    notes = []
    meaning = {}
    for r in rows:
        if r["label"] != DENSE:
            meaning.setdefault(r["ratio_of"], set()).add(r["label"])
    notes.append("Ratio = fraction removed of: " + "; ".join(
        f"{what} ({', '.join(sorted(labels))})" for what, labels in meaning.items()) + ".")
    if has_nonzero:
        notes.append("nonzero % = parameters that are not exact zeros (unstructured / 2:4 sparsity keeps dense "
                     "shapes; no speed-up without sparse kernels).")
    if has_speed:
        sp = context.get("speed_protocol") or {}
        notes.append("Speed = dense time / pruned time, each pruned model timed interleaved with the dense model "
                     "in the same process: " + kv_text(sp) + ". "
                     "Linear ideal = dense / pruned multiply-adds of the Linear layers (LM head included).")
    notes += context["notes"]
    return table_with_notes(head, body, notes)


def _write_compare(out: Path) -> dict:
    rows, context = compare_rows(out)
    md = compare_markdown(rows, context)
    atomic_write_json(out / "compare.json", {"rows": rows, "sources": context["sources"], "tasks": context["tasks"],
                                             "notes": context["notes"], "speed_protocol": context["speed_protocol"],
                                             "config": context["config"]})
    model = (context["config"] or {}).get("model", "?")
    atomic_write_text(out / "compare.md", f"# Comparison on {model}\n\n" + md)
    return {"rows": rows, "markdown": md}


def write_compare(output_dir) -> dict:
    """Rewrite compare.{json,md} of a sweep output from its finished cells (holding the output's lock)."""
    out = Path(output_dir)
    if not out.is_dir():
        raise RegpruneError(f"sweep output {out} not found")
    with output_lock(out):
        return _write_compare(out)


def run_compare(config, *, resume: bool = True) -> dict:
    """Run (or resume) the comparison described by a sweep config and write compare.{json,md}; the output is
    locked from the first cell to the last file."""
    cfg = _as_config(config)
    with output_lock(cfg["output"]) as out:
        res = _run_sweep(cfg, resume=resume)
        table = _write_compare(out)
    return {**res, "compare": table}
