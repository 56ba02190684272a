import json
import random

import pytest
import torch

from regprune.data import EVAL_SPLITS, load_text, parse_source, sample_windows, split_windows
from regprune.data.sources import builtin_text, check_calibration_source
from regprune.data.windows import eval_windows
from regprune.errors import DataUnavailable, RegpruneError


def test_parse_sources(tmp_path):
    assert str(parse_source("wikitext2:valid")) == "wikitext2:validation"
    assert str(parse_source("c4")) == "c4:train"
    assert parse_source("wikitext2:test").is_eval_split
    f = tmp_path / "x.txt"
    f.write_text("hello")
    assert parse_source(str(f)).name == "file"
    with pytest.raises(DataUnavailable, match="unknown data source"):
        parse_source("ptb2")
    with pytest.raises(DataUnavailable, match="splits"):
        parse_source("c4:test")
    with pytest.raises(DataUnavailable, match="not found"):
        parse_source(str(tmp_path / "missing.txt"))


def test_offline_data_dir(corpus_dir):
    wiki = load_text("wikitext2:validation", corpus_dir)
    assert "\n\n" in wiki and len(wiki) > 10000
    c4 = load_text("c4:validation", corpus_dir)
    rows = [json.loads(l)["text"] for l in (corpus_dir / "c4/c4-validation.00000-of-00008.head1025.jsonl").open()]
    assert c4 == " ".join(rows)
    with pytest.raises(DataUnavailable, match="not part of the offline data layout"):
        load_text("wikitext2:train", corpus_dir)
    with pytest.raises(DataUnavailable, match="data directory not found"):
        load_text("wikitext2:test", corpus_dir / "nope")


def test_wikitext_rows_like_hf(tmp_path):
    d = tmp_path / "wikitext-2-raw"
    d.mkdir()
    (d / "wiki.test.raw").write_text(" \n = Title = \n \n Text .\n")
    # HF rows: blank lines become '' and lines keep their newline; joined by blank lines.
    assert load_text("wikitext2:test", tmp_path) == "\n\n".join(["", " = Title = \n", "", " Text .\n"])


def test_builtin_splits_are_disjoint():
    cal, ev = builtin_text("calibration"), builtin_text("eval")
    assert len(cal) > 3 * len(ev) > 0
    from pydoc_data.topics import topics

    in_eval = {k for k, v in topics.items() if v in ev}
    in_cal = {k for k, v in topics.items() if v in cal}
    assert in_eval and in_cal and not in_eval & in_cal  # split by topic: no topic on both sides


def test_refuse_calibration_on_eval_split():
    for name, split in EVAL_SPLITS:
        with pytest.raises(RegpruneError, match="refusing to calibrate"):
            check_calibration_source(parse_source(f"{name}:{split}"))
    check_calibration_source(parse_source("wikitext2:validation"))


def test_sample_windows_reproduce_reference_protocol():
    ids = torch.arange(5000)
    w = sample_windows(ids, 4, 512, seed=0)
    random.seed(0)
    starts = [random.randint(0, len(ids) - 512 - 1) for _ in range(4)]
    assert [int(r[0]) for r in w] == starts and w.shape == (4, 512)
    reg, rec = split_windows(torch.zeros(128, 8), 0.75)
    assert len(reg) == 96 and len(rec) == 32
    assert eval_windows(ids, 512, 3).shape == (3, 512) and eval_windows(ids, 512).shape == (9, 512)
    with pytest.raises(DataUnavailable):
        sample_windows(torch.arange(100), 1, 512)


def test_demo_data_choice(corpus_dir, monkeypatch):
    from regprune.demo import choose_demo_data

    monkeypatch.delenv("REGPRUNE_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no hub: the built-in prose, said so
    calib, ev, data_dir, why = choose_demo_data(None)
    assert (calib, ev, data_dir) == ("builtin:calibration", "builtin:eval", None)
    assert "not reachable" in why and "pydoc_data" in why
    calib, ev, data_dir, why = choose_demo_data(str(corpus_dir))
    assert (calib, ev) == ("wikitext2:validation", "wikitext2:test") and data_dir == str(corpus_dir)
    monkeypatch.setenv("REGPRUNE_DATA_DIR", str(corpus_dir))
    assert choose_demo_data(None)[2] == str(corpus_dir)
