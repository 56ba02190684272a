import json
import re
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config

import regprune
from regprune.cli import main


def no_partial(out: Path) -> bool:
    return not out.exists() and not list(out.parent.glob(f".{out.name}.partial-*"))


def base_args(model_dir, out, corpus_dir, *extra):
    return ["prune", str(model_dir), "-o", str(out), "--steps", "2", "--num-samples", "12", "--seq-len", "32",
            "--batch-size", "2", "--data-dir", str(corpus_dir), *extra]


def test_prune_cli_end_to_end(tiny_model_dir, corpus_dir, tmp_path, capsys):
    out = tmp_path / "pruned"
    rc = main(base_args(tiny_model_dir, out, corpus_dir, "--norm", "l1", "--lam", "6", "--recover",
                        "--recovery-steps", "2", "--eval-ppl", "wikitext2,c4", "--seq-len-eval", "32",
                        "--max-windows", "4", "--compare-dense"))
    assert rc == 0
    printed = capsys.readouterr().out
    assert "wikitext2:test" in printed and "windows x 32 tokens" in printed
    rec = json.loads((out / "regprune.json").read_text())
    assert rec["method"] == "dress" and rec["config"]["norm"] == "l1" and rec["config"]["ratio"] == 0.25
    assert rec["method_details"]["hidden_size_after"] == 48 and len(rec["method_details"]["removed_channels"]) == 16
    assert rec["data"]["source"] == "c4:train@0.5,wikitext2:validation@0.5" and rec["data"]["regularize_windows"] == 9
    assert rec["data"]["sampling"] == "distinct" and rec["config"]["train"]["objective"] == "kd"
    assert rec["recovery"]["objective"]["teacher"] == "cached"
    assert rec["recovery"]["steps_run"] >= 1 and rec["versions"]["transformers"]
    assert rec["parameters_after"] < rec["parameters_before"]
    for who in ("dense", "pruned"):
        for src in ("wikitext2:test", "c4:validation"):
            m = rec["metrics"][who][src]
            assert m["ppl"] > 1 and m["protocol"]["windows"] == 4 and m["protocol"]["seq_len"] == 32
    # A plain transformers process, without importing regprune, loads and generates.
    code = ("import sys, torch; from transformers import AutoModelForCausalLM as A; "
            f"m = A.from_pretrained({str(out)!r}); "
            "print(m.config.hidden_size, m.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=4, "
            "do_sample=False, pad_token_id=0).shape[1], 'regprune' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.split()[-3:] == ["48", "7", "False"]


def test_api_prune_save_reload_identical(tiny_model_dir, corpus_dir, tmp_path):
    loaded = regprune.load_model(str(tiny_model_dir))
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    res = regprune.prune(loaded, method="dress", ratio=0.25, steps=2, epochs=None, batch_size=2, num_samples=8,
                         seq_len=32, calib="wikitext2:validation", data_dir=corpus_dir)
    for k, v in loaded.model.state_dict().items():  # input model untouched
        assert torch.equal(v, before[k])
    res.save(tmp_path / "m")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    x = torch.randint(3, 300, (2, 20))
    with torch.no_grad():
        assert torch.equal(reloaded(x).logits, res.model(x).logits)


def test_eval_and_info_cli(tiny_model_dir, corpus_dir, tmp_path, capsys):
    j = tmp_path / "r.json"
    assert main(["eval", str(tiny_model_dir), "--ppl", "wikitext2,c4,builtin", "--data-dir", str(corpus_dir),
                 "--seq-len-eval", "32", "--max-tokens", "96", "--json", str(j)]) == 0
    r = json.loads(j.read_text())
    assert set(r["perplexity"]) == {"wikitext2:test", "c4:validation", "builtin:eval"}
    assert all(v["protocol"]["windows"] == 3 for v in r["perplexity"].values())
    assert main(["info", str(tiny_model_dir)]) == 0
    assert "ratio 0.25: hidden 64 -> 48" in capsys.readouterr().out


@pytest.fixture
def gpt2_dir(tmp_path, tokenizer):
    d = tmp_path / "gpt2"
    AutoModelForCausalLM.from_config(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=len(tokenizer))
                                     ).save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


@pytest.mark.parametrize("case,extra,message", [
    ("ratio_high", ["--ratio", "1.5"], r"in \(0, 1\)"),
    ("ratio_zero", ["--ratio", "0"], r"in \(0, 1\)"),
    ("eval_split", ["--calib", "wikitext2:test"], "refusing to calibrate"),
    ("eval_split_same_as_eval", ["--calib", "c4:validation", "--eval-ppl", "c4"], "refusing to calibrate"),
    ("missing_calib_file", ["--calib", "/nonexistent/calib.txt"], "data file not found"),
])
def test_bad_input_clear_error_no_output(case, extra, message, tiny_model_dir, corpus_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(base_args(tiny_model_dir, out, corpus_dir, *extra)) == 2
    assert re.search(message, capsys.readouterr().err)
    assert no_partial(out)


def test_bad_model_and_data_dir(tiny_model_dir, corpus_dir, gpt2_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(base_args(tmp_path / "no-such-model", out, corpus_dir)) == 2
    assert "model not found" in capsys.readouterr().err
    assert main(base_args(gpt2_dir, out, corpus_dir)) == 2
    err = capsys.readouterr().err
    assert "'gpt2' is not supported" in err and "llama" in err and "qwen2" in err
    assert main(base_args(tiny_model_dir, out, tmp_path / "no-data")) == 2
    assert "data directory not found" in capsys.readouterr().err
    assert no_partial(out)


def test_existing_output_is_refused_and_kept(tiny_model_dir, corpus_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert main(base_args(tiny_model_dir, out, corpus_dir)) == 2
    assert "already exists and is not empty" in capsys.readouterr().err
    assert (out / "precious.txt").read_text() == "keep me" and len(list(out.iterdir())) == 1


def test_failed_save_leaves_nothing(tmp_path):
    from conftest import tiny_model

    model = tiny_model()

    def broken_save(path, **kw):
        (Path(path) / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    model.save_pretrained = broken_save
    out = tmp_path / "m"
    with pytest.raises(RuntimeError, match="disk full"):
        regprune.save_model(model, None, out)
    assert no_partial(out)


def test_hub_id_offline_gives_clear_error(capsys):
    # conftest sets HF_HUB_OFFLINE=1: the hub code path runs and fails the way it does without network.
    assert main(["info", "someorg/somemodel"]) == 2
    err = capsys.readouterr().err
    assert "could not load 'someorg/somemodel' from the Hugging Face hub" in err and "smollm2-135m" in err


def test_builtin_name_reuses_converted_cache(tiny_model_dir, tmp_path, monkeypatch):
    import shutil

    from regprune.models import builtin

    cached = tmp_path / "cache" / "models" / "smollm2-135m"
    shutil.copytree(tiny_model_dir, cached)
    monkeypatch.setenv("REGPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(builtin.subprocess, "run", lambda *a, **k: pytest.fail("must not download again"))
    loaded = regprune.load_model("smollm2-135m")
    assert loaded.source["kind"] == "builtin" and loaded.model.config.hidden_size == 64
