"""A resumable grid of pruning runs (methods × ratios × seeds) from one config file, with one table.

Config file (TOML, or JSON when the name ends in .json):

    model = "smollm2-135m"          # anything regprune.load_model accepts (loaded once per sweep)
    data_dir = "../shared/data"     # optional: offline data directory (else $REGPRUNE_DATA_DIR, else the hub)
    output = "runs/sweep-smol"      # one directory per cell below it
    methods = ["slice", "dress"]
    ratios = [0.25, 0.5]            # fractions of hidden channels removed, each in (0, 1)
    seeds = [0]                     # optional, default [0]; several seeds are averaged (mean ± std)
    save_models = false             # optional: also save each pruned checkpoint in <cell>/model
    dtype = "float32"               # optional, load_model's dtype (default float32)
    device = "cpu"                  # optional, load_model's device (default cpu)
    [calibration]                   # optional, kwargs of regprune.prune: calib, num_samples, seq_len
    calib = "wikitext2:validation"
    num_samples = 128
    seq_len = 512
    [options.dress]                 # optional, per-method options: regprune.prune(**options)
    norm = "l2"
    steps = 48
    [options.wanda-2of4]            # a label in 'methods' that is not a method name is a variant:
    method = "wanda"                #   the method it runs,
    structure = "2:4"               #   its options,
    ratios = [0.5]                  #   and optionally its own ratios (instead of 'ratios')
    [eval]                          # optional, kwargs of regprune.api.evaluate; absent: no evaluation
    ppl = ["wikitext2", "c4"]       # wikitext2 = its test split, c4 = validation, builtin = eval
    seq_len = 512
    max_windows = 64                # 0 = all windows
    tasks = ["piqa", "arc_easy"]    # zero-shot tasks, where regprune.api.evaluate supports them
    limit = 200                     # also: speed, task_batch_size, offline_tasks, [eval.speed_options]

Relative paths in a config file (output, data_dir, and model when it names an existing path there) are
taken relative to the file's directory. Unknown keys, empty lists, unknown methods, options that the
method does not have, and `ratio` / `seed` in options (the grid sets them) are refused with a message.

Layout of `output`:
    sweep.json                      the validated configuration of the latest run_sweep call
    dense/                          the unpruned model, evaluated once (only when [eval] is given)
    <method>-r<ratio>-s<seed>/      e.g. dress-r0.25-s0
        regprune.json               the pruning record (PruneResult.record; metrics.pruned filled in)
        eval.json                   the evaluation, shaped like `regprune eval --json` output
        model/                      the pruned checkpoint, with save_models = true
        result.json                 written last (atomically): the cell is finished
    summary.json, summary.md        rewritten after every cell

Resuming: a cell whose result.json exists is not recomputed ("skipped, done earlier"); a cell directory
without result.json (an interrupted cell) is cleared and computed again. A finished cell whose recorded
settings differ from the current configuration is refused rather than mixed in; `resume=False` recomputes
every cell. `save_models` applies to the cells computed from then on. Cell directories can be given to
`regprune.report.write_report` as they are.

    from regprune.sweep import load_sweep_config, run_sweep, sweep_table
    run_sweep(load_sweep_config("sweep.toml"))
    print(sweep_table("runs/sweep-smol"))
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import os
import shutil
import statistics
import time
from pathlib import Path

import regprune

from .errors import RegpruneError
from .record import flatten

log = logging.getLogger(__name__)

TOP_KEYS = {"model", "data_dir", "output", "methods", "ratios", "seeds", "save_models", "dtype", "device",
            "calibration", "options", "eval"}
CALIBRATION_KEYS = {"calib": str, "num_samples": int, "seq_len": int}
EVAL_KEYS = {"ppl": list, "seq_len": int, "max_windows": int, "max_tokens": int, "batch_size": int,
             "tasks": list, "limit": (int, float), "speed": bool,
             # accepted only where regprune.api.evaluate has them (checked against its signature)
             "task_batch_size": int, "offline_tasks": bool, "speed_options": dict}
GRID_KEYS = {"ratio", "seed"}
VARIANT_KEYS = {"method", "ratios"}  # in [options.<label>]: not method options


def _method_options(opts: dict) -> dict:
    return {k: v for k, v in opts.items() if k not in VARIANT_KEYS}


def _label_ratios(opts: dict, ratios: list[float]) -> list[float]:
    return [float(r) for r in opts["ratios"]] if "ratios" in opts else ratios
RESULT = "result.json"
DENSE = "dense"


# ---------------------------------------------------------------- configuration


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _nonempty_list(cfg: dict, key: str, default=None) -> list:
    v = cfg.get(key, default)
    if not isinstance(v, list):
        raise RegpruneError(f"sweep config: '{key}' must be a list, got {v!r}")
    if not v:
        raise RegpruneError(f"sweep config: '{key}' is empty; give at least one value")
    if len({json.dumps(x) for x in v}) != len(v):
        raise RegpruneError(f"sweep config: '{key}' has duplicates: {v}")
    return list(v)


def _table(cfg: dict, key: str) -> dict:
    v = cfg.get(key, {})
    if not isinstance(v, dict):
        raise RegpruneError(f"sweep config: '{key}' must be a table ([{key}]), got {v!r}")
    return dict(v)


def _check_keys(where: str, got: dict, allowed) -> None:
    unknown = sorted(set(got) - set(allowed))
    if unknown:
        raise RegpruneError(f"sweep config: unknown key(s) in {where}: {', '.join(unknown)}; "
                            f"allowed: {', '.join(sorted(allowed))}")


def _method_option_names(name: str) -> set[str]:
    from .methods import get_method

    cls = get_method(name).config_cls
    fields = {f.name for f in dataclasses.fields(cls)}
    if "train" in fields:
        train_default = next(f for f in dataclasses.fields(cls) if f.name == "train")
        train_cls = type(train_default.default_factory()) if train_default.default_factory is not dataclasses.MISSING \
            else type(train_default.default)
        fields = (fields - {"train"}) | {f.name for f in dataclasses.fields(train_cls)}
    return fields


def _evaluate_accepts(key: str) -> bool:
    params = inspect.signature(regprune.api.evaluate).parameters
    return key in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _resolve(base: Path | None, p: str) -> str:
    if base is None:
        return p
    q = Path(p).expanduser()
    return str(q if q.is_absolute() else (base / q).resolve())


def validate_sweep_config(raw: dict, base_dir: str | os.PathLike | None = None) -> dict:
    """Check a sweep configuration and return it normalized (every optional key filled in).

    `base_dir`: relative paths are resolved against it (load_sweep_config passes the file's directory).
    """
    from .methods import list_methods

    if not isinstance(raw, dict):
        raise RegpruneError(f"sweep config must be a table / object, got {type(raw).__name__}")
    _check_keys("the top level", raw, TOP_KEYS)
    base = Path(base_dir) if base_dir is not None else None
    for key in ("model", "output"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise RegpruneError(f"sweep config: '{key}' is required (a non-empty string)")
    model = raw["model"]
    if base is not None and not Path(model).is_absolute() and (base / model).exists():
        model = str((base / model).resolve())
    data_dir = raw.get("data_dir")
    if data_dir is not None and (not isinstance(data_dir, str) or not data_dir):
        raise RegpruneError(f"sweep config: 'data_dir' must be a path string, got {data_dir!r}")

    methods = _nonempty_list(raw, "methods")
    known = list_methods()
    raw_options = _table(raw, "options")
    for m in methods:
        real = (raw_options.get(m) or {}).get("method", m) if isinstance(raw_options.get(m), dict) else m
        if real not in known:
            raise RegpruneError(f"sweep config: unknown method {real!r} for {m!r} in 'methods'; available: "
                                f"{', '.join(known)} (a variant label needs [options.{m}] method = \"<method>\")")
    ratios = _nonempty_list(raw, "ratios")
    for r in ratios:
        if not _is_num(r) or not 0.0 < r < 1.0:
            raise RegpruneError(f"sweep config: every ratio must be a number in (0, 1), got {r!r}")
    ratios = [float(r) for r in ratios]
    if len({f"{r:g}" for r in ratios}) != len(ratios):
        raise RegpruneError(f"sweep config: ratios {ratios} are not distinct at the precision of cell names")
    seeds = _nonempty_list(raw, "seeds", [0])
    if not all(_is_int(s) for s in seeds):
        raise RegpruneError(f"sweep config: seeds must be integers, got {seeds}")
    save_models = raw.get("save_models", False)
    if not isinstance(save_models, bool):
        raise RegpruneError(f"sweep config: 'save_models' must be true or false, got {save_models!r}")
    for key in ("dtype", "device"):
        if key in raw and not isinstance(raw[key], str):
            raise RegpruneError(f"sweep config: '{key}' must be a string, got {raw[key]!r}")

    calibration = _table(raw, "calibration")
    _check_keys("[calibration]", calibration, CALIBRATION_KEYS)
    for k, v in calibration.items():
        if not isinstance(v, CALIBRATION_KEYS[k]) or isinstance(v, bool) or (_is_int(v) and v <= 0):
            raise RegpruneError(f"sweep config: [calibration] {k} = {v!r} is not a valid "
                                f"{'positive integer' if CALIBRATION_KEYS[k] is int else 'string'}")

    options = raw_options
    for m, opts in options.items():
        if m not in methods:
            raise RegpruneError(f"sweep config: [options.{m}] is given but {m!r} is not in 'methods' {methods}")
        if not isinstance(opts, dict):
            raise RegpruneError(f"sweep config: [options.{m}] must be a table, got {opts!r}")
        grid = sorted(GRID_KEYS & set(opts))
        if grid:
            raise RegpruneError(f"sweep config: [options.{m}] sets {', '.join(grid)}, which the grid sets "
                                "(use 'ratios' / 'seeds')")
        real = opts.get("method", m)
        if not isinstance(real, str) or real not in known:
            raise RegpruneError(f"sweep config: [options.{m}] method = {real!r} is not a method; "
                                f"available: {', '.join(known)}")
        _check_keys(f"[options.{m}]", opts, (_method_option_names(real) - GRID_KEYS) | VARIANT_KEYS)
        if "ratios" in opts:
            own = opts["ratios"]
            # A variant may have ratios of its own, e.g. a DReSS ratio that matches another method's size.
            if not isinstance(own, list) or not own or any(not _is_num(r) or not 0.0 < r < 1.0 for r in own):
                raise RegpruneError(f"sweep config: [options.{m}] ratios = {own!r} must be a non-empty list of "
                                    "numbers in (0, 1)")
    options = {m: dict(options.get(m, {})) for m in methods}
    for m in methods:  # build each method's config once now, so a bad value fails before any work
        from .api import _make_config
        from .methods import get_method

        for r in _label_ratios(options[m], ratios):
            try:
                _make_config(get_method(options[m].get("method", m)), None, {**_method_options(options[m]), "ratio": r})
            except (TypeError, ValueError) as e:
                raise RegpruneError(f"sweep config: [options.{m}]: {e} (at ratio {r:g})") from None

    ev = None
    if raw.get("eval") is not None:  # None: a normalized config without evaluation
        ev = _table(raw, "eval")
        _check_keys("[eval]", ev, EVAL_KEYS)
        for k, v in ev.items():
            if not isinstance(v, EVAL_KEYS[k]) or (EVAL_KEYS[k] is not bool and isinstance(v, bool)):
                raise RegpruneError(f"sweep config: [eval] {k} = {v!r} has the wrong type")
        for k in ("ppl", "tasks"):
            if k in ev and (not ev[k] or not all(isinstance(x, str) and x for x in ev[k])):
                raise RegpruneError(f"sweep config: [eval] {k} must be a non-empty list of names, got {ev[k]!r}")
        missing = sorted(k for k in ev if not _evaluate_accepts(k))
        if missing:
            raise RegpruneError(f"sweep config: [eval] {', '.join(missing)}: this version of "
                                "regprune.api.evaluate does not support it; remove it from the config")

    from .data.sources import check_calibration_source, parse_source

    check_calibration_source(parse_source(calibration.get("calib", "wikitext2:validation")), _eval_sources(ev))

    return {
        "model": model,
        "data_dir": _resolve(base, data_dir) if data_dir else None,
        "output": _resolve(base, raw["output"]),
        "methods": methods,
        "ratios": ratios,
        "seeds": seeds,
        "save_models": save_models,
        "dtype": raw.get("dtype", "float32"),
        "device": raw.get("device", "cpu"),
        "calibration": calibration,
        "options": options,
        "eval": ev,
    }


def load_sweep_config(path) -> dict:
    """Read a sweep config (TOML, or JSON for *.json) and validate it; see the module docstring."""
    p = Path(path)
    if not p.is_file():
        raise RegpruneError(f"sweep config {p} not found")
    try:
        if p.suffix.lower() == ".json":
            raw = json.loads(p.read_text())
        else:
            try:
                import tomllib
            except ImportError:  # Python 3.10
                raise RegpruneError("TOML sweep files need Python >= 3.11; write the config as .json") from None
            with open(p, "rb") as f:
                raw = tomllib.load(f)
    except ValueError as e:  # tomllib.TOMLDecodeError and json.JSONDecodeError are ValueErrors
        raise RegpruneError(f"cannot parse sweep config {p}: {e}") from None
    return validate_sweep_config(raw, base_dir=p.parent.resolve())


# ---------------------------------------------------------------- cells


def cell_name(method: str, ratio: float | None = None, seed: int | None = None) -> str:
    return DENSE if method == DENSE else f"{method}-r{ratio:g}-s{seed}"


def _grid(cfg: dict) -> list[tuple[str, float | None, int | None]]:
    cells = [(DENSE, None, None)] if cfg["eval"] is not None else []
    return cells + [(m, r, s) for m in cfg["methods"] for r in _label_ratios(cfg["options"].get(m, {}), cfg["ratios"])
                    for s in cfg["seeds"]]


def _eval_kwargs(cfg: dict) -> dict:
    ev = dict(cfg["eval"] or {})
    if ev.get("max_windows") == 0:
        ev["max_windows"] = None  # 0 = all windows, as on the command line
    return ev


def _cell_spec(cfg: dict, method: str, ratio, seed) -> dict:
    """Everything that determines a cell's numbers; a finished cell must match it to be reused."""
    spec = {"model": cfg["model"], "dtype": cfg["dtype"], "device": cfg["device"], "data_dir": cfg["data_dir"],
            "eval": cfg["eval"]}
    if method != DENSE:
        spec.update(method=method, ratio=ratio, seed=seed, calibration=cfg["calibration"],
                    options=cfg["options"].get(method, {}))
    return json.loads(json.dumps(spec))


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RegpruneError(f"cannot read {path}: {e}") from None


def _eval_sources(ev: dict | None) -> list:
    from .data.sources import parse_eval_source

    names = (ev or {}).get("ppl", ["wikitext2"] if ev is not None else [])
    return [parse_eval_source(n) for n in names]


def _summarize_eval(ev: dict | None) -> dict:
    """The numbers of an evaluation, and their protocols, for result.json."""
    if not ev:
        return {}
    out = {"perplexity": {k: v["ppl"] for k, v in (ev.get("perplexity") or {}).items()},
           "protocols": {"perplexity": {k: v.get("protocol") for k, v in (ev.get("perplexity") or {}).items()}}}
    z = ev.get("zeroshot")
    if isinstance(z, dict):
        out["zeroshot"] = {t: r.get("acc") for t, r in (z.get("tasks") or {}).items()}
        if z.get("mean_acc") is not None:
            out["mean_acc"] = z["mean_acc"]
        out["protocols"]["zeroshot"] = {"protocol": z.get("protocol"),
                                        "tasks": {t: {k: r.get(k) for k in ("n", "split")}
                                                  for t, r in (z.get("tasks") or {}).items()}}
    if isinstance(ev.get("speed"), dict):
        out["speed"] = ev["speed"]
    return out


class _Runner:
    def __init__(self, cfg: dict):
        self.cfg = cfg
        self._loaded = None

    @property
    def loaded(self):
        if self._loaded is None:  # loaded once, and only when some cell needs computing
            log.info("loading %s", self.cfg["model"])
            self._loaded = regprune.load_model(self.cfg["model"], dtype=self.cfg["dtype"], device=self.cfg["device"])
        return self._loaded

    def evaluate(self, model, tokenizer, speed_reference=None) -> dict | None:
        if self.cfg["eval"] is None:
            return None
        from .record import versions

        # With speed on, each pruned model is timed interleaved with the dense one: ratios from one run.
        out = regprune.api.evaluate(model, tokenizer, data_dir=self.cfg["data_dir"], speed_reference=speed_reference,
                                    **_eval_kwargs(self.cfg))
        return {"model": None, **out, "versions": versions()}

    def run_cell(self, d: Path, method: str, ratio, seed, spec: dict) -> dict:
        if d.exists():  # unfinished leftovers (no result.json), or resume=False
            shutil.rmtree(d)
        d.mkdir(parents=True)
        t0 = time.perf_counter()
        result = {"cell": d.name, "method": method, "ratio": ratio, "seed": seed, "spec": spec}
        if method == DENSE:
            loaded = self.loaded
            ev = self.evaluate(loaded.model, loaded.tokenizer)
            ev["model"] = self.cfg["model"]
            _write_json(d / "eval.json", ev)
            result["parameters"] = ev.get("parameters")
        else:
            opts = self.cfg["options"].get(method, {})
            res = regprune.prune(self.loaded, method=opts.get("method", method), ratio=ratio, seed=seed,
                                 data_dir=self.cfg["data_dir"], eval_sources=_eval_sources(self.cfg["eval"]),
                                 dtype=self.cfg["dtype"], device=self.cfg["device"], **self.cfg["calibration"],
                                 **_method_options(opts))
            t_prune = time.perf_counter() - t0
            ev = self.evaluate(res.model, res.tokenizer, speed_reference=self.loaded.model)
            record = res.record
            if ev is not None:
                ev["model"] = f"{d.name} (pruned from {self.cfg['model']})"
                record.setdefault("metrics", {})["pruned"] = ev.get("perplexity", {})
            if self.cfg["save_models"]:
                res.save(d / "model")
            _write_json(d / "regprune.json", record)
            if ev is not None:
                _write_json(d / "eval.json", ev)
            details = record.get("method_details") or {}
            result.update(config=record.get("config"), calibration=record.get("data"), method_name=record["method"],
                          parameters_nonzero=details.get("parameters_nonzero", record["parameters_after"]),
                          parameters=record["parameters_after"], parameters_before=record["parameters_before"],
                          parameter_ratio=record["parameter_ratio"],
                          hidden_size=[details.get("hidden_size_before"), details.get("hidden_size_after")],
                          prune_seconds=round(t_prune, 2))
            del res
        result.update(_summarize_eval(ev))
        result["seconds"] = round(time.perf_counter() - t0, 2)
        result["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        _write_json(d / RESULT, result)  # last: from now on the cell counts as done
        return result


def run_sweep(config, *, resume: bool = True) -> dict:
    """Run every cell of the grid that is not finished yet (all of them with resume=False).

    `config`: a dict as returned by load_sweep_config (or a raw dict, validated here), or a config path.
    Returns {"output", "cells": {name: result}, "computed": [...], "skipped": [...], "table": markdown}.
    """
    if isinstance(config, (str, os.PathLike)):
        cfg = load_sweep_config(config)
    else:
        cfg = validate_sweep_config(config)
    out = Path(cfg["output"])
    if out.exists() and not out.is_dir():
        raise RegpruneError(f"sweep output {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    grid = _grid(cfg)
    specs = {cell_name(m, r, s): _cell_spec(cfg, m, r, s) for m, r, s in grid}
    if resume:  # refuse a changed configuration before computing anything
        for name, spec in specs.items():
            f = out / name / RESULT
            if f.is_file() and _read_json(f).get("spec") != spec:
                old = _read_json(f).get("spec") or {}
                diff = sorted(k for k in set(old) | set(spec) if old.get(k) != spec.get(k))
                raise RegpruneError(
                    f"sweep cell {out / name} was computed with different settings ({', '.join(diff)}); "
                    "use another output directory, delete that cell, or run with resume=False to recompute all")
    _write_json(out / "sweep.json", cfg)
    runner = _Runner(cfg)
    cells, computed, skipped = {}, [], []
    for method, ratio, seed in grid:
        name = cell_name(method, ratio, seed)
        d = out / name
        if resume and (d / RESULT).is_file():
            log.info("sweep cell %s: skipped, done earlier", name)
            cells[name] = _read_json(d / RESULT)
            skipped.append(name)
        else:
            log.info("sweep cell %s: running", name)
            cells[name] = runner.run_cell(d, method, ratio, seed, specs[name])
            computed.append(name)
            log.info("sweep cell %s: done in %.1fs", name, cells[name]["seconds"])
        _write_summary(out, cfg, grid)
    table = sweep_table(out)
    return {"output": str(out), "cells": cells, "computed": computed, "skipped": skipped, "table": table}


def _write_summary(out: Path, cfg: dict, grid) -> None:
    cells, pending = {}, []
    for m, r, s in grid:
        name = cell_name(m, r, s)
        f = out / name / RESULT
        if f.is_file():
            cells[name] = _read_json(f)
        else:
            pending.append(name)
    _write_json(out / "summary.json", {"config": cfg, "cells": cells, "pending": pending})
    lines = [f"# Sweep {out.name}", "", sweep_table(out).rstrip(), "", "## Cells", ""]
    lines += ["| cell | parameters | hidden size | seconds | finished |", "| :--- | ---: | ---: | ---: | :--- |"]
    for m, r, s in grid:
        name = cell_name(m, r, s)
        c = cells.get(name)
        if c is None:
            lines.append(f"| {name} | — | — | — | pending |")
            continue
        hs = c.get("hidden_size") or []
        hidden = f"{hs[0]} → {hs[1]}" if len(hs) == 2 and None not in hs else "—"
        params = f"{c['parameters']:,}" if _is_int(c.get("parameters")) else "—"
        lines.append(f"| {name} | {params} | {hidden} | {c.get('seconds', '—')} | {c.get('finished_at', '')} |")
    tmp = out / ".summary.md.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, out / "summary.md")


# ---------------------------------------------------------------- the table


def _fmt_ppl(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.2f}"


def _fmt_acc(v: float) -> str:
    return f"{100 * v:.2f}"


def _agg(values: list[float], fmt, expected: int) -> str:
    if not values:
        return "—"
    s = fmt(statistics.fmean(values))
    if len(values) > 1:
        s += f" ± {fmt(statistics.stdev(values))}"
    return s + ("*" if len(values) < expected else "")




def _protocol_text(p: dict | None) -> str:
    if not p:
        return "protocol not recorded"
    s = f"{p.get('windows', '?')} windows × {p.get('seq_len', '?')} tokens"
    if p.get("windows_available") is not None:
        s += f" of {p['windows_available']} available"
    extra = [str(p[k]) for k in ("window_placement", "tokenization") if p.get(k)]
    return s + (", " + ", ".join(extra) if extra else "")


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
    return _sweep_table_body(cfg, results, methods, ratios, n_seeds, dense, sources, tasks, has_mean, metrics)


def finished_cells(output_dir) -> tuple[dict | None, list[dict], list[str], list[float], int]:
    """(config, finished result.json contents, method labels, ratios, seeds per cell) of a sweep directory."""
    out = Path(output_dir)
    if not out.is_dir():
        raise RegpruneError(f"sweep output {out} not found")
    cfg = _read_json(out / "sweep.json") if (out / "sweep.json").is_file() else None
    results = []
    for f in sorted(out.glob(f"*/{RESULT}")):
        r = _read_json(f)
        if isinstance(r, dict) and "method" in r:
            results.append(r)
    if cfg is not None:
        wanted = {cell_name(m, r, s) for m, r, s in _grid(cfg)}
        results = [r for r in results if r.get("cell") in wanted]
        methods, n_seeds = cfg["methods"], len(cfg["seeds"])
        ratios = sorted({r for m in methods for r in _label_ratios(cfg["options"].get(m, {}), cfg["ratios"])})
    else:
        methods = sorted({r["method"] for r in results if r["method"] != DENSE})
        ratios = sorted({r["ratio"] for r in results if r["method"] != DENSE})
        n_seeds = max([len({r["seed"] for r in results if r["method"] == m}) for m in methods] or [1])
    return cfg, results, methods, ratios, n_seeds


def _sweep_table_body(cfg, results, methods, ratios, n_seeds, dense, sources, tasks, has_mean, metrics) -> str:

    def values(rs: list[dict], kind: str, key: str) -> list[float]:
        got = []
        for r in rs:
            v = (r.get("perplexity") or {}).get(key) if kind == "ppl" else \
                (r.get("zeroshot") or {}).get(key) if kind == "acc" else \
                r.get("mean_acc") if kind == "mean" else r.get("parameters")
            if _is_num(v):
                got.append(float(v))
        return got

    def fmt_for(kind):
        return _fmt_ppl if kind == "ppl" else _fmt_acc if kind in ("acc", "mean") else (lambda v: f"{v:,.0f}")

    header = ["method"] + [f"{r:g} · {title}" for r in ratios for _, _, title in metrics]
    rows = []
    if dense is not None:
        rows.append(["dense"] + [_agg(values([dense], k, key), fmt_for(k), 1) for _ in ratios for k, key, _ in metrics])
    for m in methods:
        row = [m]
        for ratio in ratios:
            rs = [r for r in results if r["method"] == m and r.get("ratio") == ratio]
            row += [_agg(values(rs, k, key), fmt_for(k), n_seeds) for k, key, _ in metrics]
        rows.append(row)
    lines = ["| " + " | ".join(header) + " |", "| :--- | " + " | ".join("---:" for _ in header[1:]) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]

    starred = any(c.endswith("*") for row in rows for c in row)
    head = [f"Columns grouped by pruning ratio (fraction of hidden channels removed: "
            f"{', '.join(f'{r:g}' for r in ratios)})."]
    head.append(f"Mean ± sample std over {n_seeds} seeds." if n_seeds > 1 else "One seed.")
    if starred:
        head.append("* = fewer seeds finished than configured.")
    if tasks or has_mean:
        head.append("Accuracies in percent.")
    notes = [" ".join(head)] + protocol_notes(cfg, results, methods)
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def protocol_notes(cfg: dict | None, results: list[dict], methods: list[str]) -> list[str]:
    """One line per protocol fact of the finished cells: evaluation, calibration, model, method settings."""
    notes = []
    sources = list(dict.fromkeys(k for r in results for k in (r.get("perplexity") or {})))
    protos: dict[str, set[str]] = {}
    for r in results:
        for s, p in ((r.get("protocols") or {}).get("perplexity") or {}).items():
            protos.setdefault(s, set()).add(_protocol_text(p))
    for s in sources:
        ps = sorted(protos.get(s, {"protocol not recorded"}))
        notes.append(f"PPL {s}: {ps[0]}." if len(ps) == 1 else
                     f"PPL {s}: several protocols in these cells (not comparable): {' | '.join(ps)}.")
    zs = {json.dumps((r.get("protocols") or {}).get("zeroshot"), sort_keys=True) for r in results
          if (r.get("protocols") or {}).get("zeroshot")}
    for z in sorted(zs):
        zd = json.loads(z)
        per_task = ", ".join(f"{t}: n={v.get('n')} ({v.get('split')})" for t, v in (zd.get("tasks") or {}).items())
        proto = zd.get("protocol") or {}
        notes.append("Zero-shot: " + "; ".join(f"{k}={v}" for k, v in sorted(proto.items()))
                     + (f"; {per_task}" if per_task else "") + ".")
    cal = set()
    for r in results:
        c = r.get("calibration")
        if isinstance(c, dict) and c:
            cal.add(f"{c.get('source')}, {c.get('num_samples')} windows × {c.get('seq_len')} tokens at random offsets "
                    f"(seeded by the cell's seed), {c.get('regularize_windows')} for regularization / "
                    f"{c.get('recovery_windows')} held for recovery")
    notes += [f"Calibration: {c}." for c in sorted(cal)]
    if cfg is not None:
        notes.append(f"Model: {cfg['model']}; seeds {cfg['seeds']}.")
    for m in methods:
        confs = {json.dumps({k: v for k, v in flatten(r["config"]).items() if k not in ("ratio", "seed", "train.seed")},
                            sort_keys=True) for r in results if r["method"] == m and isinstance(r.get("config"), dict)}
        for conf in sorted(confs):
            notes.append(f"{m}: " + ", ".join(f"{k}={v}" for k, v in json.loads(conf).items()) + ".")
    return notes


__all__ = ["load_sweep_config", "validate_sweep_config", "run_sweep", "sweep_table", "cell_name"]
