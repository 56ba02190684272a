"""regprune compare: methods (and variants) x ratios into one Table 1-style JSON + Markdown, resumable."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from regprune.cli import main
from regprune.errors import RegpruneError
from regprune.sweep import load_sweep_config

CONFIG = """
model = {model}
data_dir = {data}
output = "cmp"
methods = ["slice", "sleb", "slicegpt", "magnitude-2of4"]
ratios = [0.25, 0.5]

[calibration]
num_samples = 8
seq_len = 32

[options.sleb]
num_windows = 2
ratios = [0.5]  # 0.25 of the tiny model's 2 blocks rounds to none

[options.magnitude-2of4]
method = "magnitude"
structure = "2:4"
ratios = [0.5]

[eval]
ppl = ["wikitext2"]
seq_len = 32
max_windows = 2
speed = true
speed_options = {{ prompt_len = 16, gen_batch = 1, new_tokens = 2, repeats = 1, warmup = 0 }}
"""


def _config(tmp_path: Path, tiny_model_dir, corpus_dir) -> Path:
    p = tmp_path / "compare.toml"
    p.write_text(CONFIG.format(model=json.dumps(str(tiny_model_dir)), data=json.dumps(str(corpus_dir))))
    return p


def test_compare_table_rows_speed_and_resume(tiny_model_dir, corpus_dir, tmp_path, capsys):
    cfg = _config(tmp_path, tiny_model_dir, corpus_dir)
    assert main(["compare", str(cfg)]) == 0
    out = tmp_path / "cmp"
    data = json.loads((out / "compare.json").read_text())
    rows = {(r["label"], r["ratio"]): r for r in data["rows"]}
    expected = {("dense", None), ("slice", 0.25), ("slice", 0.5), ("sleb", 0.5),
                ("slicegpt", 0.25), ("slicegpt", 0.5), ("magnitude-2of4", 0.5)}
    assert set(rows) == expected  # the variant only at its own ratio
    dense = rows[("dense", None)]
    assert dense["parameter_fraction"] == 1.0 and dense["perplexity"]["wikitext2:test"] > 0
    assert rows[("sleb", 0.5)]["parameters"] < dense["parameters"]
    assert rows[("slice", 0.5)]["parameters"] < rows[("slice", 0.25)]["parameters"] < dense["parameters"]
    mag = rows[("magnitude-2of4", 0.5)]
    assert mag["method"] == "magnitude" and mag["parameters"] == dense["parameters"]
    assert mag["nonzero_fraction"] < 0.9
    for key, r in rows.items():
        if key[0] != "dense":
            assert r["speed"]["prompt_speedup"] > 0 and r["speed"]["ideal_linear_speedup"] > 0
    md = (out / "compare.md").read_text()
    assert "| magnitude-2of4 | 0.5 |" in md and "transformer blocks (sleb)" in md and "nonzero %" in md
    result = json.loads((out / "magnitude-2of4-r0.5-s0" / "result.json").read_text())
    assert result["config"]["structure"] == "2:4"

    before = {p: p.stat().st_mtime_ns for p in out.glob("*/result.json")}
    assert main(["compare", str(cfg)]) == 0  # resumed: nothing recomputed
    assert before == {p: p.stat().st_mtime_ns for p in out.glob("*/result.json")}
    assert "0 cells computed" in capsys.readouterr().out


def test_compare_config_errors(tiny_model_dir, corpus_dir, tmp_path):
    p = _config(tmp_path, tiny_model_dir, corpus_dir)
    text = p.read_text()
    p.write_text(text.replace('method = "magnitude"', 'method = "nosuch"'))
    with pytest.raises(RegpruneError, match="nosuch"):
        load_sweep_config(p)
    p.write_text(text.replace("ratios = [0.5]", "ratios = [1.5]"))
    with pytest.raises(RegpruneError, match=r"numbers in \(0, 1\)"):
        load_sweep_config(p)
    p.write_text(text.replace('structure = "2:4"', 'structure = "2:4"\nselection = "last"'))
    with pytest.raises(RegpruneError, match="selection"):
        load_sweep_config(p)
    p.write_text(text.replace("ratios = [0.5]", "ratios = [0.25]"))
    with pytest.raises(RegpruneError, match="exactly half"):
        load_sweep_config(p)
