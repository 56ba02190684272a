"""Layer-by-layer onloading (issue 13): scoring one block at a time gives the scores of whole-model passes."""
from __future__ import annotations

import pytest
import torch

import regprune
from regprune.errors import RegpruneError
from regprune.methods.blocks.method import block_influence
from regprune.methods.selection import activation_scores
from regprune.pipelines.sequential import SequentialForward

from conftest import tiny_model


@pytest.mark.parametrize("model_type", ["llama", "qwen3", "phi3"])
def test_scores_equal_whole_model_passes(model_type):
    model = tiny_model(model_type)
    windows = torch.randint(3, 300, (6, 24), generator=torch.Generator().manual_seed(0))
    batches = [windows[:3], windows[3:]]
    assert block_influence(model, batches, onload="cpu") == pytest.approx(block_influence(model, batches), abs=1e-6)
    torch.testing.assert_close(activation_scores(model, windows, onload="cpu"), activation_scores(model, windows),
                               rtol=1e-5, atol=1e-6)
    from regprune.methods.blocks.method import sleb_scores

    assert sleb_scores(model, batches, onload="cpu") == pytest.approx(sleb_scores(model, batches), rel=1e-5)


def test_final_hidden_states_and_model_left_as_found():
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(3, 300, (2, 16), generator=torch.Generator().manual_seed(1))
    got = []
    SequentialForward(model, "cpu").run([ids], on_final=lambda h, b: got.append(h))
    with torch.no_grad():
        want = model.model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(got[0], want, rtol=1e-5, atol=1e-6)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied weights still tied


def test_prune_with_onload(tiny_model_dir, corpus_dir):
    kw = dict(num_samples=8, seq_len=32, data_dir=corpus_dir)
    for method, opts, key in (("shortgpt", {"layers": 1}, "removed_layers"), ("slice", {}, "removed_channels"),
                              ("slicegpt", {}, "kept_variance"), ("sleb", {"layers": 1}, "removed_layers")):
        a = regprune.prune(str(tiny_model_dir), method=method, **opts, **kw)
        b = regprune.prune(str(tiny_model_dir), method=method, onload="cpu", **opts, **kw)
        assert a.record["method_details"][key] and a.record["method_details"][key] == pytest.approx(
            b.record["method_details"][key], rel=1e-6)
    pytest.importorskip("llmcompressor")
    a = regprune.prune(str(tiny_model_dir), method="wanda", ratio=0.5, **kw)
    b = regprune.prune(str(tiny_model_dir), method="wanda", ratio=0.5, onload="cpu", **kw)
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    with pytest.raises(RegpruneError, match="supports slice, shortgpt"):
        regprune.prune(str(tiny_model_dir), method="dress", onload="cpu", **kw)
    with pytest.raises(RegpruneError, match="with training"):
        regprune.prune(str(tiny_model_dir), method="slice", finetune=True, steps=1, onload="cpu", **kw)


def test_cli_onload(tiny_model_dir, corpus_dir, tmp_path, capsys):
    from regprune.cli import main

    base = ["--num-samples", "8", "--seq-len", "32", "--data-dir", str(corpus_dir), "--onload"]
    assert main(["prune", str(tiny_model_dir), "-o", str(tmp_path / "a"), "--method", "shortgpt", "--layers", "1",
                 *base]) == 0
    assert main(["prune", str(tiny_model_dir), "-o", str(tmp_path / "b"), "--method", "dress", *base]) == 2
    assert "supports slice, shortgpt" in capsys.readouterr().err and not (tmp_path / "b").exists()
