"""The loop the benchmark scripts share: one process per pipeline, resumable.

Each pipeline runs as `python SCRIPT --only NAME --work WORK ...` in a fresh process (so peak memory and
timings of one pipeline do not carry into the next) and writes WORK/NAME.json; a pipeline whose file
exists is skipped, so an interrupted benchmark resumes where it stopped (delete a file to rerun it).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterable


def run_pipelines(script: str, pipelines: Iterable[str], work: Path, extra_args: list[str],
                  summarize: Callable[[], object]) -> None:
    for name in pipelines:
        if (work / f"{name}.json").exists():
            print(f"[bench] {name}: done earlier, skipped", flush=True)
            continue
        print(f"[bench] {name}: running", flush=True)
        subprocess.run([sys.executable, script, "--only", name, "--work", str(work), *extra_args], check=True)
        summarize()


def load_rows(work: Path, pipelines: Iterable[str]) -> dict:
    """The rows of every finished pipeline, in pipeline order."""
    rows = {}
    for name in pipelines:
        f = work / f"{name}.json"
        if f.exists():
            rows.update(json.loads(f.read_text()))
    return rows
