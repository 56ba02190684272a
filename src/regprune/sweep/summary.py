"""summary.json and summary.md of a sweep output, rewritten after every cell."""
from __future__ import annotations

from pathlib import Path

from ..formatting import MISSING, fmt_num, is_int, md_table
from ..io import atomic_write_json, atomic_write_text
from .cells import RESULT, _read_json, cell_name
from .table import sweep_table


def _write_summary(out: Path, cfg: dict, grid) -> None:
    cells, pending = {}, []
    for m, r, s in grid:
        name = cell_name(m, r, s)
        f = out / name / RESULT
        if f.is_file():
            cells[name] = _read_json(f)
        else:
            pending.append(name)
    atomic_write_json(out / "summary.json", {"config": cfg, "cells": cells, "pending": pending})
    rows = []
    for m, r, s in grid:
        name = cell_name(m, r, s)
        c = cells.get(name)
        if c is None:
            rows.append([name, MISSING, MISSING, MISSING, "pending"])
            continue
        hs = c.get("hidden_size") or []
        hidden = f"{hs[0]} → {hs[1]}" if len(hs) == 2 and None not in hs else MISSING
        params = fmt_num(c["parameters"]) if is_int(c.get("parameters")) else MISSING
        rows.append([name, params, hidden, c.get("seconds", MISSING), c.get("finished_at", "")])
    lines = [f"# Sweep {out.name}", "", sweep_table(out).rstrip(), "", "## Cells", ""]
    lines += md_table(["cell", "parameters", "hidden size", "seconds", "finished"], rows, ["l", "r", "r", "r", "l"])
    atomic_write_text(out / "summary.md", "\n".join(lines) + "\n")
