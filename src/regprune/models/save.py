"""Save a model atomically: written beside the target, renamed into place only when complete."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import RegpruneError

RECORD_NAME = "regprune.json"


def check_output_dir(out_dir: str | os.PathLike) -> Path:
    """Refuse an output directory that exists and is not empty (before any work is done)."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RegpruneError(
            f"output directory {out} already exists and is not empty; choose a new path or remove it first "
            "(regprune never overwrites a directory)."
        )
    return out


def save_model(model, tokenizer, out_dir: str | os.PathLike, record: dict | None = None) -> Path:
    out = check_output_dir(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if record is not None:
            (tmp / RECORD_NAME).write_text(json.dumps(record, indent=2, default=str) + "\n")
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def write_record(out_dir: str | os.PathLike, record: dict) -> None:
    """Rewrite regprune.json of a finished directory (e.g. to add metrics measured after saving)."""
    path = Path(out_dir) / RECORD_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    os.replace(tmp, path)
