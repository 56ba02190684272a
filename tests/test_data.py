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
    with pytest.raises(DataUnavailable, match="wiki.train.raw in the data directory .*regprune data"):
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
    assert (calib, ev) == ("c4:train@0.5,wikitext2:validation@0.5", "wikitext2:test") and data_dir == str(corpus_dir)
    monkeypatch.setenv("REGPRUNE_DATA_DIR", str(corpus_dir))
    assert choose_demo_data(None)[2] == str(corpus_dir)


# ---------------------------------------------------------------- mixtures, distinct windows, PTB (issue 12)


def test_parse_mixture_and_bad_specs(tmp_path):
    from regprune.data.sources import DEFAULT_CALIBRATION, parse_mixture

    mix = parse_mixture("c4:train@3,wikitext2:validation@1")
    assert [(str(s), w) for s, w in mix] == [("c4:train", 0.75), ("wikitext2:validation", 0.25)]
    assert [w for _, w in parse_mixture(DEFAULT_CALIBRATION)] == [0.5, 0.5]
    assert parse_mixture("wikitext2:validation")[0][1] == 1.0
    odd = tmp_path / "a@b.txt"
    odd.write_text("x")
    assert parse_mixture(str(odd))[0][0].path == str(odd)
    for bad, match in [("", "SOURCE\\[@WEIGHT\\]"), ("c4:train,,wikitext2", "SOURCE\\[@WEIGHT\\]"),
                       ("c4:train@x", "is not a number"), ("c4:train@0", "positive"), ("c4:train@-1", "positive"),
                       ("c4:train@inf", "positive"), ("c4:train@1,c4@2", "twice"), ("c5@1", "unknown data source")]:
        with pytest.raises(DataUnavailable, match=match):
            parse_mixture(bad)


def test_mixture_samples_in_proportion_without_repeats(tokenizer, corpus_dir):
    import regprune

    cal = regprune.build_calibration(tokenizer, "c4:train@3,wikitext2:validation@1", num_samples=40, seq_len=32,
                                     seed=0, data_dir=corpus_dir, regularize_fraction=1.0)
    src = {s["source"]: s for s in cal.protocol["sources"]}
    assert src["c4:train"]["windows"] == 30 and src["wikitext2:validation"]["windows"] == 10
    assert all(s["repeated"] == 0 for s in src.values())
    from regprune.data.windows import tokenize

    c4 = tokenize(tokenizer, load_text("c4:train", corpus_dir))
    starts_c4 = {tuple(c4[i:i + 32].tolist()): i for i in range(0, len(c4) - 31)}
    rows = [tuple(r.tolist()) for r in cal.regularize]
    assert len(set(rows)) == 40  # no window twice
    from_c4 = [starts_c4[r] for r in rows if r in starts_c4]
    assert len(from_c4) == 30  # 3:1 as asked
    assert all(abs(a - b) >= 32 for i, a in enumerate(sorted(from_c4)) for b in sorted(from_c4)[i + 1:])  # disjoint
    first = [r in starts_c4 for r in rows[:20]]
    assert 0 < sum(first) < 20  # shuffled together: the sources mix within the run, not one after the other


def test_distinct_windows_repeat_only_when_the_text_is_short_and_say_so(caplog):
    from regprune.data.windows import sample_distinct_windows

    ids = torch.arange(1000)
    w, info = sample_distinct_windows(ids, 10, 64, seed=1)
    assert info == {"windows": 10, "distinct_available": info["distinct_available"], "distinct": 10, "repeated": 0}
    assert len({int(r[0]) for r in w}) == 10 and all(int(r[-1]) - int(r[0]) == 63 for r in w)
    w, info = sample_distinct_windows(ids, 40, 64, seed=1)
    assert info["repeated"] == 40 - info["distinct_available"] > 0 and len({int(r[0]) for r in w}) == info["distinct"]


def test_ptb_source_from_a_data_dir(tmp_path):
    d = tmp_path / "ptb"
    d.mkdir()
    (d / "ptb.test.txt").write_text(" the cat sat \n\n on the mat \n")
    assert load_text("ptb:test", tmp_path) == "the cat sat on the mat"
    assert str(parse_source("ptb")) == "ptb:train" and parse_source("ptb:test").is_eval_split
    from regprune.data.sources import parse_eval_source

    assert str(parse_eval_source("ptb")) == "ptb:test"
    with pytest.raises(RegpruneError, match="refusing"):
        check_calibration_source(parse_source("ptb:test"))


def test_auto_num_samples_gives_every_step_new_windows(tiny_model_dir, corpus_dir):
    import regprune
    from regprune.api import _make_config, auto_num_samples
    from regprune.methods import get_method
    from regprune.train import RecoveryConfig, TrainConfig

    dress = _make_config(get_method("dress"), None, {"steps": 48, "epochs": None, "batch_size": 4})
    assert auto_num_samples(dress) == 256  # 192 regularization windows + 64 held for recovery
    assert auto_num_samples(_make_config(get_method("dress"), None, {})) == 128  # epochs: the earlier default
    assert auto_num_samples(_make_config(get_method("slice"), None, {})) == 128
    trsp = _make_config(get_method("trsp"), None, {"steps": 10, "epochs": None, "stage1_steps": 20, "layers": 1})
    assert auto_num_samples(trsp) == 160  # both stages, disjoint: (10 + 20) x 4 = 120 windows, / 0.75
    rec = RecoveryConfig(train=TrainConfig(steps=30, batch_size=4))
    assert auto_num_samples(dress, rec) == max(256, -(-135 // 0.25))  # 30 x 4 / 0.9 + 1 = 135 recovery windows
    res = regprune.prune(str(tiny_model_dir), method="dress", steps=3, epochs=None, batch_size=2, seq_len=32,
                         data_dir=corpus_dir)
    assert res.record["data"]["num_samples"] == 8 and res.record["data"]["regularize_windows"] == 6
    assert {h["epoch"] for h in res.record["history"]} == {round(2 / 6, 4), round(4 / 6, 4), 1.0}


def test_regprune_data_writes_the_layout_from_the_hub(tmp_path, monkeypatch, capsys):
    """`regprune data DIR` (hub mocked): every split in the layout that load_text reads back unchanged."""
    import regprune.data.sources as sources
    from regprune.cli import main

    def hub(src):
        if src.name == "c4":
            return [f"{src.split} doc {i}" for i in range(2000)]
        if src.name == "ptb":
            return [f"{src.split} sentence {i}" for i in range(5)]
        return ["", f" = {src.split} = \n", "", " Text .\n"]

    monkeypatch.setattr(sources, "_hub_rows", hub)
    d = tmp_path / "data"
    assert main(["data", str(d)]) == 0 and "--data-dir" in capsys.readouterr().out
    assert load_text("wikitext2:test", d) == "\n\n".join(hub(parse_source("wikitext2:test")))
    c4 = load_text("c4:validation", d)
    assert c4.startswith("validation doc 0 ") and c4.endswith("validation doc 1024")  # the first 1,025 docs
    assert load_text("ptb:test", d) == " ".join(f"test sentence {i}" for i in range(5))
    (d / "wikitext-2-raw" / "wiki.test.raw").write_text("mine")
    assert main(["data", str(d)]) == 0 and (d / "wikitext-2-raw" / "wiki.test.raw").read_text() == "mine"
    assert main(["data", str(d), "--sources", "c5"]) == 2
