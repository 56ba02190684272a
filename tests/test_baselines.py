"""Baselines on tiny models: block removal (SLEB, ShortGPT), SliceGPT, unstructured (magnitude, Wanda,
SparseGPT), slicing without regularization. Shapes, plain reload, bookkeeping, generation with the KV cache."""
import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import regprune
from conftest import tiny_model
from regprune.errors import RegpruneError
from regprune.methods import CalibrationData, get_method
from regprune.methods.blocks import ShortGptConfig, SlebConfig, block_influence, sleb_scores
from regprune.methods.slicegpt import SliceGptConfig, residual_covariances, rotate_and_slice
from regprune.methods.unstructured import UnstructuredConfig, block_linears
from regprune.surgery import get_layers, layers_skipped, remove_layers

ARCHS = ["llama", "mistral", "qwen2", "qwen3", "phi3"]


def windows(n=8, L=32, seed=0):
    return torch.randint(3, 320, (n, L), generator=torch.Generator().manual_seed(seed))


def calib(n=8):
    return CalibrationData(windows(n), windows(4, seed=1))


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def generate_both_ways(model, ids):
    with torch.no_grad():
        a = model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True)
        b = model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False)
    return a, b


def nll(model, ids):
    lg = logits(model, ids)
    return torch.nn.functional.cross_entropy(lg[:, :-1].reshape(-1, lg.size(-1)), ids[:, 1:].reshape(-1),
                                             reduction="sum").item()


# ------------------------------------------------------------------ layer removal bookkeeping


@pytest.mark.parametrize("arch", ARCHS)
def test_remove_layers_bookkeeping_reload_and_kv_cache(arch, tmp_path):
    kw = dict(layer_types=["full_attention", "sliding_attention", "full_attention", "sliding_attention"],
              sliding_window=8, use_sliding_window=True) if arch == "qwen2" else {}
    model = tiny_model(arch, num_hidden_layers=4, **kw)
    ids = windows(2, 12)
    with layers_skipped(model, [1, 2]):
        skipped = logits(model, ids)
    assert len(get_layers(model)) == 4 and model.config.num_hidden_layers == 4  # restored
    pruned = remove_layers(model, [1, 2])
    assert len(get_layers(model)) == 4  # input untouched
    assert pruned.config.num_hidden_layers == 2 and len(get_layers(pruned)) == 2
    assert [b.self_attn.layer_idx for b in get_layers(pruned)] == [0, 1]
    if arch == "qwen2":
        assert pruned.config.layer_types == ["full_attention", "sliding_attention"]
    assert torch.allclose(logits(pruned, ids), skipped, atol=1e-5)
    pruned.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert reloaded.config.num_hidden_layers == 2
    assert torch.equal(logits(reloaded, ids), logits(pruned, ids))
    a, b = generate_both_ways(reloaded, ids[:, :8])
    assert torch.equal(a, b)


def test_remove_layers_rejects_bad_indices():
    model = tiny_model(num_hidden_layers=3)
    with pytest.raises(ValueError, match="out of range"):
        remove_layers(model, [3])
    with pytest.raises(ValueError, match="cannot remove all"):
        remove_layers(model, [0, 1, 2])


def test_block_removal_config_errors():
    with pytest.raises(ValueError, match="rounds to 0"):
        SlebConfig(ratio=0.1).num_layers_removed(4)
    with pytest.raises(ValueError, match="at most 3"):
        ShortGptConfig(layers=4).num_layers_removed(4)
    with pytest.raises(ValueError, match="positive"):
        SlebConfig(layers=0)
    assert SlebConfig(ratio=0.25).num_layers_removed(30) == 8 and SlebConfig(layers=5).num_layers_removed(30) == 5


# ------------------------------------------------------------------ SLEB / ShortGPT


def test_sleb_scores_match_full_forwards_with_the_block_removed():
    model = tiny_model(num_hidden_layers=4)
    ids = windows(4, 16)
    scores = sleb_scores(model, [ids[:2], ids[2:]])
    for i in range(4):
        with layers_skipped(model, [i]):
            expected = torch.exp(torch.tensor(nll(model, ids) / ids[:, 1:].numel())).item()
        assert scores[i] == pytest.approx(expected, rel=1e-4)


def test_sleb_removes_the_block_that_matters_least():
    model = tiny_model(num_hidden_layers=4)
    with torch.no_grad():  # block 2 nearly does nothing: removing it is the cheapest
        model.model.layers[2].self_attn.o_proj.weight.mul_(1e-3)
        model.model.layers[2].mlp.down_proj.weight.mul_(1e-3)
    res = get_method("sleb").run(copy.deepcopy(model), calib(), SlebConfig(layers=1, num_windows=4))
    assert res.details["removed_layers"] == [2] and res.model.config.num_hidden_layers == 3
    res2 = get_method("sleb").run(copy.deepcopy(model), calib(), SlebConfig(layers=2, num_windows=4))
    assert res2.details["removal_order"][0] == 2 and len(res2.details["steps"]) == 2
    assert res2.model.config.num_hidden_layers == 2


def test_shortgpt_block_influence_and_removal():
    model = tiny_model(num_hidden_layers=4)
    with torch.no_grad():
        model.model.layers[1].self_attn.o_proj.weight.mul_(1e-3)
        model.model.layers[1].mlp.down_proj.weight.mul_(1e-3)
    bi = block_influence(model, [windows(2, 16)])
    assert min(range(4), key=bi.__getitem__) == 1 and bi[1] < 1e-3 and all(b > 1e-3 for i, b in enumerate(bi) if i != 1)
    res = get_method("shortgpt").run(model, calib(), ShortGptConfig(layers=1))
    assert res.details["removed_layers"] == [1] and res.model.config.num_hidden_layers == 3


# ------------------------------------------------------------------ SliceGPT


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("rotation", ["per-layer", "shared"])
def test_slicegpt_full_rank_is_exact_and_sliced_reloads(arch, rotation, tmp_path):
    model = tiny_model(arch, num_hidden_layers=2)
    ids = windows(8, 24)
    ref = logits(model, ids[:2])
    covs = residual_covariances(model, ids)
    full, _ = rotate_and_slice(copy.deepcopy(model), covs, 64, rotation)  # rotation only: same function
    assert torch.allclose(logits(full, ids[:2]), ref, atol=1e-4)
    sliced, det = rotate_and_slice(copy.deepcopy(model), covs, 48, rotation)
    assert sliced.config.hidden_size == 48 and sliced.get_input_embeddings().weight.shape[1] == 48
    assert det["shortcut_parameters"] == (2 * 2 * 48 * 48 if rotation == "per-layer" else 0)
    expected_type = f"regprune_slicegpt_{arch}" if rotation == "per-layer" else arch
    assert sliced.config.model_type == expected_type
    sliced.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == expected_type
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(reloaded) is type(sliced)
    assert torch.equal(logits(reloaded, ids[:2]), logits(sliced, ids[:2]))
    a, b = generate_both_ways(reloaded, ids[:2, :8])
    assert torch.equal(a, b)


def test_slicegpt_keeps_the_high_variance_directions():
    """Residual signal confined to 40 of 64 directions: slicing to 48 loses (almost) nothing."""
    model = tiny_model(num_hidden_layers=2)
    with torch.no_grad():  # the embeddings, and every block's writes, live in a random 40-dim subspace
        basis = torch.linalg.qr(torch.randn(64, 64, generator=torch.Generator().manual_seed(3)))[0][:, :40]
        proj = basis @ basis.T
        model.model.embed_tokens.weight.copy_(model.model.embed_tokens.weight @ proj)
        for b in model.model.layers:
            b.self_attn.o_proj.weight.copy_(proj @ b.self_attn.o_proj.weight)
            b.mlp.down_proj.weight.copy_(proj @ b.mlp.down_proj.weight)
    ids = windows(8, 24)
    ref = logits(model, ids[:2])
    sliced, det = rotate_and_slice(copy.deepcopy(model), residual_covariances(model, ids), 48, "per-layer")
    assert min(det["kept_variance"]) > 0.999999
    # RMSNorm over 48 instead of 64 channels: the same up to the eps scaling
    assert torch.allclose(logits(sliced, ids[:2]), ref, atol=1e-3)


def test_slicegpt_through_the_api(tokenizer, corpus_dir, tmp_path):
    model = tiny_model(vocab_size=len(tokenizer), num_hidden_layers=2)
    res = regprune.prune(model, tokenizer, method="slicegpt", ratio=0.25, num_samples=8, seq_len=32,
                         data_dir=corpus_dir)
    assert res.record["method_details"]["hidden_size_after"] == 48
    # a tiny tied model grows: the LM head is untied and each block gets two 48x48 shortcuts
    assert res.record["method_details"]["untied_embeddings"] is True
    assert res.record["method_details"]["shortcut_parameters"] == 2 * 2 * 48 * 48
    out = res.save(tmp_path / "sg")
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.config.model_type == "regprune_slicegpt_llama"
    assert model.config.hidden_size == 64  # the input model is not modified


# ------------------------------------------------------------------ unstructured


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("structure,ratio", [("unstructured", 0.5), ("2:4", None), ("unstructured", 0.25)])
def test_unstructured_sparsity_and_reload(method, structure, ratio, tokenizer, corpus_dir, tmp_path):
    model = tiny_model(vocab_size=len(tokenizer), num_hidden_layers=2)
    emb_before = model.get_input_embeddings().weight.clone()
    opts = {"structure": structure} if ratio is None else {"structure": structure, "ratio": ratio}
    res = regprune.prune(model, tokenizer, method=method, num_samples=8, seq_len=32, data_dir=corpus_dir, **opts)
    target = 0.5 if ratio is None else ratio
    for name, lin in block_linears(res.model).items():
        w = lin.weight
        assert (w == 0).float().mean().item() == pytest.approx(target, abs=0.02), name
        if structure == "2:4":
            assert bool(((w.reshape(-1, 4) == 0).sum(1) >= 2).all()), name
    assert torch.equal(res.model.get_input_embeddings().weight, emb_before)  # embeddings / LM head untouched
    assert res.record["method_details"]["linear_sparsity"] == pytest.approx(target, abs=0.02)
    out = res.save(tmp_path / method)
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    ids = windows(2, 12)
    assert torch.equal(logits(reloaded, ids), logits(res.model, ids))
    assert (model.model.layers[0].mlp.up_proj.weight != 0).all()  # input model untouched


def test_unstructured_config_errors():
    with pytest.raises(ValueError, match="exactly half"):
        UnstructuredConfig(structure="2:4", ratio=0.25)
    with pytest.raises(ValueError, match="structure"):
        UnstructuredConfig(structure="4:8")
    with pytest.raises(RegpruneError, match="unknown option"):
        regprune.api.check_method_options("wanda", {"selection": "last"})


# ------------------------------------------------------------------ slicing without regularization


@pytest.mark.parametrize("selection", ["activation", "weight", "last", "random"])
def test_slice_without_regularization_every_selection(selection):
    model = tiny_model()
    res = get_method("slice").run(model, calib(), get_method("slice").config_cls(ratio=0.25, selection=selection))
    assert res.model.config.hidden_size == 48 and len(res.details["removed_channels"]) == 16
    assert res.details["selection"] == selection


def test_cli_block_removal_and_method_list(tiny_model_dir, corpus_dir, tmp_path, capsys):
    from regprune.cli import main

    out = tmp_path / "sleb"
    assert main(["prune", str(tiny_model_dir), "-o", str(out), "--method", "sleb", "--layers", "1",
                 "-O", "num_windows=2", "--num-samples", "8", "--seq-len", "32", "--data-dir", str(corpus_dir)]) == 0
    rec = json.loads((out / "regprune.json").read_text())
    assert rec["config"]["layers"] == 1 and rec["config"]["ratio"] is None and rec["config"]["num_windows"] == 2
    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 1
    # an option the method does not have: refused before loading
    assert main(["prune", "no/such/model", "-o", str(tmp_path / "x"), "--method", "sleb", "--norm", "l1"]) == 2
    assert "unknown option" in capsys.readouterr().err
    assert main(["info", "--methods"]) == 0
    listing = capsys.readouterr().out
    assert all(f"{m}:" in listing for m in ("dress", "slice", "slicegpt", "sleb", "shortgpt", "wanda", "sparsegpt"))


def test_kept_hidden_size_is_one_the_config_accepts(tmp_path):
    """Llama configs refuse a hidden size that is not a multiple of the heads (even with head_dim set)."""
    from regprune.methods.selection import hidden_size_allowed, num_removed
    from regprune.surgery import slice_hidden_channels

    model = tiny_model("llama")  # hidden 64, 4 heads
    assert not hidden_size_allowed(model.config, 58) and hidden_size_allowed(model.config, 60)
    k = num_removed(64, 6 / 64, multiple_of=1, config=model.config)
    assert 64 - k in (56, 60)
    sliced = slice_hidden_channels(model, list(range(k)))
    sliced.save_pretrained(tmp_path)
    assert AutoModelForCausalLM.from_pretrained(tmp_path).config.hidden_size == 64 - k
