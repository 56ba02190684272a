"""Running a sweep: one output directory, locked for the whole run; one cell at a time, resumable."""
from __future__ import annotations

import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import regprune

from ..errors import RegpruneError
from ..io import OutputLock, atomic_write_json, atomic_write_text, check_writable
from .cells import (CELL_MARKER, DENSE, RESULT, SWEEP_MARKER, _cell_spec, _grid, _read_json, cell_files, cell_name,
                    check_cells_are_ours, check_output_is_ours, is_ours, log, missing_files)
from .config import _eval_sources, _method_options, load_sweep_config, validate_sweep_config
from .summary import _write_summary
from .table import sweep_table


def _eval_kwargs(cfg: dict) -> dict:
    ev = dict(cfg["eval"] or {})
    if ev.get("max_windows") == 0:
        ev["max_windows"] = None  # 0 = all windows, as on the command line
    return ev


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


def _new_cell_dir(d: Path) -> None:
    """Create the cell directory with its marker (clearing what an earlier run of ours left there)."""
    if d.exists():  # ours (checked before any work): unfinished leftovers, an incomplete cell, or resume=False
        if not is_ours(d):  # checked again now: the plan was made before earlier cells ran (maybe hours ago)
            raise RegpruneError(f"sweep cell {d} was changed by someone else while the sweep ran (it no longer "
                                "carries regprune's marker); it is left as it is: move it away and run again")
        shutil.rmtree(d)
    d.mkdir(parents=True)
    atomic_write_text(d / CELL_MARKER, "created by regprune sweep; the sweep clears and recomputes this "
                                       f"directory when it is not finished ({time.strftime('%Y-%m-%dT%H:%M:%S%z')})\n")


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
        from ..record import versions

        # With speed on, each pruned model is timed interleaved with the dense one: ratios from one run.
        out = regprune.api.evaluate(model, tokenizer, data_dir=self.cfg["data_dir"], speed_reference=speed_reference,
                                    **_eval_kwargs(self.cfg))
        return {"model": None, **out, "versions": versions()}

    def run_cell(self, d: Path, method: str, ratio, seed, spec: dict) -> dict:
        _new_cell_dir(d)
        t0 = time.perf_counter()
        result = {"cell": d.name, "method": method, "ratio": ratio, "seed": seed, "spec": spec}
        if method == DENSE:
            loaded = self.loaded
            ev = self.evaluate(loaded.model, loaded.tokenizer)
            ev["model"] = self.cfg["model"]
            atomic_write_json(d / "eval.json", ev)
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
                res.save(d / "model")  # atomic: built in a hidden partial directory, renamed when complete
            atomic_write_json(d / "regprune.json", record)
            if ev is not None:
                atomic_write_json(d / "eval.json", ev)
            details = record.get("method_details") or {}
            result.update(config=record.get("config"), calibration=record.get("data"), method_name=record["method"],
                          parameters_nonzero=details.get("parameters_nonzero", record["parameters_after"]),
                          parameters=record["parameters_after"], parameters_before=record["parameters_before"],
                          parameter_ratio=record["parameter_ratio"],
                          hidden_size=[details.get("hidden_size_before"), details.get("hidden_size_after")],
                          prune_seconds=round(t_prune, 2))
            del res
        result["files"] = cell_files(method, ev is not None, self.cfg["save_models"])
        result.update(_summarize_eval(ev))
        result["seconds"] = round(time.perf_counter() - t0, 2)
        result["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        atomic_write_json(d / RESULT, result)  # last: from now on the cell counts as done
        return result


def _as_config(config) -> dict:
    if isinstance(config, (str, os.PathLike)):
        return load_sweep_config(config)
    return validate_sweep_config(config)


@contextmanager
def output_lock(output):
    """Hold the sweep output's lock (one writer at a time) after checking that it can be written."""
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise RegpruneError(f"sweep output {out} exists and is not a directory")
    check_writable(out, "sweep output")
    with OutputLock(out, "sweep output"):
        yield out


def _plan(out: Path, cfg: dict, specs: dict, resume: bool) -> dict[str, str | None]:
    """For each cell: None (reuse its result.json) or why it is computed. Refuses, before any work, a
    changed configuration and cell-named directories the sweep did not create."""
    check_output_is_ours(out)
    check_cells_are_ours(out, list(specs))
    plan = {}
    for name, spec in specs.items():
        d = out / name
        f = d / RESULT
        if not f.is_file():
            plan[name] = "unfinished (no result.json), cleared and computed again" if d.exists() else "running"
            continue
        if not resume:
            plan[name] = "recomputed (resume=False)"
            continue
        result = _read_json(f)
        missing = missing_files(d, result, cfg)
        if missing:
            plan[name] = f"incomplete ({', '.join(missing)} missing), cleared and computed again"
            continue
        if result.get("spec") != spec:
            old = result.get("spec") or {}
            diff = sorted(k for k in set(old) | set(spec) if old.get(k) != spec.get(k))
            raise RegpruneError(
                f"sweep cell {d} was computed with different settings ({', '.join(diff)}); "
                "use another output directory, delete that cell, or run with resume=False to recompute all")
        plan[name] = None
    return plan


def _check_device(device: str) -> None:
    from ..models.load import check_device

    try:
        check_device(device)
    except RegpruneError as e:
        raise RegpruneError(f"sweep config: 'device': {e}") from None


def _check_methods_fit_model(cfg: dict, cells) -> None:
    """The method x architecture check of every cell to compute, from the model's config alone (before the
    first cell trains: `layers = 40` on a 30-layer model fails now, not after the cells before it)."""
    from ..api import _make_config, check_model_for_method
    from ..methods import get_method
    from ..models.load import inspect_model

    model_config, _ = inspect_model(cfg["model"])
    for label, ratio, seed in cells:
        if label == DENSE:
            continue
        opts = cfg["options"].get(label, {})
        method = opts.get("method", label)
        mcfg = _make_config(get_method(method), None,
                            {**{k: v for k, v in opts.items() if k not in ("method", "ratios")}, "ratio": ratio,
                             "seed": seed})
        try:
            check_model_for_method(method, model_config, mcfg)
        except RegpruneError as e:
            raise RegpruneError(f"sweep cell {cell_name(label, ratio, seed)}: {e}") from None


def _run_sweep(cfg: dict, *, resume: bool = True) -> dict:
    """run_sweep's work, for a validated config; the caller holds output_lock(cfg["output"])."""
    out = Path(cfg["output"])
    grid = _grid(cfg)
    specs = {cell_name(m, r, s): _cell_spec(cfg, m, r, s) for m, r, s in grid}
    plan = _plan(out, cfg, specs, resume)
    if any(why is not None for why in plan.values()):
        _check_device(cfg["device"])
        _check_methods_fit_model(cfg, [(m, r, s) for m, r, s in grid if plan[cell_name(m, r, s)] is not None])
    out.mkdir(parents=True, exist_ok=True)
    if not (out / SWEEP_MARKER).is_file():
        atomic_write_text(out / SWEEP_MARKER, "written by regprune sweep: this directory holds a sweep's cells\n")
    atomic_write_json(out / "sweep.json", cfg)
    runner = _Runner(cfg)
    cells, computed, skipped = {}, [], []
    for method, ratio, seed in grid:
        name = cell_name(method, ratio, seed)
        d = out / name
        if plan[name] is None:
            log.info("sweep cell %s: skipped, done earlier", name)
            cells[name] = _read_json(d / RESULT)
            skipped.append(name)
        else:
            log.info("sweep cell %s: %s", name, plan[name])
            cells[name] = runner.run_cell(d, method, ratio, seed, specs[name])
            computed.append(name)
            log.info("sweep cell %s: done in %.1fs", name, cells[name]["seconds"])
        _write_summary(out, cfg, grid)
    table = sweep_table(out)
    return {"output": str(out), "cells": cells, "computed": computed, "skipped": skipped, "table": table}


def run_sweep(config, *, resume: bool = True) -> dict:
    """Run every cell of the grid that is not finished yet (all of them with resume=False).

    `config`: a dict as returned by load_sweep_config (or a raw dict, validated here), or a config path.
    The output is locked for the whole run: a second sweep on it is refused at once.
    Returns {"output", "cells": {name: result}, "computed": [...], "skipped": [...], "table": markdown}.
    """
    cfg = _as_config(config)
    with output_lock(cfg["output"]):
        return _run_sweep(cfg, resume=resume)
