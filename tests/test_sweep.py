"""regprune.sweep: a resumable methods x ratios x seeds grid from one config file (tiny model, offline)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import regprune
from regprune.errors import RegpruneError
from regprune.sweep import load_sweep_config, run_sweep, sweep_table, validate_sweep_config

CELLS = ["dense", "slice-r0.25-s0", "slice-r0.5-s0", "dress-r0.25-s0", "dress-r0.5-s0"]


def _toml(path: Path, tiny_model_dir, corpus_dir, **extra) -> Path:
    q = json.dumps  # a JSON string is a valid TOML basic string
    text = f"""
model = {q(str(tiny_model_dir))}
data_dir = {q(str(corpus_dir))}
output = "sweep-out"
methods = ["slice", "dress"]
ratios = [0.25, 0.5]
seeds = [0]
{''.join(f'{k} = {q(v)}' + chr(10) for k, v in extra.items())}
[calibration]
calib = "wikitext2:validation"
num_samples = 8
seq_len = 32

[options.dress]
steps = 1
batch_size = 2

[eval]
ppl = ["wikitext2"]
seq_len = 32
max_windows = 2
"""
    path.write_text(text)
    return path


def _mtimes(out: Path) -> dict[str, int]:
    return {c: (out / c / "result.json").stat().st_mtime_ns for c in CELLS}


def test_sweep_runs_resumes_and_reruns_one_cell(tiny_model_dir, corpus_dir, tmp_path, monkeypatch, caplog):
    cfg = load_sweep_config(_toml(tmp_path / "sweep.toml", tiny_model_dir, corpus_dir))
    out = tmp_path / "sweep-out"
    assert cfg["output"] == str(out)  # relative to the config file's directory

    first = run_sweep(cfg)
    assert first["computed"] == CELLS and first["skipped"] == []
    for c in CELLS:
        d = out / c
        result = json.loads((d / "result.json").read_text())
        ev = json.loads((d / "eval.json").read_text())
        assert result["cell"] == c
        assert result["perplexity"]["wikitext2:test"] == ev["perplexity"]["wikitext2:test"]["ppl"]
        assert ev["perplexity"]["wikitext2:test"]["protocol"]["windows"] == 2
        if c != "dense":
            rec = json.loads((d / "regprune.json").read_text())
            assert rec["method"] == result["method"] and rec["config"]["ratio"] == result["ratio"]
            assert rec["metrics"]["pruned"]["wikitext2:test"]["ppl"] == result["perplexity"]["wikitext2:test"]
            assert not (d / "model").exists()  # save_models = false
        assert not list(d.glob(".*.tmp"))
    dress = json.loads((out / "dress-r0.5-s0" / "regprune.json").read_text())
    assert dress["config"]["train"]["steps"] == 1 and len(dress["history"]) == 1
    assert dress["data"]["num_samples"] == 8 and dress["method_details"]["hidden_size_after"] == 32

    summary = json.loads((out / "summary.json").read_text())
    assert summary["pending"] == [] and sorted(summary["cells"]) == sorted(CELLS)
    table = sweep_table(out)
    assert (out / "summary.md").read_text().count(table.strip().splitlines()[0]) == 1
    lines = table.splitlines()
    assert lines[0].startswith("| method | 0.25 · PPL wikitext2:test ↓ | 0.5 · PPL wikitext2:test ↓")
    assert [ln.split(" | ")[0] for ln in lines[2:5]] == ["| dense", "| slice", "| dress"]
    ppl = json.loads((out / "dress-r0.5-s0" / "result.json").read_text())["perplexity"]["wikitext2:test"]
    dress_row = lines[4].split(" | ")
    assert dress_row[2].strip(" |") == (f"{ppl:,.0f}" if ppl >= 1000 else f"{ppl:.2f}")
    assert "2 windows × 32 tokens" in table and "One seed." in table and "*" not in table
    assert "Calibration: wikitext2:validation, 8 windows × 32 tokens" in table and "dress: distill=False, lam=4.0" in table

    # Second run: nothing is recomputed (no load, no prune, no eval), same table, same files.
    before = _mtimes(out)

    def boom(*a, **k):
        raise AssertionError("a finished cell was recomputed")

    with monkeypatch.context() as m:
        for name in ("prune", "load_model"):
            m.setattr(regprune, name, boom)
        m.setattr(regprune.api, "evaluate", boom)
        with caplog.at_level("INFO", logger="regprune.sweep"):
            again = run_sweep(cfg)
    assert again["computed"] == [] and again["skipped"] == CELLS
    assert caplog.text.count("skipped, done earlier") == len(CELLS)
    assert again["table"] == table == sweep_table(out) and _mtimes(out) == before

    # An interrupted cell (no result.json, leftovers): only it is cleared and computed again.
    (out / "dress-r0.5-s0" / "result.json").unlink()
    (out / "dress-r0.5-s0" / "leftover.bin").write_bytes(b"partial")
    calls = []
    real_prune = regprune.prune

    def counting(*a, **k):
        calls.append(k["method"])
        return real_prune(*a, **k)

    monkeypatch.setattr(regprune, "prune", counting)
    third = run_sweep(cfg)
    assert third["computed"] == ["dress-r0.5-s0"] and calls == ["dress"]
    assert not (out / "dress-r0.5-s0" / "leftover.bin").exists()
    after = _mtimes(out)
    assert all(after[c] == before[c] for c in CELLS if c != "dress-r0.5-s0")
    redo = json.loads((out / "dress-r0.5-s0" / "result.json").read_text())["perplexity"]["wikitext2:test"]
    assert redo == pytest.approx(ppl, rel=1e-4)

    # A changed configuration is refused rather than mixed with finished cells.
    changed = dict(cfg, options={**cfg["options"], "dress": {"steps": 2, "batch_size": 2}})
    with pytest.raises(RegpruneError,
                       match="dress-r0.25-s0 was computed with different settings \\(options, resolved\\)"):
        run_sweep(changed)
    # A cell computed under other defaults (an older regprune: no resolved settings) is refused too.
    f = out / "dress-r0.25-s0" / "result.json"
    old = json.loads(f.read_text())
    old["spec"].pop("resolved")
    f.write_text(json.dumps(old))
    with pytest.raises(RegpruneError, match="dress-r0.25-s0 was computed with different settings \\(resolved\\)"):
        run_sweep(cfg)


def test_sweep_cells_feed_the_report(tiny_model_dir, corpus_dir, tmp_path):
    from regprune.report import write_report

    cfg = validate_sweep_config({
        "model": str(tiny_model_dir), "data_dir": str(corpus_dir), "output": str(tmp_path / "s"),
        "methods": ["dress"], "ratios": [0.5], "seeds": [0, 1],
        "calibration": {"num_samples": 8, "seq_len": 32}, "options": {"dress": {"steps": 1, "batch_size": 2}},
        "eval": {"ppl": ["wikitext2"], "seq_len": 32, "max_windows": 2}})
    res = run_sweep(cfg)
    assert res["computed"] == ["dense", "dress-r0.5-s0", "dress-r0.5-s1"]
    vals = [res["cells"][f"dress-r0.5-s{s}"]["perplexity"]["wikitext2:test"] for s in (0, 1)]
    assert vals[0] != vals[1]  # the seed changes the calibration windows
    assert " ± " in res["table"] and "Mean ± sample std over 2 seeds" in res["table"]
    md = write_report([tmp_path / "s" / c for c in res["cells"]], tmp_path / "report").read_text()
    assert "| dense | — | 0 |" in md and "dress-r0.5-s1" in md


@pytest.mark.parametrize("change, message", [
    ({"modle": "x"}, "unknown key\\(s\\) in the top level: modle"),
    ({"methods": []}, "'methods' is empty"),
    ({"ratios": []}, "'ratios' is empty"),
    ({"seeds": []}, "'seeds' is empty"),
    ({"model": None}, "'model' is required"),
    ({"output": ""}, "'output' is required"),
    ({"methods": ["dress", "magic"]}, "unknown method 'magic'"),
    ({"ratios": [0.25, 1.0]}, "every ratio must be a number in \\(0, 1\\)"),
    ({"ratios": [0.25, 0.25]}, "'ratios' has duplicates"),
    ({"seeds": [0.5]}, "seeds must be integers"),
    ({"calibration": {"num_sample": 8}}, "unknown key\\(s\\) in \\[calibration\\]: num_sample"),
    ({"calibration": {"num_samples": 0}}, "num_samples = 0"),
    ({"options": {"slice": {"norm": "l1"}}}, "unknown key\\(s\\) in \\[options.slice\\]: norm"),
    ({"options": {"dress": {"ratio": 0.3}}}, "sets ratio, which the grid sets"),
    ({"options": {"dress": {"norm": "l3"}}}, "\\[options.dress\\]: norm must be 'l1' or 'l2'"),
    ({"options": {"wanda": {}}}, "\\[options.wanda\\] is given but 'wanda' is not in 'methods'"),
    ({"eval": {"pll": ["wikitext2"]}}, "unknown key\\(s\\) in \\[eval\\]: pll"),
    ({"eval": {"ppl": []}}, "\\[eval\\] ppl must be a non-empty list"),
    ({"save_models": "yes"}, "'save_models' must be true or false"),
    ({"calibration": {"calib": "wikitext2:test"}}, "refusing to calibrate on wikitext2:test"),
    ({"calibration": {"calib": "c4:validation"}, "eval": {}}, "refusing to calibrate on c4:validation"),
])
def test_config_validation(change, message):
    base = {"model": "m", "output": "o", "methods": ["slice", "dress"], "ratios": [0.25]}
    cfg = {**base, **change}
    cfg = {k: v for k, v in cfg.items() if not (k == "model" and v is None)}
    with pytest.raises(RegpruneError, match=message):
        validate_sweep_config(cfg)


def test_config_files(tmp_path, tiny_model_dir, corpus_dir):
    cfg = load_sweep_config(_toml(tmp_path / "a.toml", tiny_model_dir, corpus_dir, save_models=True))
    assert cfg["methods"] == ["slice", "dress"] and cfg["seeds"] == [0] and cfg["save_models"] is True
    assert cfg["options"] == {"slice": {}, "dress": {"steps": 1, "batch_size": 2}}
    j = tmp_path / "b.json"
    j.write_text(json.dumps({"model": "smollm2-135m", "output": "out", "methods": ["dress"], "ratios": [0.5],
                             "eval": {"ppl": ["c4"], "max_windows": 0}}))
    cfg = load_sweep_config(j)
    assert cfg["model"] == "smollm2-135m" and cfg["output"] == str(tmp_path / "out") and cfg["data_dir"] is None
    (tmp_path / "bad.toml").write_text("model = \n")
    with pytest.raises(RegpruneError, match="cannot parse sweep config"):
        load_sweep_config(tmp_path / "bad.toml")
    with pytest.raises(RegpruneError, match="not found"):
        load_sweep_config(tmp_path / "missing.toml")
