"""The Markdown text of a report: results tables, plots, and the protocol behind every number."""
from __future__ import annotations

import json
import math
import statistics
from datetime import datetime, timezone
from pathlib import Path

from ..formatting import fmt_acc, fmt_num, fmt_params, fmt_ppl, kv_text, md_table, ppl_protocol_text
from ..record import flatten
from .runs import DenseRow, Measurements, Metric, Run, _is_num

# ---------------------------------------------------------------- formatting


def _canon(d: dict) -> str:
    return json.dumps(d, sort_keys=True, default=str)


def describe_dict(p: dict) -> str:
    if not p:
        return "protocol not recorded"
    return kv_text(p, value=lambda v: fmt_num(v) if _is_num(v) else json.dumps(v) if isinstance(v, (dict, list))
                   else v)


# ---------------------------------------------------------------- the results table


class Column:
    """One metric column (kind, key) and the distinct protocols its numbers were measured with."""

    def __init__(self, kind: str, key: str, title: str):
        self.kind, self.key, self.title = kind, key, title
        self.protocols: list[str] = []
        self.users: dict[str, list[str]] = {}

    def metric(self, meas: Measurements) -> Metric | None:
        return meas.mean_acc if self.kind == "mean_acc" else getattr(meas, self.kind).get(self.key)

    def note(self, m: Metric, who: str) -> None:
        c = _canon(m.protocol)
        if c not in self.protocols:
            self.protocols.append(c)
        self.users.setdefault(c, []).append(who)

    def tag(self, m: Metric) -> str:
        if len(self.protocols) <= 1:
            return ""
        return f" ({chr(ord('A') + self.protocols.index(_canon(m.protocol)))})"

    def fmt(self, m: Metric | None) -> str:
        if m is None:
            return "—"
        return (fmt_ppl(m.value) if self.kind == "ppl" else fmt_acc(m.value)) + self.tag(m)


def make_columns(runs: list[Run], dense: list[DenseRow]) -> list[Column]:
    rows = [(d.measured, "dense" if len(dense) == 1 else f"dense ({d.model})") for d in dense]
    rows += [(r.measured, r.name) for r in runs if r.kind != "dense"]  # dense runs are in the dense rows
    cols: list[Column] = []
    ppl_keys = list(dict.fromkeys(k for meas, _ in rows for k in meas.ppl))
    acc_keys = list(dict.fromkeys(k for meas, _ in rows for k in meas.acc))
    cols += [Column("ppl", k, f"PPL {k} ↓") for k in ppl_keys]
    cols += [Column("acc", k, f"{k} acc % ↑") for k in acc_keys]
    if any(meas.mean_acc for meas, _ in rows):
        cols.append(Column("mean_acc", "", "mean acc % ↑"))
    for c in cols:
        for meas, who in rows:
            m = c.metric(meas)
            if m is not None:
                c.note(m, who)
    return cols


def _ordered(runs: list[Run], kind: str) -> list[Run]:
    return sorted((r for r in runs if r.kind == kind),
                  key=lambda r: (r.label, r.ratio if r.ratio is not None else math.inf, r.name))


def results_table(runs: list[Run], dense: list[DenseRow], cols: list[Column]) -> list[str]:
    header = ["run", "method", "ratio", "parameters"] + [c.title for c in cols]
    rows = []
    for d in dense:
        name = "dense" if len(dense) == 1 else f"dense ({d.model})"
        rows.append([name, "—", "0", fmt_params(d.parameters)] + [c.fmt(c.metric(d.measured)) for c in cols])
    for r in _ordered(runs, "pruned") + _ordered(runs, "evaluated"):
        ratio = f"{r.ratio:g}" if r.ratio is not None else "—"
        rows.append([r.name, r.label if r.kind == "pruned" else "(not pruned by regprune)", ratio,
                     fmt_params(r.parameters, r.parameters_before)] + [c.fmt(c.metric(r.measured)) for c in cols])
    return md_table(header, rows, ["l", "l", "r", "r"] + ["r"] * len(cols))


def per_task_table(runs: list[Run], dense: list[DenseRow], kind: str, mean_kind: str | None = None) -> list[str]:
    """Per-task accuracies of another kind (acc_norm, headline) for every row that has them."""
    items = [("dense" if len(dense) == 1 else f"dense ({d.model})", d.measured) for d in dense]
    items += [(r.name, r.measured) for r in runs if r.kind != "dense"]
    items = [(n, m) for n, m in items if getattr(m, kind)]
    tasks = list(dict.fromkeys(k for _, m in items for k in getattr(m, kind)))
    if not tasks:
        return []
    with_mean = mean_kind is not None and any(getattr(m, mean_kind) for _, m in items)
    rows = []
    for name, m in items:
        vals = getattr(m, kind)
        row = [name] + [fmt_acc(vals[t].value) if t in vals else "—" for t in tasks]
        if with_mean:
            mean = getattr(m, mean_kind)
            row.append(fmt_acc(mean.value) if mean is not None else "—")
        rows.append(row)
    return md_table(["run"] + [f"{t} {kind} % ↑" for t in tasks] + (["mean % ↑"] if with_mean else []), rows)


def _speed_flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if "protocol" in str(k):
            continue
        if isinstance(v, dict):
            out.update(_speed_flat(v, f"{prefix}{k}."))
        elif _is_num(v):
            out[f"{prefix}{k}"] = v
    return out


def _speed_protocols(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if "protocol" in str(k):
            out[f"{prefix}{k}"] = v
        elif isinstance(v, dict):
            out.update(_speed_protocols(v, f"{prefix}{k}."))
    return out


def speed_section(runs: list[Run], dense: list[DenseRow]) -> list[str]:
    items = [("dense" if len(dense) == 1 else f"dense ({d.model})", d.measured.speed) for d in dense
             if d.measured.speed] + [(r.name, r.measured.speed) for r in runs if r.measured.speed]
    if not items:
        return []
    flats = [(n, _speed_flat(s)) for n, s in items]
    keys = list(dict.fromkeys(k for _, f in flats for k in f))
    out = ["## Speed", ""]
    if keys and len(keys) > max(6, len(flats)):  # many quantities: one row per quantity
        out += md_table(["quantity"] + [n for n, _ in flats],
                     [[k] + [fmt_num(f[k]) if k in f else "—" for _, f in flats] for k in keys])
        out.append("")
    elif keys:
        out += md_table(["run"] + keys, [[n] + [fmt_num(f[k]) if k in f else "—" for k in keys] for n, f in flats])
        out.append("")
    protos: dict[str, list[str]] = {}
    for n, s in items:
        for k, v in _speed_protocols(s).items():
            protos.setdefault(f"`{k}`: {describe_dict(v) if isinstance(v, dict) else v}", []).append(n)
    if protos:
        out += ["Speed protocol:", ""] + [f"- {p} — {', '.join(ns)}" for p, ns in protos.items()] + [""]
    return out


# ---------------------------------------------------------------- per-run sections


def magnitude_table(run: Run) -> list[str]:
    by: dict[str, list[dict]] = {}
    for r in run.magnitudes:
        by.setdefault(r["matrix"], []).append(r)
    from .plots import _matrix_key

    rows = []
    for mat in sorted(by, key=_matrix_key):
        rs = by[mat]
        sel = [r["selected_ratio"] for r in rs if _is_num(r.get("selected_ratio"))]
        kept = [r["kept_ratio"] for r in rs if _is_num(r.get("kept_ratio"))]
        layers = sorted(r["layer"] for r in rs if r.get("layer") is not None)
        where = f"{layers[0]}–{layers[-1]}" if layers else "—"
        rows.append([mat, where, len(rs),
                     f"{statistics.fmean(sel):.4f} / {max(sel):.4f}" if sel else "—",
                     f"{statistics.fmean(kept):.4f} ({min(kept):.4f}–{max(kept):.4f})" if kept else "—"])
    return md_table(["matrix", "layers", "tensors", "removed: mean / max of after÷before",
                  "kept: mean (min–max) of after÷before"], rows, ["l", "l", "r", "r", "r"])


def layer_weights_section(runs: list[Run], images: dict) -> list[str]:
    """TRSP: the learned per-block weights, the removed blocks, and their identity gaps before/after stage 2."""
    runs = [r for r in runs if r.layer_weights]
    if not runs:
        return []
    out = ["## Layer weights (TRSP)", "",
           "Stage 1 learns a weight alpha per block (block output = input + alpha × contribution) under an l1 "
           "penalty; the blocks with the smallest |alpha| are removed after stage 2 has pulled them toward the "
           "identity. Identity gap = ‖output − input‖² / ‖input‖² of a block on calibration windows.", ""]
    for r in runs:
        d, w = r.details, r.layer_weights
        cfg = r.config
        out += [f"### {r.name}", "",
                f"lam1={cfg.get('lam1')}, lam2={cfg.get('lam2')}; {d.get('stage1_steps', '?')} stage-1 and "
                f"{d.get('stage2_steps', '?')} stage-2 steps; blocks {d.get('layers_before', len(w))} → "
                f"{d.get('layers_after', '?')}, removed {r.removed_layers}.", ""]
        out += _img(images.get(r.name), f"layer weights of {r.name}")
        before, after = d.get("identity_gap_before") or [], d.get("identity_gap_after") or []
        rows = []
        for i in r.removed_layers:
            if 0 <= i < len(w):
                rows.append([i, f"{w[i]:.4f}",
                             fmt_num(before[i]) if i < len(before) and _is_num(before[i]) else "—",
                             fmt_num(after[i]) if i < len(after) and _is_num(after[i]) else "—"])
        kept = [abs(x) for i, x in enumerate(w) if i not in set(r.removed_layers)]
        out += md_table(["removed block", "alpha", "identity gap before stage 2", "after"], rows, ["r", "r", "r", "r"])
        if kept:
            out.append("")
            out.append(f"Kept blocks: |alpha| from {min(kept):.4f} to {max(kept):.4f}.")
        out.append("")
    return out


def _last(h: list[dict], key: str):
    vals = [row[key] for row in h if _is_num(row.get(key))]
    return vals[-1] if vals else None


def training_table(runs: list[Run]) -> list[str]:
    rows = []
    for r in runs:
        h, rh = r.history, r.recovery_history
        if not h and not rh:
            continue
        rec = (r.record or {}).get("recovery") or {}
        rows.append([r.name, len(h) or "—",
                     *(fmt_num(_last(h, k)) if _last(h, k) is not None else "—"
                       for k in ("lm_loss", "reg_loss", "energy_left")),
                     len(rh) or "—",
                     fmt_num(rec["initial_eval_loss"]) if _is_num(rec.get("initial_eval_loss")) else "—",
                     fmt_num(rec["best_eval_loss"]) if _is_num(rec.get("best_eval_loss")) else "—"])
    if not rows:
        return []
    return md_table(["run", "reg. steps", "last LM loss", "last reg. loss", "last energy left", "recovery steps",
                  "recovery eval loss before", "best"], rows)


# ---------------------------------------------------------------- protocol


def _grouped(pairs: list[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    out: dict[str, list[str]] = {}
    for text, who in pairs:
        out.setdefault(text, []).append(who)
    return list(out.items())


def _config_text(r: Run) -> str:
    return kv_text(flatten(r.config), sep=", ", sort=False)


def protocol_section(runs: list[Run], dense: list[DenseRow], cols: list[Column]) -> list[str]:
    out = ["## Protocol", "", "### Runs", ""]
    rows = []
    for r in runs:
        d = r.details
        hidden = (f"{d['hidden_size_before']} → {d['hidden_size_after']}"
                  if _is_num(d.get("hidden_size_before")) and _is_num(d.get("hidden_size_after")) else "—")
        timing = (r.record or {}).get("timing") or {}
        secs = fmt_num(timing["method_seconds"]) if _is_num(timing.get("method_seconds")) else "—"
        before = r.parameters_before
        params = (f"{fmt_params(before)} → {fmt_params(r.parameters)}" if before else fmt_params(r.parameters))
        kind = r.label if r.kind == "pruned" else ("dense reference" if r.kind == "dense" else "evaluation only")
        rows.append([r.name, f"`{r.path}`", kind, params, hidden, secs,
                     f"`{_config_text(r)}`" if r.config else "—"])
    out += md_table(["run", "directory", "method", "parameters", "hidden size", "method time (s)", "configuration"],
                 rows, ["l", "l", "l", "r", "r", "r", "l"])
    out.append("")
    sources = [(_canon((r.record or {}).get("model_source") or {}), r.name) for r in runs if r.record]
    if sources:
        out += ["### Input model", ""]
        out += [f"- {describe_dict(json.loads(s))} — {', '.join(ns)}" for s, ns in _grouped(sources)] + [""]
    calib = [(_canon(r.record.get("data") or {}), r.name) for r in runs if r.record]
    if calib:
        out += ["### Calibration data (pruning)", ""]
        for text, names in _grouped(calib):
            p = json.loads(text)
            desc = describe_dict(p) if p else "not recorded"
            if {"source", "num_samples", "seq_len"} <= set(p):
                desc = (f"{p['source']}: {p['num_samples']} windows × {p['seq_len']} tokens, seed {p.get('seed')}"
                        f" ({p.get('sampling', 'sampling not recorded')}); {p.get('split', '')}; "
                        f"{fmt_num(p.get('text_tokens'))} tokens in the text")
            out.append(f"- {desc} — {', '.join(names)}")
        out.append("")
    recs = [(r.name, r.record.get("recovery")) for r in runs if r.record and r.record.get("recovery")]
    if recs:
        out += ["### Recovery (LoRA)", ""]
        for name, rec in recs:
            cfg = rec.get("config") or {}
            out.append(f"- {name}: `{kv_text(flatten(cfg), sep=', ', sort=False)}`; "
                       f"{rec.get('train_windows', '?')} training / {rec.get('eval_windows', '?')} held-out windows, "
                       f"{rec.get('steps_run', '?')} steps, best at step {rec.get('best_step', '?')}")
        out.append("")
    if cols:
        out += ["### Evaluation", ""]
        out.append("Perplexity is exp(mean NLL per predicted token); accuracies are in percent. A letter after a "
                   "number marks which of several protocols it was measured with (only where a column mixes them: "
                   "such numbers are not directly comparable).")
        out.append("")
        for c in cols:
            what = {"ppl": f"Perplexity on `{c.key}`", "acc": f"Zero-shot accuracy on `{c.key}`",
                    "mean_acc": "Mean zero-shot accuracy"}[c.kind]
            for i, proto in enumerate(c.protocols):
                p = json.loads(proto)
                letter = f" ({chr(ord('A') + i)})" if len(c.protocols) > 1 else ""
                desc = ppl_protocol_text(p) if c.kind == "ppl" else describe_dict(p)
                out.append(f"- {what}{letter}: {desc} — {', '.join(c.users[proto])}")
        if any(r.measured.acc_norm for r in runs) or any(d.measured.acc_norm for d in dense):
            out.append("- acc_norm (length-normalized accuracy) follows the same zero-shot protocol as acc.")
        out.append("")
    origins = [(o, d.model) for d in dense for o in d.origins]
    if origins:
        out += ["### Dense reference", ""]
        out += [f"- dense ({d.model}): numbers read from {'; '.join(d.origins)}" for d in dense] + [""]
    vers = [(_canon(v), r.name) for r in runs for v in
            [(r.record or {}).get("versions"), (r.eval or {}).get("versions")] if isinstance(v, dict) and v]
    if vers:
        out += ["### Software", ""]
        out += [f"- {describe_dict(json.loads(v))} — {', '.join(dict.fromkeys(ns))}" for v, ns in _grouped(vers)]
        out.append("")
    return out


# ---------------------------------------------------------------- the whole document


def _img(path: Path | None, alt: str) -> list[str]:
    return [f"![{alt}]({path.name})", ""] if path is not None else []


def render(runs: list[Run], dense: list[DenseRow], plots: dict) -> str:
    from .. import __version__

    cols = make_columns(runs, dense)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    n_pruned = sum(r.kind == "pruned" for r in runs)
    out = ["# Pruning report", "",
           f"{len(runs)} run director{'y' if len(runs) == 1 else 'ies'} ({n_pruned} pruned), "
           f"written by regprune {__version__} on {when}. Every number below is read from the runs' "
           "`regprune.json` / `eval.json`; how each was measured is listed under [Protocol](#protocol).", ""]

    out += ["## Results", ""]
    if cols or runs:
        out += results_table(runs, dense, cols)
        out.append("")
    ppl_cols = [c for c in cols if c.kind == "ppl"]
    if ppl_cols:
        out += ["Perplexity: " + "; ".join(
            f"`{c.key}` {ppl_protocol_text(json.loads(c.protocols[0])).split(';')[0]}" if len(c.protocols) == 1
            else f"`{c.key}` measured with {len(c.protocols)} different protocols (letters A–"
                 f"{chr(ord('A') + len(c.protocols) - 1)}, see [Protocol](#protocol))" for c in ppl_cols) + ".", ""]
    if any(c.kind == "acc" for c in cols):
        out += ["Zero-shot accuracy in percent; per-task sample counts and settings under "
                "[Protocol](#protocol).", ""]
    if not cols:
        out += ["No perplexity or accuracy was measured in these runs (no `metrics` in regprune.json and no "
                "eval.json).", ""]
    norm = per_task_table(runs, dense, "acc_norm")
    if norm:
        out += ["Length-normalized zero-shot accuracy (acc_norm), same protocol:", ""] + norm + [""]
    head = per_task_table(runs, dense, "headline", "mean_headline")
    if head:
        metric = next((m.protocol.get("headline_metric") for r in runs for m in r.measured.headline.values()
                       if m.protocol.get("headline_metric")), None)
        out += [f"Headline zero-shot metric as the papers report it ({metric or 'as recorded in eval.json'}), "
                "same protocol:", ""] + head + [""]

    if plots.get("ppl") or plots.get("acc"):
        out += ["### Against the pruning ratio", ""]
        out += ["One line per method (settings that differ between runs of a method are in the label); several runs "
                "at one ratio (seeds) are shown as mean ± 1 std; the dense model is the dashed line (★ at 0).", ""]
        out += _img(plots.get("ppl"), "perplexity against pruning ratio")
        out += _img(plots.get("acc"), "zero-shot accuracy against pruning ratio")
        if any(len(c.protocols) > 1 for c in cols):
            out += ["Note: some metrics were measured with different protocols in different runs (see the letters "
                    "in the table); the plots draw them together.", ""]

    out += speed_section(runs, dense)

    mags = [r for r in runs if r.magnitudes]
    if mags:
        out += ["## Regularized and kept slices", "",
                "For every tensor that carries the hidden dimension: the RMS of the slices belonging to the removed "
                "(regularized) channels after the regularization run divided by their RMS before it, and the same "
                "for the kept channels (cf. DReSS paper, Figures 3 and 6). Measured just before slicing.", ""]
        for r in mags:
            d = r.details
            cfg = r.config
            facts = [f"norm={cfg.get('norm')}, lam={cfg.get('lam')}, mode={cfg.get('mode')}, ratio={cfg.get('ratio')}"]
            if _is_num(d.get("regularization_steps")):
                facts.append(f"{d['regularization_steps']} regularization steps")
            if _is_num(d.get("energy_left_before_slicing")):
                facts.append("energy left in removed channels before slicing "
                             f"{fmt_num(d['energy_left_before_slicing'])}")
            if _is_num(d.get("exact_zero_fraction_before_slicing")):
                facts.append(f"exact zeros {100 * d['exact_zero_fraction_before_slicing']:.1f}%")
            out += [f"### {r.name}", "", "; ".join(facts) + ".", ""]
            out += _img(plots.get("magnitudes", {}).get(r.name), f"slice magnitudes of {r.name}")
            out += magnitude_table(r) + [""]

    out += layer_weights_section(runs, plots.get("layer_weights") or {})

    train = training_table(runs)
    if train or plots.get("training"):
        out += ["## Training curves", "",
                "Per optimizer step of the regularization run: LM loss on the calibration batch, the normalized "
                "penalty (lam × mean slice norm of the removed channels in units of its tensor's initial RMS), and "
                "the energy (sum of squares) left in the removed channels relative to the start, averaged over "
                "tensors; then, if run, the LoRA recovery losses.", ""]
        out += _img(plots.get("training"), "training curves")
        out += train + [""]

    out += protocol_section(runs, dense, cols)
    return "\n".join(out).rstrip() + "\n"
