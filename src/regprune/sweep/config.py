"""The sweep config: its keys, validation (every value checked before any work) and loading."""
from __future__ import annotations

import dataclasses
import inspect
import json
import os
from pathlib import Path

import regprune

from ..errors import RegpruneError
from ..formatting import is_int as _is_int, is_num as _is_num
from ..validate import check_number

TOP_KEYS = {"model", "data_dir", "output", "methods", "ratios", "seeds", "save_models", "dtype", "device",
            "calibration", "options", "eval"}
CALIBRATION_KEYS = {"calib": str, "num_samples": int, "seq_len": int, "sampling": str}
EVAL_KEYS = {"ppl": list, "seq_len": int, "max_windows": int, "max_tokens": int, "batch_size": int,
             "tasks": list, "limit": (int, float), "speed": bool,
             # accepted only where regprune.api.evaluate has them (checked against its signature)
             "task_batch_size": int, "offline_tasks": bool, "speed_options": dict}
# Ranges of the numeric [eval] options: (smallest allowed, whether the bound itself is excluded); a window
# needs 2 tokens to predict one, as `regprune eval --seq-len-eval` checks.
EVAL_RANGES = {"seq_len": (2, False), "max_windows": (0, False), "max_tokens": (1, False), "batch_size": (1, False),
               "task_batch_size": (1, False), "limit": (0, True)}
# [eval.speed_options]: the smallest value of each integer option of regprune.eval.speed.measure_speed.
SPEED_MINIMUMS = {"prompt_len": 1, "gen_batch": 1, "gen_prompt_len": 1, "new_tokens": 1, "repeats": 1, "warmup": 0,
                  "seed": None}
GRID_KEYS = {"ratio", "seed"}
VARIANT_KEYS = {"method", "ratios"}  # in [options.<label>]: not method options


def _method_options(opts: dict) -> dict:
    return {k: v for k, v in opts.items() if k not in VARIANT_KEYS}


def _label_ratios(opts: dict, ratios: list[float]) -> list[float]:
    return [float(r) for r in opts["ratios"]] if "ratios" in opts else ratios


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
    from ..methods import get_method

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


def _eval_sources(ev: dict | None) -> list:
    from ..data.sources import parse_eval_source

    names = (ev or {}).get("ppl", ["wikitext2"] if ev is not None else [])
    return [parse_eval_source(n) for n in names]


def _check_range(where: str, name: str, value, minimum, strict: bool = False, integer: bool = True) -> None:
    try:
        check_number(name, value, integer=integer, minimum=minimum, strict=strict)
    except ValueError as e:
        raise RegpruneError(f"sweep config: {where} {e}") from None


def _check_method_configs(methods: list[str], options: dict, ratios: list[float]) -> None:
    """Build each label's method config at each of its ratios, so that a bad value fails before any work."""
    from ..api import _make_config
    from ..methods import get_method

    for m in methods:
        for r in _label_ratios(options[m], ratios):
            try:
                _make_config(get_method(options[m].get("method", m)), None,
                             {**_method_options(options[m]), "ratio": r})
            except (TypeError, ValueError, RegpruneError) as e:
                raise RegpruneError(f"sweep config: [options.{m}]: {e} (at ratio {r:g})") from None


def _check_eval(ev: dict) -> None:
    _check_keys("[eval]", ev, EVAL_KEYS)
    for k, v in ev.items():
        if not isinstance(v, EVAL_KEYS[k]) or (EVAL_KEYS[k] is not bool and isinstance(v, bool)):
            raise RegpruneError(f"sweep config: [eval] {k} = {v!r} has the wrong type")
    for k in ("ppl", "tasks"):
        if k in ev and (not ev[k] or not all(isinstance(x, str) and x for x in ev[k])):
            raise RegpruneError(f"sweep config: [eval] {k} must be a non-empty list of names, got {ev[k]!r}")
    for k, (minimum, strict) in EVAL_RANGES.items():
        if k in ev:
            _check_range("[eval]", k, ev[k], minimum, strict, integer=EVAL_KEYS[k] is int)
    missing = sorted(k for k in ev if not _evaluate_accepts(k))
    if missing:
        raise RegpruneError(f"sweep config: [eval] {', '.join(missing)}: this version of "
                            "regprune.api.evaluate does not support it; remove it from the config")
    if "speed_options" in ev:
        from ..eval.speed import measure_speed

        allowed = set(inspect.signature(measure_speed).parameters) - {"models", "reference", "paths"}
        _check_keys("[eval.speed_options]", ev["speed_options"], allowed)
        for k, v in ev["speed_options"].items():
            if k in SPEED_MINIMUMS and not (k == "gen_batch" and v is None):
                _check_range("[eval.speed_options]", k, v, SPEED_MINIMUMS[k])


def validate_sweep_config(raw: dict, base_dir: str | os.PathLike | None = None) -> dict:
    """Check a sweep configuration and return it normalized (every optional key filled in).

    Every value is checked here, before any work: each method config is built at each of its ratios, and
    the numeric calibration and evaluation options are range-checked.
    `base_dir`: relative paths are resolved against it (load_sweep_config passes the file's directory).
    """
    from ..methods import list_methods

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
    if "dtype" in raw:
        from ..models.load import _dtype

        try:
            _dtype(raw["dtype"])
        except RegpruneError as e:
            raise RegpruneError(f"sweep config: 'dtype': {e}") from None

    calibration = _table(raw, "calibration")
    _check_keys("[calibration]", calibration, CALIBRATION_KEYS)
    for k, v in calibration.items():
        if k == "num_samples" and v == "auto":
            continue
        if not isinstance(v, CALIBRATION_KEYS[k]) or isinstance(v, bool) or (_is_int(v) and v <= 0):
            raise RegpruneError(f"sweep config: [calibration] {k} = {v!r} is not a valid "
                                f"{'positive integer' if CALIBRATION_KEYS[k] is int else 'string'}"
                                + (' (or "auto")' if k == "num_samples" else ""))
    if "seq_len" in calibration:
        _check_range("[calibration]", "seq_len", calibration["seq_len"], 2)  # a window predicts from 2 tokens

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
    _check_method_configs(methods, options, ratios)

    ev = None
    if raw.get("eval") is not None:  # None: a normalized config without evaluation
        ev = _table(raw, "eval")
        _check_eval(ev)

    from ..data.sources import DEFAULT_CALIBRATION, check_calibration_source, parse_mixture

    resolved_data_dir = _resolve(base, data_dir) if data_dir else None
    for calib, _ in parse_mixture(calibration.get("calib", DEFAULT_CALIBRATION)):
        check_calibration_source(calib, _eval_sources(ev), resolved_data_dir)
    if calibration.get("sampling", "distinct") not in ("distinct", "random"):
        raise RegpruneError(f"sweep config: [calibration] sampling must be distinct or random, got "
                            f"{calibration['sampling']!r}")

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
    """Read a sweep config (TOML, or JSON for *.json) and validate it; see regprune.sweep's docstring."""
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
