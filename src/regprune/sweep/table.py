"""The sweep table (one row per method, columns per ratio) and the protocol notes under it."""
from __future__ import annotations

import json
import statistics

from ..formatting import (MISSING, fmt_acc, fmt_count, fmt_ppl, is_num, kv_text, ppl_protocol_text,
                          table_with_notes)
from ..record import flatten
from .cells import DENSE, finished_cells


def _agg(values: list[float], fmt, expected: int) -> str:
    if not values:
        return MISSING
    s = fmt(statistics.fmean(values))
    if len(values) > 1:
        s += f" ± {fmt(statistics.stdev(values))}"
    return s + ("*" if len(values) < expected else "")


def sweep_table(output_dir) -> str:
    """Markdown table of a sweep's finished cells: one row per method (and dense), columns per ratio.

    Each ratio group has the perplexities, the zero-shot accuracies and their mean; several seeds are
    averaged (mean ± sample std). Deterministic: the same finished cells give the same text.
    """
    cfg, results, methods, ratios, n_seeds = finished_cells(output_dir)
    if not results:
        return "_No finished cells yet._\n"
    dense = next((r for r in results if r["method"] == DENSE), None)
    sources = list(dict.fromkeys(k for r in results for k in (r.get("perplexity") or {})))
    tasks = list(dict.fromkeys(k for r in results for k in (r.get("zeroshot") or {})))
    has_mean = any(r.get("mean_acc") is not None for r in results)
    metrics = ([("ppl", s, f"PPL {s} ↓") for s in sources] + [("acc", t, f"{t} ↑") for t in tasks]
               + ([("mean", "", "mean acc ↑")] if has_mean else []))
    if not metrics:
        metrics = [("params", "", "parameters")]

    def values(rs: list[dict], kind: str, key: str) -> list[float]:
        got = []
        for r in rs:
            v = (r.get("perplexity") or {}).get(key) if kind == "ppl" else \
                (r.get("zeroshot") or {}).get(key) if kind == "acc" else \
                r.get("mean_acc") if kind == "mean" else r.get("parameters")
            if is_num(v):
                got.append(float(v))
        return got

    fmts = {"ppl": fmt_ppl, "acc": fmt_acc, "mean": fmt_acc, "params": fmt_count}
    header = ["method"] + [f"{r:g} · {title}" for r in ratios for _, _, title in metrics]
    rows = []
    if dense is not None:
        rows.append(["dense"] + [_agg(values([dense], k, key), fmts[k], 1) for _ in ratios for k, key, _ in metrics])
    for m in methods:
        row = [m]
        for ratio in ratios:
            rs = [r for r in results if r["method"] == m and r.get("ratio") == ratio]
            row += [_agg(values(rs, k, key), fmts[k], n_seeds) for k, key, _ in metrics]
        rows.append(row)

    starred = any(c.endswith("*") for row in rows for c in row)
    head = [f"Columns grouped by pruning ratio (fraction of hidden channels removed: "
            f"{', '.join(f'{r:g}' for r in ratios)})."]
    head.append(f"Mean ± sample std over {n_seeds} seeds." if n_seeds > 1 else "One seed.")
    if starred:
        head.append("* = fewer seeds finished than configured.")
    if tasks or has_mean:
        head.append("Accuracies in percent.")
    return table_with_notes(header, rows, [" ".join(head)] + protocol_notes(cfg, results, methods))


def protocol_notes(cfg: dict | None, results: list[dict], methods: list[str]) -> list[str]:
    """One line per protocol fact of the finished cells: evaluation, calibration, model, method settings."""
    notes = []
    sources = list(dict.fromkeys(k for r in results for k in (r.get("perplexity") or {})))
    protos: dict[str, set[str]] = {}
    for r in results:
        for s, p in ((r.get("protocols") or {}).get("perplexity") or {}).items():
            protos.setdefault(s, set()).add(ppl_protocol_text(p, brief=True))
    for s in sources:
        ps = sorted(protos.get(s, {"protocol not recorded"}))
        notes.append(f"PPL {s}: {ps[0]}." if len(ps) == 1 else
                     f"PPL {s}: several protocols in these cells (not comparable): {' | '.join(ps)}.")
    zs = {json.dumps((r.get("protocols") or {}).get("zeroshot"), sort_keys=True) for r in results
          if (r.get("protocols") or {}).get("zeroshot")}
    for z in sorted(zs):
        zd = json.loads(z)
        per_task = ", ".join(f"{t}: n={v.get('n')} ({v.get('split')})" for t, v in (zd.get("tasks") or {}).items())
        notes.append("Zero-shot: " + kv_text(zd.get("protocol") or {}) + (f"; {per_task}" if per_task else "") + ".")
    cal = set()
    for r in results:
        c = r.get("calibration")
        if isinstance(c, dict) and c:
            # Records made before distinct sampling have no 'sampling': theirs were random offsets.
            how = ("non-overlapping, drawn without replacement" if c.get("sampling") == "distinct"
                   else "at random offsets")
            cal.add(f"{c.get('source')}, {c.get('num_samples')} windows × {c.get('seq_len')} tokens {how} "
                    f"(seeded by the cell's seed), {c.get('regularize_windows')} for regularization / "
                    f"{c.get('recovery_windows')} held for recovery")
    notes += [f"Calibration: {c}." for c in sorted(cal)]
    if cfg is not None:
        notes.append(f"Model: {cfg['model']}; seeds {cfg['seeds']}.")
    for m in methods:
        confs = {json.dumps({k: v for k, v in flatten(r["config"]).items() if k not in ("ratio", "seed", "train.seed")},
                            sort_keys=True) for r in results if r["method"] == m and isinstance(r.get("config"), dict)}
        for conf in sorted(confs):
            notes.append(f"{m}: " + kv_text(json.loads(conf), sep=", ", sort=False) + ".")
    return notes
