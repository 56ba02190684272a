"""The cells of a sweep: names, the grid, what determines a cell's numbers, and what a cell directory holds.

A sweep deletes nothing it did not create: the output directory carries `SWEEP_MARKER`, every cell
directory `CELL_MARKER` from the moment it is created, and a cell-named directory without either (nor a
result.json of an earlier regprune version) is refused, never cleared.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from ..errors import RegpruneError
from .config import _label_ratios

log = logging.getLogger("regprune.sweep")

RESULT = "result.json"
DENSE = "dense"
SWEEP_MARKER = ".regprune-sweep"  # in the output directory: regprune sweep writes here
CELL_MARKER = ".regprune-cell"  # in each cell directory: created by regprune sweep, safe for it to clear
OUTPUT_FILES = ("sweep.json", "summary.json", "summary.md", "compare.json", "compare.md")  # rewritten in place


def cell_name(method: str, ratio: float | None = None, seed: int | None = None) -> str:
    return DENSE if method == DENSE else f"{method}-r{ratio:g}-s{seed}"


def _grid(cfg: dict) -> list[tuple[str, float | None, int | None]]:
    cells = [(DENSE, None, None)] if cfg["eval"] is not None else []
    return cells + [(m, r, s) for m in cfg["methods"] for r in _label_ratios(cfg["options"].get(m, {}), cfg["ratios"])
                    for s in cfg["seeds"]]


def _cell_spec(cfg: dict, method: str, ratio, seed) -> dict:
    """Everything that determines a cell's numbers; a finished cell must match it to be reused."""
    spec = {"model": cfg["model"], "dtype": cfg["dtype"], "device": cfg["device"], "data_dir": cfg["data_dir"],
            "eval": cfg["eval"]}
    if method != DENSE:
        spec.update(method=method, ratio=ratio, seed=seed, calibration=cfg["calibration"],
                    options=cfg["options"].get(method, {}), resolved=_resolved(cfg, method, ratio, seed))
    return json.loads(json.dumps(spec))


def _resolved(cfg: dict, label: str, ratio, seed) -> dict:
    """The settings a cell runs with once every default is filled in (the method's whole config, the
    calibration source, sampling and window count), so that a cell computed under other defaults (an older
    regprune) is not mixed in with new ones."""
    import dataclasses

    from ..api import _make_config, auto_num_samples
    from ..data.sources import DEFAULT_CALIBRATION
    from ..methods import get_method

    opts = {k: v for k, v in cfg["options"].get(label, {}).items() if k not in ("method", "ratios")}
    method = cfg["options"].get(label, {}).get("method", label)
    mcfg = _make_config(get_method(method), None, {**opts, "ratio": ratio, "seed": seed})
    cal = cfg["calibration"]
    n = cal.get("num_samples", "auto")
    return {"method": method, "config": dataclasses.asdict(mcfg),
            "calibration": {"calib": cal.get("calib", DEFAULT_CALIBRATION), "sampling": cal.get("sampling", "distinct"),
                            "num_samples": auto_num_samples(mcfg) if n == "auto" else n,
                            "seq_len": cal.get("seq_len", 512)}}


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RegpruneError(f"cannot read {path}: {e}") from None


def cell_files(method: str, evaluated: bool, saved_model: bool) -> list[str]:
    """The files (and the model directory) a cell writes besides result.json."""
    if method == DENSE:
        return ["eval.json"]
    return ["regprune.json"] + (["eval.json"] if evaluated else []) + (["model"] if saved_model else [])


def missing_files(d: Path, result: dict, cfg: dict) -> list[str]:
    """What a finished cell's result.json says it wrote and is not there (any file deleted since).

    A result.json of an earlier version has no "files": regprune.json (method cells) and eval.json (when
    the config evaluates) are expected then."""
    files = result.get("files")
    if not isinstance(files, list):
        files = cell_files(result.get("method", d.name), cfg["eval"] is not None, saved_model=False)
    return [f for f in files if not (d / f).exists()]


def is_ours(d: Path) -> bool:
    """Whether the sweep may clear the directory `d`: it carries the cell marker, holds a result.json
    (written by an earlier regprune version, before the marker), or is empty."""
    return (d / CELL_MARKER).is_file() or (d / RESULT).is_file() or not any(d.iterdir())


def check_output_is_ours(out: Path) -> None:
    """Refuse an existing output directory that regprune did not make but that holds files a sweep rewrites."""
    if not out.is_dir() or (out / SWEEP_MARKER).is_file() or (out / "sweep.json").is_file():
        return  # new, or ours (sweep.json: a sweep of an earlier version, before the marker)
    clash = [n for n in OUTPUT_FILES if (out / n).exists()]
    if clash:
        raise RegpruneError(
            f"sweep output {out} was not made by regprune sweep but holds {', '.join(clash)}, which a sweep "
            "would overwrite; move them away or choose another output directory")


def check_cells_are_ours(out: Path, names: list[str]) -> None:
    """Refuse, before any work, a cell-named path in `out` that the sweep did not create."""
    foreign = []
    for name in names:
        d = out / name
        if d.is_symlink() or (d.exists() and not d.is_dir()):
            foreign.append(f"{d} (not a directory)")
        elif d.is_dir() and not is_ours(d):
            foreign.append(str(d))
    if foreign:
        raise RegpruneError(
            f"sweep output {out}: {', '.join(foreign)} {'has' if len(foreign) == 1 else 'have'} the name of a "
            f"sweep cell but {'was' if len(foreign) == 1 else 'were'} not created by regprune sweep (no "
            f"{CELL_MARKER} marker, no {RESULT}); a sweep never deletes what it did not create: move or delete "
            f"{'it' if len(foreign) == 1 else 'them'}, or choose another output directory")


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
