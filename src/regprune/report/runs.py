"""Read run directories (regprune.json, eval.json, a sweep's result.json) into one uniform shape.

Everything optional stays optional: a part that is missing gives an empty mapping or None, never a
placeholder number. Every measured number keeps the protocol it was measured with.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import RegpruneError
from ..formatting import is_num as _is_num
from ..record import flatten

RECORD = "regprune.json"
EVAL = "eval.json"
CELL = "result.json"  # written by regprune.sweep for each finished cell


@dataclass
class Metric:
    """One measured number, where it was read from, and how it was measured."""

    value: float
    protocol: dict
    origin: str  # e.g. "eval.json", "regprune.json metrics.pruned"
    extra: dict = field(default_factory=dict)  # e.g. predicted_tokens, n, split


@dataclass
class Measurements:
    ppl: dict[str, Metric] = field(default_factory=dict)  # source -> perplexity
    acc: dict[str, Metric] = field(default_factory=dict)  # task -> accuracy (fraction)
    acc_norm: dict[str, Metric] = field(default_factory=dict)
    mean_acc: Metric | None = None
    speed: dict | None = None
    headline: dict[str, Metric] = field(default_factory=dict)  # the papers' per-task metric, where given
    mean_headline: Metric | None = None

    def empty(self) -> bool:
        return not (self.ppl or self.acc or self.acc_norm or self.mean_acc or self.speed)

    def keyed(self) -> dict[tuple[str, str], Metric]:
        out = {("ppl", k): v for k, v in self.ppl.items()}
        out.update({("acc", k): v for k, v in self.acc.items()})
        out.update({("acc_norm", k): v for k, v in self.acc_norm.items()})
        if self.mean_acc is not None:
            out[("mean_acc", "")] = self.mean_acc
        return out


@dataclass
class DenseRef:
    """Metrics of the unpruned model, found in a run's regprune.json or eval.json (compare_to)."""

    model: str
    origin: str  # "<run>: regprune.json metrics.dense" ...
    measured: Measurements
    parameters: int | None = None


@dataclass
class DenseRow:
    """One row of dense (unpruned) numbers in the report, merged from agreeing references."""

    model: str
    measured: Measurements
    origins: list[str]
    parameters: int | None = None


@dataclass
class Run:
    name: str
    path: Path
    record: dict | None
    eval: dict | None
    cell: dict | None
    kind: str = "pruned"  # pruned | dense | evaluated (an eval.json of a model regprune did not prune)
    measured: Measurements = field(default_factory=Measurements)
    dense_refs: list[DenseRef] = field(default_factory=list)
    label: str = ""  # series label for plots: method, plus the settings that differ between runs of it

    @property
    def method(self) -> str | None:
        if self.record is not None:
            return str(self.record.get("method"))
        return "dense" if self.kind == "dense" else None

    @property
    def config(self) -> dict:
        return (self.record or {}).get("config") or {}

    @property
    def ratio(self) -> float | None:
        if self.kind == "dense":
            return 0.0
        r = self.config.get("ratio")
        return float(r) if _is_num(r) else None

    @property
    def parameters(self) -> int | None:
        if self.record is not None and _is_num(self.record.get("parameters_after")):
            return int(self.record["parameters_after"])
        if self.eval is not None and _is_num(self.eval.get("parameters")):
            return int(self.eval["parameters"])
        return None

    @property
    def parameters_before(self) -> int | None:
        v = (self.record or {}).get("parameters_before")
        return int(v) if _is_num(v) else None

    @property
    def details(self) -> dict:
        return (self.record or {}).get("method_details") or {}

    @property
    def history(self) -> list[dict]:
        h = (self.record or {}).get("history") or []
        return [r for r in h if isinstance(r, dict) and _is_num(r.get("step"))]

    @property
    def recovery_history(self) -> list[dict]:
        rec = (self.record or {}).get("recovery")
        h = (rec.get("history") or []) if isinstance(rec, dict) else []
        return [r for r in h if isinstance(r, dict) and _is_num(r.get("step"))]

    @property
    def magnitudes(self) -> list[dict]:
        rows = self.details.get("magnitudes") or []
        return [r for r in rows if isinstance(r, dict) and r.get("matrix") is not None]

    @property
    def layer_weights(self) -> list[float]:
        """Per-block weights learned by a layer-pruning method (TRSP's stage-1 alphas), else empty."""
        w = self.details.get("layer_weights") or []
        return [float(x) for x in w] if all(_is_num(x) for x in w) else []

    @property
    def removed_layers(self) -> list[int]:
        return [int(i) for i in self.details.get("removed_layers") or [] if _is_num(i)]

    @property
    def model_ids(self) -> set[str]:
        """Names under which the source model of this run may appear in an eval.json ("model")."""
        src = (self.record or {}).get("model_source") or {}
        ids = {str(src[k]) for k in ("path", "name", "id") if src.get(k)}
        return ids | {_resolved(i) for i in ids}


def _resolved(p: str) -> str:
    try:
        return str(Path(p).expanduser().resolve())
    except (OSError, RuntimeError):
        return p


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RegpruneError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise RegpruneError(f"{path} does not hold a JSON object")
    return data


def _ppl(d, origin: str) -> dict[str, Metric]:
    out = {}
    for src, m in (d or {}).items() if isinstance(d, dict) else ():
        if isinstance(m, dict) and _is_num(m.get("ppl")):
            extra = {k: m[k] for k in ("predicted_tokens", "nll", "seconds") if k in m}
            out[str(src)] = Metric(float(m["ppl"]), dict(m.get("protocol") or {}), origin, extra)
    return out


def _zeroshot(z, origin: str, into: Measurements) -> None:
    if not isinstance(z, dict):
        return
    proto = dict(z.get("protocol") or {})
    tasks = z.get("tasks") or {}
    for task, r in tasks.items() if isinstance(tasks, dict) else ():
        if not isinstance(r, dict):
            continue
        p = {**proto, **{k: r[k] for k in ("n", "n_available", "split", "source") if r.get(k) is not None}}
        if _is_num(r.get("acc")):
            into.acc[str(task)] = Metric(float(r["acc"]), p, origin, {"n": r.get("n")})
        if _is_num(r.get("acc_norm")):
            into.acc_norm[str(task)] = Metric(float(r["acc_norm"]), p, origin, {"n": r.get("n")})
    heads = z.get("headline") or {}
    for task, v in heads.items() if isinstance(heads, dict) else ():
        if _is_num(v) and str(task) in into.acc:
            into.headline[str(task)] = Metric(float(v), into.acc[str(task)].protocol, origin)
    if _is_num(z.get("mean_headline")) and into.headline:
        into.mean_headline = Metric(float(z["mean_headline"]), {**proto, "tasks": sorted(into.headline)}, origin)
    if _is_num(z.get("mean_acc")):
        into.mean_acc = Metric(float(z["mean_acc"]), {**proto, "tasks": sorted(map(str, tasks))}, origin)
    elif into.acc:  # the definition of the mean: unweighted over the tasks reported
        vals = list(into.acc.values())
        into.mean_acc = Metric(sum(m.value for m in vals) / len(vals),
                               {**proto, "tasks": sorted(into.acc), "mean": "unweighted, computed by the report"},
                               origin)


def _from_eval(ev: dict, origin: str) -> Measurements:
    m = Measurements(ppl=_ppl(ev.get("perplexity"), origin))
    _zeroshot(ev.get("zeroshot"), origin, m)
    if isinstance(ev.get("speed"), dict) and ev["speed"]:
        m.speed = ev["speed"]
    return m


def load_run(path, name: str | None = None) -> Run:
    p = Path(path)
    if not p.is_dir():
        raise RegpruneError(f"run directory {p} does not exist or is not a directory")
    rec, ev, cell = _read_json(p / RECORD), _read_json(p / EVAL), _read_json(p / CELL)
    if rec is None and ev is None:
        raise RegpruneError(
            f"{p} has neither {RECORD} (written by `regprune prune` / regprune.prune(...).save) nor {EVAL} "
            "(written by `regprune eval --json`); a report needs one of them in every run directory")
    if rec is not None and ("method" not in rec or not isinstance(rec.get("config"), dict)):
        raise RegpruneError(f"{p / RECORD} is not a regprune record (it needs 'method' and 'config')")
    run = Run(name or p.name, p, rec, ev, cell)
    if rec is not None:
        metrics = rec.get("metrics") or {}
        run.measured = Measurements(ppl=_ppl(metrics.get("pruned"), f"{RECORD} metrics.pruned"))
        if metrics.get("dense"):
            src = rec.get("model_source") or {}
            model = str(src.get("name") or src.get("id") or src.get("path") or "input model")
            run.dense_refs.append(DenseRef(model, f"{run.name}: {RECORD} metrics.dense",
                                           Measurements(ppl=_ppl(metrics["dense"], f"{RECORD} metrics.dense")),
                                           run.parameters_before))
    else:
        run.kind = "dense" if (cell or {}).get("method") == "dense" else "evaluated"
    if ev is not None:
        m = _from_eval(ev, EVAL)
        run.measured.ppl.update(m.ppl)  # eval.json is the dedicated evaluation: it wins for a shared source
        run.measured.acc, run.measured.acc_norm, run.measured.mean_acc = m.acc, m.acc_norm, m.mean_acc
        run.measured.headline, run.measured.mean_headline = m.headline, m.mean_headline
        run.measured.speed = m.speed
        if isinstance(ev.get("compare_to"), dict):
            ct = ev["compare_to"]
            dm = _from_eval(ct, f"{EVAL} compare_to")
            if not dm.empty():
                params = ct.get("parameters") if _is_num(ct.get("parameters")) else None
                run.dense_refs.append(DenseRef(str(ct.get("model") or "dense"), f"{run.name}: {EVAL} compare_to", dm,
                                               params))
    return run


def _unique_names(paths: list[Path]) -> list[str]:
    names = [p.name or str(p) for p in paths]
    for depth in (2, 3):
        if len(set(names)) == len(names):
            break
        names = ["/".join(p.resolve().parts[-depth:]) for p in paths]
    if len(set(names)) != len(names):
        names = [f"{n}#{i + 1}" for i, n in enumerate(names)]
    return names


_LABEL_SKIP = {"ratio", "seed", "train.seed"}




def _assign_labels(runs: list[Run]) -> None:
    """Label = method, plus the settings that differ between runs of that method (e.g. 'dress norm=l1')."""
    by_method: dict[str, list[Run]] = {}
    for r in runs:
        if r.kind == "pruned":
            by_method.setdefault(r.method, []).append(r)
        else:
            r.label = "dense" if r.kind == "dense" else (r.eval or {}).get("model", r.name)
    for method, group in by_method.items():
        flats = [flatten(r.config) for r in group]
        keys = sorted({k for f in flats for k in f} - _LABEL_SKIP)
        varying = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flats}) > 1]
        recov = {r.record.get("recovery") is not None for r in group}
        for r, f in zip(group, flats):
            parts = [f"{k.removeprefix('train.')}={f.get(k)}" for k in varying]
            lab = method + (" " + ", ".join(parts) if parts else "")
            if len(recov) > 1 and r.record.get("recovery") is not None:
                lab += " +LoRA"
            r.label = lab


def load_runs(run_dirs) -> list[Run]:
    paths = [Path(p) for p in run_dirs]
    if not paths:
        raise RegpruneError("no run directories given")
    runs = [load_run(p, n) for p, n in zip(paths, _unique_names(paths))]
    pruned_ids = set().union(*(r.model_ids for r in runs if r.kind == "pruned"))
    for r in runs:  # an evaluation of the very model the pruned runs started from is the dense reference
        if r.kind == "evaluated" and r.eval and (str(r.eval.get("model")) in pruned_ids
                                                  or _resolved(str(r.eval.get("model"))) in pruned_ids):
            r.kind = "dense"
    _assign_labels(runs)
    return runs


def _same(a: Metric, b: Metric) -> bool:
    return math.isclose(a.value, b.value, rel_tol=1e-9, abs_tol=0.0) and a.protocol == b.protocol


def dense_rows(runs: list[Run]) -> list[DenseRow]:
    """Distinct dense measurements, each with where its numbers were read from.

    References that agree on every number they share (same value, same protocol) and either name the same
    model or share at least one number are merged; anything else stays a separate row.
    """
    refs = [DenseRef(str((r.eval or {}).get("model") or r.name), f"{r.name}: {EVAL}", r.measured, r.parameters)
            for r in runs if r.kind == "dense"]
    refs += [d for r in runs for d in r.dense_refs]
    rows: list[DenseRow] = []
    for ref in refs:
        k_new = ref.measured.keyed()
        for row in rows:
            k_old = row.measured.keyed()
            shared = set(k_new) & set(k_old)
            if all(_same(k_new[k], k_old[k]) for k in shared) and (shared or row.model == ref.model):
                meas = row.measured
                for (kind, key), m in k_new.items():
                    if kind == "mean_acc":
                        meas.mean_acc = meas.mean_acc or m
                    else:
                        getattr(meas, kind).setdefault(key, m)
                meas.speed = meas.speed or ref.measured.speed
                if not meas.headline:
                    meas.headline, meas.mean_headline = dict(ref.measured.headline), ref.measured.mean_headline
                row.parameters = row.parameters or ref.parameters
                row.origins.append(ref.origin)
                break
        else:
            m = ref.measured
            rows.append(DenseRow(ref.model, Measurements(dict(m.ppl), dict(m.acc), dict(m.acc_norm), m.mean_acc,
                                                         m.speed, dict(m.headline), m.mean_headline),
                                 [ref.origin], ref.parameters))
    return rows
