"""Reliability of sweep / compare / report (issue 11): no data loss, no silently skipped cell, validation before
any work, atomic files and one writer per output, a report that fails early (tiny model, offline)."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

import regprune
from regprune.cli import main
from regprune.compare import run_compare, write_compare
from regprune.errors import RegpruneError
from regprune.io import OutputLock
from regprune.sweep import run_sweep, validate_sweep_config

CELLS = ["dense", "slice-r0.5-s0"]


def _raw(tiny_model_dir, corpus_dir, out: Path, **change) -> dict:
    raw = {"model": str(tiny_model_dir), "data_dir": str(corpus_dir), "output": str(out), "methods": ["slice"],
           "ratios": [0.5], "calibration": {"num_samples": 8, "seq_len": 32},
           "eval": {"ppl": ["wikitext2"], "seq_len": 32, "max_windows": 2}}
    return {**raw, **change}


@pytest.fixture(scope="module")
def finished(tiny_model_dir, corpus_dir, tmp_path_factory) -> Path:
    """A finished two-cell sweep (dense + slice), copied by `sweep` for each test."""
    out = tmp_path_factory.mktemp("finished") / "sweep"
    run_sweep(_raw(tiny_model_dir, corpus_dir, out))
    return out


@pytest.fixture
def sweep(finished, tiny_model_dir, corpus_dir, tmp_path):
    """(config, output) of a private copy of the finished sweep."""
    out = tmp_path / "sweep"
    shutil.copytree(finished, out)
    return validate_sweep_config(_raw(tiny_model_dir, corpus_dir, out)), out


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a model is loaded, pruned or evaluated."""
    def boom(*a, **k):
        raise AssertionError("work was done")

    for name in ("prune", "load_model"):
        monkeypatch.setattr(regprune, name, boom)
    monkeypatch.setattr(regprune.api, "evaluate", boom)


def _mtimes(out: Path) -> dict[str, int]:
    return {c: (out / c / "result.json").stat().st_mtime_ns for c in CELLS}


# ---------------------------------------------------------------- a: nothing deleted that the sweep did not create


def test_foreign_cell_named_directory_is_refused_not_deleted(tiny_model_dir, corpus_dir, tmp_path, no_work):
    out = tmp_path / "out"
    (out / "dense").mkdir(parents=True)
    (out / "dense" / "notes.txt").write_text("mine")
    (out / "slice-r0.5-s0").mkdir()
    (out / "slice-r0.5-s0" / "data.bin").write_bytes(b"mine too")
    cfg = _raw(tiny_model_dir, corpus_dir, out)
    with pytest.raises(RegpruneError, match=r"dense, .*slice-r0.5-s0 have the name of a sweep cell but were not "
                                            r"created by regprune sweep.*move or delete them"):
        run_sweep(cfg)
    assert (out / "dense" / "notes.txt").read_text() == "mine"
    assert (out / "slice-r0.5-s0" / "data.bin").read_bytes() == b"mine too"
    assert sorted(p.name for p in out.iterdir()) == ["dense", "slice-r0.5-s0"]  # nothing written


def test_foreign_cell_directory_via_cli_exits_nonzero(tiny_model_dir, corpus_dir, tmp_path, no_work, capsys):
    out = tmp_path / "out"
    (out / "slice-r0.5-s0").mkdir(parents=True)
    (out / "slice-r0.5-s0" / "keep.txt").write_text("x")
    cfg = tmp_path / "s.json"
    cfg.write_text(json.dumps(_raw(tiny_model_dir, corpus_dir, out)))
    for command in ("sweep", "compare"):
        assert main([command, str(cfg)]) == 2
        assert "slice-r0.5-s0" in capsys.readouterr().err
    assert (out / "slice-r0.5-s0" / "keep.txt").read_text() == "x"


@pytest.mark.parametrize("name, message", [
    ("dense", "dense \\(not a directory\\) has the name of a sweep cell"),  # a file named like a cell
    ("summary.md", "not made by regprune sweep but holds summary.md"),  # a file a sweep would overwrite
])
def test_foreign_files_in_the_output_are_refused(tiny_model_dir, corpus_dir, tmp_path, no_work, name, message):
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_text("mine")
    with pytest.raises(RegpruneError, match=message):
        run_sweep(_raw(tiny_model_dir, corpus_dir, out))
    assert (out / name).read_text() == "mine" and [p.name for p in out.iterdir()] == [name]


def test_markers_and_an_empty_cell_directory(tiny_model_dir, corpus_dir, tmp_path):
    out = tmp_path / "out"
    (out / "dense").mkdir(parents=True)  # empty: nothing to lose, used
    res = run_sweep(_raw(tiny_model_dir, corpus_dir, out))
    assert res["computed"] == CELLS
    assert (out / ".regprune-sweep").is_file()
    assert all((out / c / ".regprune-cell").is_file() for c in CELLS)


def test_marked_unfinished_cell_is_cleared_with_a_log_line(sweep, caplog):
    cfg, out = sweep
    (out / "slice-r0.5-s0" / "result.json").unlink()
    (out / "slice-r0.5-s0" / "leftover.bin").write_bytes(b"partial")
    with caplog.at_level("INFO", logger="regprune.sweep"):
        res = run_sweep(cfg)
    assert res["computed"] == ["slice-r0.5-s0"] and res["skipped"] == ["dense"]
    assert "sweep cell slice-r0.5-s0: unfinished (no result.json), cleared and computed again" in caplog.text
    assert not (out / "slice-r0.5-s0" / "leftover.bin").exists()


def test_legacy_outputs_count_as_ours(sweep, no_work, caplog):
    """Directories of an earlier version (no markers, result.json without "files") are reused, not refused."""
    cfg, out = sweep
    (out / ".regprune-sweep").unlink()
    for c in CELLS:
        (out / c / ".regprune-cell").unlink()
        f = out / c / "result.json"
        r = json.loads(f.read_text())
        del r["files"]
        f.write_text(json.dumps(r))
    before = _mtimes(out)
    with caplog.at_level("INFO", logger="regprune.sweep"):
        res = run_sweep(cfg)
    assert res["skipped"] == CELLS and _mtimes(out) == before
    assert (out / ".regprune-sweep").is_file()  # sweep.json: the output is ours; now marked


def test_legacy_cell_missing_its_record_is_recomputed(sweep, caplog):
    cfg, out = sweep
    f = out / "slice-r0.5-s0" / "result.json"
    r = json.loads(f.read_text())
    del r["files"]
    f.write_text(json.dumps(r))
    (out / "slice-r0.5-s0" / ".regprune-cell").unlink()
    (out / "slice-r0.5-s0" / "regprune.json").unlink()
    with caplog.at_level("INFO", logger="regprune.sweep"):
        res = run_sweep(cfg)
    assert res["computed"] == ["slice-r0.5-s0"]
    assert "incomplete (regprune.json missing)" in caplog.text


# ---------------------------------------------------------------- b: no incomplete cell skipped


@pytest.mark.parametrize("cell, missing", [("slice-r0.5-s0", "regprune.json"), ("slice-r0.5-s0", "eval.json"),
                                           ("dense", "eval.json")])
def test_finished_cell_missing_a_file_is_recomputed(sweep, caplog, cell, missing):
    cfg, out = sweep
    expected = ["eval.json"] if cell == "dense" else ["regprune.json", "eval.json"]
    assert json.loads((out / cell / "result.json").read_text())["files"] == expected
    (out / cell / missing).unlink()
    with caplog.at_level("INFO", logger="regprune.sweep"):
        res = run_sweep(cfg)
    assert res["computed"] == [cell]
    assert f"sweep cell {cell}: incomplete ({missing} missing), cleared and computed again" in caplog.text
    assert (out / cell / missing).is_file()


def test_saved_model_is_listed_checked_and_written_atomically(tiny_model_dir, corpus_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    cfg = validate_sweep_config(_raw(tiny_model_dir, corpus_dir, out, save_models=True))
    renamed = []
    real_rename = os.rename

    def rename(src, dst, *a, **k):
        renamed.append((Path(src).name, Path(dst)))
        return real_rename(src, dst, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(os, "rename", rename)
        run_sweep(cfg)
    cell = out / "slice-r0.5-s0"
    assert json.loads((cell / "result.json").read_text())["files"] == ["regprune.json", "eval.json", "model"]
    assert (cell / "model" / "config.json").is_file()
    assert any(dst == cell / "model" and src.startswith(".model.partial-") for src, dst in renamed)
    assert not [p for p in cell.iterdir() if p.name.startswith(".model")]  # no partial, no lock left

    shutil.rmtree(cell / "model")
    res = run_sweep(cfg)
    assert res["computed"] == ["slice-r0.5-s0"] and (cell / "model" / "config.json").is_file()


# ---------------------------------------------------------------- c: every value checked before any work


@pytest.mark.parametrize("change, message", [
    ({"methods": ["slice", "dress"], "options": {"dress": {"steps": 0}}}, r"\[options.dress\]: .*steps must be >= 1"),
    ({"methods": ["slice", "dress"], "options": {"dress": {"lam": "x"}}}, r"\[options.dress\]: .*lam"),
    ({"methods": ["slice", "dress"], "options": {"dress": {"lr": -1.0}}}, r"\[options.dress\]: .*lr must be > 0"),
    ({"eval": {"seq_len": 0}}, r"\[eval\] seq_len must be >= 2, got 0"),
    ({"eval": {"max_windows": -1}}, r"\[eval\] max_windows must be >= 0"),
    ({"eval": {"max_tokens": 0}}, r"\[eval\] max_tokens must be >= 1"),
    ({"eval": {"batch_size": 0}}, r"\[eval\] batch_size must be >= 1"),
    ({"eval": {"task_batch_size": 0}}, r"\[eval\] task_batch_size must be >= 1"),
    ({"eval": {"limit": 0}}, r"\[eval\] limit must be > 0"),
    ({"eval": {"limit": -0.5}}, r"\[eval\] limit must be > 0"),
    ({"eval": {"speed": True, "speed_options": {"repeats": 0}}}, r"\[eval.speed_options\] repeats must be >= 1"),
    ({"eval": {"speed": True, "speed_options": {"prompt_lenght": 8}}},
     r"unknown key\(s\) in \[eval.speed_options\]: prompt_lenght"),
    ({"calibration": {"num_samples": 0}}, r"\[calibration\] num_samples = 0"),
    ({"calibration": {"seq_len": -4}}, r"\[calibration\] seq_len = -4"),
    ({"calibration": {"seq_len": 1}}, r"\[calibration\] seq_len must be >= 2"),
    ({"dtype": "float13"}, r"'dtype': unknown dtype 'float13'"),
    ({"device": "tpu"}, r"'device': .*tpu"),
])
def test_bad_values_fail_before_any_work(tiny_model_dir, corpus_dir, tmp_path, no_work, change, message):
    out = tmp_path / "out"
    with pytest.raises(RegpruneError, match=message):
        run_sweep(_raw(tiny_model_dir, corpus_dir, out, **change))
    assert not out.exists()


def test_steps_zero_fails_at_validation_not_after_three_cells(tiny_model_dir, corpus_dir, tmp_path, no_work):
    cfg = tmp_path / "s.toml"
    cfg.write_text(f"""
model = {json.dumps(str(tiny_model_dir))}
data_dir = {json.dumps(str(corpus_dir))}
output = "out"
methods = ["slice", "dress"]
ratios = [0.25, 0.5]
[options.dress]
steps = 0
[eval]
seq_len = 32
""")
    assert main(["sweep", str(cfg)]) == 2
    assert not (tmp_path / "out").exists()


def test_unwritable_output_fails_before_any_work(tiny_model_dir, corpus_dir, tmp_path, no_work, monkeypatch):
    parent = tmp_path / "a-file"
    parent.write_text("x")
    with pytest.raises(RegpruneError, match="is a file, not a directory"):
        run_sweep(_raw(tiny_model_dir, corpus_dir, parent / "out"))

    real_mkstemp = tempfile.mkstemp

    def read_only(*a, prefix=None, **k):  # the write probe fails as in a read-only directory
        if prefix and prefix.startswith(".regprune-write-probe-"):
            raise PermissionError(13, "Permission denied")
        return real_mkstemp(*a, prefix=prefix, **k)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(RegpruneError, match="sweep output .*cannot write in .*Permission denied"):
        run_sweep(_raw(tiny_model_dir, corpus_dir, tmp_path / "ro" / "out"))
    assert not (tmp_path / "ro").exists()


# ---------------------------------------------------------------- d: atomic files, one writer


def test_every_file_arrives_by_rename(tiny_model_dir, corpus_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    cfg = validate_sweep_config(_raw(tiny_model_dir, corpus_dir, out))
    replaced = set()
    real_replace = os.replace

    def replace(src, dst, *a, **k):
        replaced.add(Path(dst))
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace)
    run_compare(cfg)
    written = {p for p in out.rglob("*") if p.is_file()}
    assert {out / n for n in ("sweep.json", "summary.json", "summary.md", "compare.json", "compare.md")} <= written
    assert written == replaced & written, sorted(map(str, written - replaced))
    assert not [p for p in out.rglob(".*.tmp")]


def test_a_second_writer_is_refused_at_once(sweep, no_work):
    cfg, out = sweep
    before = _mtimes(out)
    with OutputLock(out, "sweep output"):
        for call in (lambda: run_sweep(cfg), lambda: run_compare(cfg), lambda: write_compare(out)):
            with pytest.raises(RegpruneError, match="another regprune run is writing sweep output .*sweep"):
                call()
    assert _mtimes(out) == before and not (out / "compare.md").exists()
    assert run_sweep(cfg)["skipped"] == CELLS  # the lock is released with its holder


# ---------------------------------------------------------------- e: the report fails early, never half-written


def _cells(out: Path) -> list[Path]:
    return [out / c for c in CELLS]


def test_report_into_a_file_parent_fails_before_loading(sweep, tmp_path, monkeypatch):
    from regprune import report

    _, out = sweep
    parent = tmp_path / "a-file"
    parent.write_text("x")
    monkeypatch.setattr(report, "load_runs", lambda *a: pytest.fail("runs loaded before the output was checked"))
    with pytest.raises(RegpruneError, match="report output .* is a file, not a directory"):
        report.write_report(_cells(out), parent / "report")
    assert main(["report", *map(str, _cells(out)), "-o", str(parent / "report")]) == 2


def test_report_into_a_read_only_directory_fails_before_loading(sweep, tmp_path, monkeypatch):
    from regprune import report

    _, out = sweep
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):  # root: chmod does not stop writes; make the write probe fail instead
            real_mkstemp = tempfile.mkstemp

            def read_only(*a, prefix=None, dir=None, **k):
                if prefix and prefix.startswith(".regprune-write-probe-") and Path(dir) == ro:
                    raise PermissionError(13, "Permission denied")
                return real_mkstemp(*a, prefix=prefix, dir=dir, **k)

            monkeypatch.setattr(tempfile, "mkstemp", read_only)
        monkeypatch.setattr(report, "load_runs", lambda *a: pytest.fail("runs loaded before the output was checked"))
        with pytest.raises(RegpruneError, match="report output .*cannot write in .*ro"):
            report.write_report(_cells(out), ro / "report")
        assert not (ro / "report").exists()
    finally:
        ro.chmod(0o755)


def test_failed_plot_leaves_the_previous_report_whole(sweep, tmp_path, monkeypatch):
    from regprune.report import plots, write_report

    _, out = sweep
    dest = tmp_path / "report"
    md = write_report(_cells(out), dest)
    first = md.read_text()
    pngs = {p.name: p.read_bytes() for p in dest.glob("*.png")}
    assert pngs and all(f"({name})" in first for name in pngs)

    def broken(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(plots, "plot_training", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_report(_cells(out), dest)
    assert md.read_text() == first and {p.name: p.read_bytes() for p in dest.glob("*.png")} == pngs
    assert sorted(p.name for p in dest.iterdir()) == sorted([*pngs, "report.md"])  # no staging, no temp file

    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError, match="disk full"):
        write_report(_cells(out), fresh)
    assert not (fresh / "report.md").exists() and not list(fresh.glob("*.png"))
