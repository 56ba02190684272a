"""Save a model atomically: written beside the target, renamed into place only when complete."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import RegpruneError
from ..io import OutputLock, atomic_write_json, check_writable, clean_stale_partials, partial_dir, publish_dir

RECORD_NAME = "regprune.json"


def check_output_dir(out_dir: str | os.PathLike) -> Path:
    """Refuse an output directory that exists and is not empty, or that could not be created (before any
    work is done)."""
    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RegpruneError(
            f"output directory {out} already exists and is not empty; choose a new path or remove it first "
            "(regprune never overwrites a directory)."
        )
    check_writable(out, "output directory")
    return out


def save_model(model, tokenizer, out_dir: str | os.PathLike, record: dict | None = None, *,
               lock: OutputLock | None = None) -> Path:
    """Write model, tokenizer and regprune.json into a hidden partial directory next to `out_dir`, then
    rename it into place. `lock`: the caller's lock on `out_dir` (else one is taken for the save)."""
    out = check_output_dir(out_dir)
    own = lock is None
    if own:
        lock = OutputLock(out, "output directory").acquire()
    try:
        clean_stale_partials(out)
        tmp = partial_dir(out)
        try:
            model.save_pretrained(tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            if record is not None:
                atomic_write_json(tmp / RECORD_NAME, record)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        publish_dir(tmp, out)  # the lock keeps regprune writers out; this also refuses any other newcomer
    finally:
        if own:
            lock.release()
    return out


def write_record(out_dir: str | os.PathLike, record: dict) -> None:
    """Rewrite regprune.json of a finished directory (e.g. to add metrics measured after saving)."""
    atomic_write_json(Path(out_dir) / RECORD_NAME, record)
