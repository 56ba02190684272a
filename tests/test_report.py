"""regprune.report: a Markdown report with plots from real (tiny) pruning runs."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

import regprune
from regprune.api import evaluate
from regprune.errors import RegpruneError
from regprune.report import write_report
from regprune.formatting import fmt_acc, fmt_ppl

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _eval_json(model, tokenizer, corpus_dir, name: str) -> dict:
    ev = evaluate(model, tokenizer, ppl=["wikitext2"], seq_len=32, max_windows=2, data_dir=corpus_dir)
    return {**ev, "model": name}  # the name the CLI would record (`regprune eval NAME`)


@pytest.fixture(scope="module")
def runs(tiny_model_dir, corpus_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    loaded = regprune.load_model(str(tiny_model_dir))
    dirs = {}
    for name, method, ratio, opts in (("dress-25", "dress", 0.25, dict(steps=2, epochs=None, batch_size=2)),
                                      ("dress-50", "dress", 0.5, dict(steps=2, epochs=None, batch_size=2)),
                                      ("slice-25", "slice", 0.25, {})):
        res = regprune.prune(loaded, method=method, ratio=ratio, num_samples=8, seq_len=32, data_dir=corpus_dir,
                             calib="wikitext2:validation", **opts)
        d = Path(res.save(root / name))
        (d / "eval.json").write_text(json.dumps(_eval_json(res.model, res.tokenizer, corpus_dir, str(d))))
        dirs[name] = d
    # `regprune eval <the input model> --json`: recognized as the dense reference (same model path).
    dense = root / "dense"
    dense.mkdir()
    (dense / "eval.json").write_text(json.dumps(_eval_json(loaded.model, loaded.tokenizer, corpus_dir,
                                                           str(tiny_model_dir))))
    dirs["dense"] = dense
    return dirs


def _links(md: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)


def _check_pngs(report: Path) -> list[str]:
    links = _links(report.read_text())
    for link in links:
        assert not Path(link).is_absolute()
        png = report.parent / link
        assert png.is_file(), link
        data = png.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 1000, link
    return links


def test_report_from_pruning_runs(runs, tmp_path):
    out = tmp_path / "report"
    path = write_report([runs["dress-25"], runs["dress-50"], runs["slice-25"], runs["dense"]], out)
    assert path == out / "report.md" and path.is_file()
    md = path.read_text()
    links = _check_pngs(path)
    assert "ppl_vs_ratio.png" in links and "training_curves.png" in links
    assert {"magnitudes_dress-25.png", "magnitudes_dress-50.png"} <= set(links)
    # Nothing was measured that would need these: no plot, no section, no invented numbers.
    assert "zeroshot_vs_ratio.png" not in links and not (out / "zeroshot_vs_ratio.png").exists()
    assert "magnitudes_slice-25.png" not in links and "## Speed" not in md

    # The results table: one row per run (dense first), with the measured perplexities.
    table = [line for line in md.splitlines() if line.startswith("| ")]
    header = table[0]
    assert "PPL wikitext2:test" in header
    for name in ("dress-25", "dress-50", "slice-25", "dense"):
        ppl = json.loads((runs[name] / "eval.json").read_text())["perplexity"]["wikitext2:test"]["ppl"]
        row = next(line for line in table if line.startswith(f"| {name} "))
        assert fmt_ppl(ppl) in row
    assert table.index(next(r for r in table if r.startswith("| dense "))) == 2  # right under the header
    rec = json.loads((runs["dress-50"] / "regprune.json").read_text())
    assert f"{rec['parameters_after']:,} ({100 * rec['parameter_ratio']:.1f}%)" in md

    # Protocols: evaluation windows, calibration, versions.
    assert "2 windows × 32 tokens" in md
    assert "wikitext2:validation: 8 windows × 32 tokens, seed 0" in md
    assert f"torch={rec['versions']['torch']}" in md
    assert "## Regularized and kept slices" in md and "| q_proj | 0–1 | 2 |" in md


def test_report_zeroshot_speed_and_dense_reference(runs, tmp_path):
    """eval.json with zero-shot accuracies, speed and compare_to (the shape `regprune eval --json` writes)."""
    dirs = []
    for i, (src, ratio_acc) in enumerate((("dress-25", 0.61), ("dress-50", 0.55), ("slice-25", 0.58))):
        d = tmp_path / f"run{i}"
        d.mkdir()
        shutil.copy(runs[src] / "regprune.json", d / "regprune.json")
        ev = json.loads((runs[src] / "eval.json").read_text())
        proto = {"num_fewshot": 0, "limit": 20, "lm_eval": "0.4"}
        ev["zeroshot"] = {"tasks": {"piqa": {"acc": ratio_acc, "acc_norm": ratio_acc + 0.01, "n": 20,
                                             "split": "validation"},
                                    "arc_easy": {"acc": ratio_acc - 0.1, "n": 20, "split": "test"}},
                          "mean_acc": ratio_acc - 0.05, "protocol": proto,
                          "headline": {"piqa": ratio_acc, "arc_easy": ratio_acc - 0.1 + 0.02},
                          "mean_headline": ratio_acc - 0.04}
        ev["speed"] = {"tokens_per_second": 1000.0 + i, "protocol": {"batch_size": 1, "new_tokens": 16}}
        dense = json.loads((runs["dense"] / "eval.json").read_text())
        ev["compare_to"] = {**dense, "zeroshot": {"tasks": {"piqa": {"acc": 0.7, "n": 20, "split": "validation"},
                                                            "arc_easy": {"acc": 0.6, "n": 20, "split": "test"}},
                                                  "mean_acc": 0.65, "protocol": proto}}
        if i == 1:  # measured with another protocol: the table must say so
            ev["perplexity"]["wikitext2:test"]["protocol"]["windows"] = 4
        (d / "eval.json").write_text(json.dumps(ev))
        if i == 0:  # with LoRA recovery
            rec = json.loads((d / "regprune.json").read_text())
            rec["recovery"] = {"config": {"r": 32, "alpha": 10.0}, "steps_run": 4, "best_step": 4,
                               "initial_eval_loss": 5.0, "best_eval_loss": 4.5, "train_windows": 20, "eval_windows": 2,
                               "history": [{"step": s, "lm_loss": 5.0 - 0.1 * s, "eval_loss": 5.0 - 0.125 * s}
                                           for s in range(1, 5)]}
            (d / "regprune.json").write_text(json.dumps(rec))
        dirs.append(d)
    path = write_report(dirs, tmp_path / "out")
    md = path.read_text()
    links = _check_pngs(path)
    assert "zeroshot_vs_ratio.png" in links
    for needle in ("piqa acc % ↑", "arc_easy acc % ↑", "mean acc % ↑", fmt_acc(0.61), fmt_acc(0.45), fmt_acc(0.5),
                   "acc_norm", fmt_acc(0.62), "## Speed", "tokens_per_second", "new_tokens=16", "limit=20",
                   "split=validation", "arc_easy headline % ↑", fmt_acc(0.57)):
        assert needle in md, needle
    assert "### Recovery (LoRA)" in md and "4 steps, best at step 4" in md and "dress +LoRA" in md
    run1 = next(line for line in md.splitlines() if line.startswith("| run1 "))
    assert run1.split(" | ")[4].endswith("(B)") and "4 windows × 32 tokens" in md and "2 different protocols" in md
    dense_rows = [line for line in md.splitlines() if line.startswith("| dense ")]
    assert len(dense_rows) == 1 and fmt_acc(0.65) in dense_rows[0]  # the three compare_to merged into one row


def test_bad_run_dir_is_refused(runs, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    with pytest.raises(RegpruneError, match="neither regprune.json .* nor eval.json"):
        write_report([runs["dress-25"], empty], out)
    assert not out.exists()  # refused before anything is written
    with pytest.raises(RegpruneError, match="does not exist"):
        write_report([tmp_path / "missing"], out)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "regprune.json").write_text("{not json")
    with pytest.raises(RegpruneError, match="cannot read"):
        write_report([bad], out)
