"""Compresso: hard-concrete masks, the size model, the Lagrangian, physical pruning, both save formats, data."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import regprune
from regprune.data.instructions import COLLABORATIVE_PROMPT, load_instructions, prefix_windows
from regprune.errors import DataUnavailable, RegpruneError
from regprune.methods import CalibrationData
from regprune.methods.compresso import (CompressoConfig, CompressoMasks, finalize, prob_nonzero, prune_to,
                                        sample_hard_concrete, train_masks, training_sequences)
from regprune.record import count_parameters
from regprune.train.loop import TrainConfig

from conftest import tiny_model

ARCHS = ["llama", "mistral", "qwen2", "qwen3"]


def random_masks(model, seed=1) -> CompressoMasks:
    masks = CompressoMasks(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for a in masks.log_alpha.values():
            a.copy_(torch.randn(a.shape, generator=g) * 2)
    return masks


def test_hard_concrete_sampling_and_expected_l0():
    log_alpha = torch.tensor([-3.0, 0.0, 2.0, 5.0])
    z = sample_hard_concrete(log_alpha.expand(40000, 4), torch.Generator().manual_seed(0))
    assert z.min() >= 0 and z.max() <= 1
    # The stretch-and-clamp gives exact zeros and ones with positive probability.
    assert (z[:, 1] == 0).any() and (z[:, 1] == 1).any()
    measured = (z != 0).float().mean(0)
    assert torch.allclose(measured, prob_nonzero(log_alpha), atol=0.01), (measured, prob_nonzero(log_alpha))
    # Closed form at log_alpha = 0: sigmoid(-beta log(-l/r)) = sigmoid(2/3 log 11).
    assert prob_nonzero(torch.tensor(0.0)).item() == pytest.approx(torch.sigmoid(torch.tensor(2 / 3 * 2.397895)).item(),
                                                                   abs=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_size_model_counts_exactly(arch):
    model = tiny_model(arch)
    masks = random_masks(model)
    assert masks.size.total == count_parameters(model)
    kept = masks.binarize(0.3, 8)
    assert kept.parameters <= 0.7 * masks.size.total
    assert count_parameters(prune_to(model, masks, kept)) == kept.parameters
    # The expected-L0 size with saturated masks equals the binary size.
    with torch.no_grad():
        masks.log_alpha["heads"].fill_(-30.0)
        masks.log_alpha["ffn"].fill_(-30.0)
        masks.log_alpha["hidden"].fill_(30.0)
        for i, (g, f) in enumerate(zip(kept.groups, kept.ffn)):
            masks.log_alpha["heads"][i, g] = 30.0
            masks.log_alpha["ffn"][i, f] = 30.0
        masks.log_alpha["hidden"][kept.removed_hidden] = -30.0
    assert masks.expected_parameters().item() == pytest.approx(kept.parameters, rel=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("uniform", [False, True])
def test_pruned_model_equals_masked_model(arch, uniform):
    model = tiny_model(arch)
    masks = random_masks(model, seed=2)
    kept = masks.binarize(0.3, 8, uniform=uniform, config=model.config)
    assert len({len(g) for g in kept.groups}) == 1 or not uniform
    ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    masks.set_fixed(kept)
    masks.attach(model)
    with torch.no_grad():
        masked = model(ids).logits
    masks.detach()
    with torch.no_grad():
        full = model(ids).logits
    pruned = prune_to(model, masks, kept)
    assert (full - masked).abs().max() > 1e-2  # the masks do something
    with torch.no_grad():
        out = pruned(ids).logits
    torch.testing.assert_close(out, masked, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, full)  # pruning worked on a copy
    expected_type = arch if uniform else f"regprune_{arch}_nonuniform"
    assert pruned.config.model_type == expected_type


def _prune_tiny(uniform: bool):
    model = tiny_model("llama")
    masks = random_masks(model, seed=3)
    cfg = CompressoConfig(ratio=0.3)
    return model, finalize(model, masks, cfg, uniform)[0]


def test_uniform_saves_as_standard_checkpoint(tmp_path):
    _, pruned = _prune_tiny(uniform=True)
    pruned.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "llama"
    assert cfg["num_key_value_heads"] < 2 or cfg["intermediate_size"] < 96 or cfg["hidden_size"] < 64
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 320, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, pruned(ids).logits, atol=1e-5, rtol=1e-5)


def test_nonuniform_saves_reloads_and_generates(tmp_path):
    _, pruned = _prune_tiny(uniform=False)
    heads = pruned.config.layer_num_heads
    assert len(set(zip(heads, pruned.config.layer_intermediate_sizes))) > 1  # really non-uniform
    pruned.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "regprune_llama_nonuniform"
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(reloaded).__name__ == "RegpruneLlamaNonuniformForCausalLM"
    assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight  # tied embeddings stay tied
    ids = torch.randint(3, 320, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, pruned(ids).logits, atol=1e-5, rtol=1e-5)
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    with_cache = reloaded.generate(ids, use_cache=True, **kw)
    without = reloaded.generate(ids, use_cache=False, **kw)
    assert with_cache.shape == (2, 18)
    assert torch.equal(with_cache, without)


def _windows(n=16, seq_len=32, seed=0):
    return torch.randint(3, 320, (n, seq_len), generator=torch.Generator().manual_seed(seed))


def _train_tiny(lambda_lr: float, ratio: float, mask_init: float, steps: int = 25):
    cfg = CompressoConfig(ratio=ratio, collaborative_prompt=False, target_warmup=0.0, mask_init=mask_init,
                          mask_lr=0.3, lambda_lr=lambda_lr, train=TrainConfig(lr=1e-3, steps=steps, batch_size=4,
                                                                                 objective="lm"))
    return train_masks(tiny_model("llama"), CalibrationData(_windows(), _windows(4, seed=1)), cfg)


def test_lagrangian_moves_expected_sparsity_to_target():
    # (LM objective) A random tiny model's LM loss falls when its outputs shrink, so the LM gradient alone pushes sparsity
    # up. Start above the target: the Lagrangian has to pull sparsity down, against the LM gradient.
    start = float(CompressoMasks(tiny_model("llama"), init=-1.0).expected_sparsity().detach())
    _, _, history, info = _train_tiny(lambda_lr=2.0, ratio=0.2, mask_init=-1.0)
    _, _, _, control = _train_tiny(lambda_lr=1e-9, ratio=0.2, mask_init=-1.0)  # multipliers stay ~0
    end, free = info["final_expected_sparsity"], control["final_expected_sparsity"]
    assert start > 0.4 and free > start  # the LM gradient alone prunes further
    assert abs(end - 0.2) < 0.5 * abs(start - 0.2), (start, end, free)
    assert history[3]["lambda_1"] > 0  # ascent: the multiplier turned to push sparsity down
    for key in ("lm_loss", "expected_sparsity", "lagrangian", "target_sparsity", "lambda_2"):
        assert key in history[-1]


def test_prune_api_end_to_end(tokenizer):
    model = tiny_model("llama", vocab_size=len(tokenizer))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = regprune.prune(model, tokenizer, method="compresso", ratio=0.3, steps=3, calib="builtin:calibration",
                         num_samples=8, seq_len=256)
    assert 0.5 < res.record["parameter_ratio"] <= 0.7
    assert res.record["parameters_after"] == count_parameters(res.model)
    d = res.record["method_details"]
    assert d["collaborative_prompt"] == COLLABORATIVE_PROMPT and d["layout"] == "non-uniform"
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # input model untouched


def test_phi3_is_refused():
    with pytest.raises(RegpruneError, match="fuses"):
        CompressoMasks(tiny_model("phi3"))


ALPACA = [{"instruction": f"Say the number {i}.", "input": "" if i % 2 else "in words", "output": f"It is {i}."}
          for i in range(60)]


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_instruction_data_and_collaborative_prompt(tmp_path, tokenizer, suffix):
    path = tmp_path / f"alpaca{suffix}"
    path.write_text(json.dumps(ALPACA) if suffix == ".json" else "".join(json.dumps(r) + "\n" for r in ALPACA))
    calib = regprune.build_calibration(tokenizer, str(path), num_samples=8, seq_len=512, seed=0)
    assert calib.protocol["kind"] == "instructions" and len(calib.regularize) > 0
    on, info_on = training_sequences(calib, CompressoConfig(collaborative_prompt=True))
    off, info_off = training_sequences(calib, CompressoConfig(collaborative_prompt=False))
    text_on = tokenizer.decode(on[0, 0])
    assert "compressed" in text_on and "compressed" not in tokenizer.decode(off[0, 0])
    # Loss only on responses: the masked-in tokens decode to the outputs, never the instruction or prompt.
    answer = tokenizer.decode(on[:, 0][on[:, 1].bool()])
    assert "It is" in answer and "Instruction" not in answer and "compressed" not in answer
    assert info_on["loss_tokens"] < on[:, 1].numel()


def test_prompt_on_plain_text_windows(tokenizer):
    windows = _windows(3, 256)
    ids, mask = prefix_windows(tokenizer, windows, COLLABORATIVE_PROMPT)
    p = int((~mask[0]).sum())
    assert ids.shape == windows.shape and p > 10
    assert torch.equal(ids[:, p:], windows[:, :256 - p])
    assert tokenizer.decode(ids[0, :p]).startswith("Note to the model")
    with pytest.raises(DataUnavailable, match="too short"):
        prefix_windows(tokenizer, _windows(1, 16), COLLABORATIVE_PROMPT)


def test_bad_instruction_rows(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"instruction": "x"}]))
    with pytest.raises(DataUnavailable, match="'output'"):
        load_instructions(path)


def test_cli_uniform_checkpoint_reloads(tiny_model_dir, tmp_path):
    from regprune.cli import main

    out = tmp_path / "out"
    assert main(["prune", str(tiny_model_dir), "-o", str(out), "--method", "compresso", "--ratio", "0.3",
                 "--steps", "2", "--calib", "builtin:calibration", "--num-samples", "8", "--seq-len", "256",
                 "-O", "uniform=true"]) == 0
    record = json.loads((out / "regprune.json").read_text())
    assert record["method"] == "compresso" and record["parameter_ratio"] <= 0.7
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.model_type == "llama"


def test_binarize_reaches_target_with_tied_scores():
    # After short runs many masks share a score; removal still goes unit by unit to the target size.
    model = tiny_model("llama")
    masks = CompressoMasks(model)  # every log-alpha equal
    kept = masks.binarize(0.25, 8)
    one_group = 4 * 16 * 64  # q and o rows/columns of 2 query heads + k and v rows: the coarsest unit here
    assert 0.75 * masks.size.total - one_group <= kept.parameters <= 0.75 * masks.size.total


@pytest.mark.parametrize("bad", [{"lambda_beta1": 1.0}, {"lambda_beta1": -0.1}, {"mask_lr": 0.0},
                                 {"lambda2_init": -1.0}, {"target_warmup": 1.5}, {"structures": "heads,rows"}])
def test_bad_config_is_refused(bad):
    with pytest.raises(ValueError):
        CompressoConfig(**bad)


def test_lambda_momentum_reaches_the_multipliers():
    # Without momentum a multiplier follows the sign of the current gap only; with 0.9 it keeps the
    # direction of earlier steps. Start above the target so the gap is positive from step 1: the
    # multiplier grows either way, but the paths differ iff the option reaches the optimizer.
    runs = []
    for beta1 in (0.0, 0.9):
        cfg = CompressoConfig(ratio=0.2, collaborative_prompt=False, target_warmup=0.0, mask_init=-1.0,
                              mask_lr=0.3, lambda_lr=2.0, lambda_beta1=beta1,
                              train=TrainConfig(lr=1e-3, steps=4, batch_size=4))
        _, _, history, _ = train_masks(tiny_model("llama"), CalibrationData(_windows(), _windows(4, seed=1)), cfg)
        runs.append([h["lambda_1"] for h in history])
    assert runs[0][0] == pytest.approx(2.0, rel=1e-3) and runs[1][0] == pytest.approx(2.0, rel=1e-3)
    assert runs[0][1:] != pytest.approx(runs[1][1:], rel=1e-3)


def test_lambda2_init_sets_the_starting_penalty():
    cfg = CompressoConfig(ratio=0.2, collaborative_prompt=False, target_warmup=0.0, lambda_lr=2.0, lambda2_init=100.0,
                          train=TrainConfig(lr=1e-3, steps=1, batch_size=4))
    _, _, history, info = train_masks(tiny_model("llama"), CalibrationData(_windows(), _windows(4, seed=1)), cfg)
    # One ascent step of about lambda_lr from the starting value (the gap is never exactly zero).
    assert history[0]["lambda_2"] == pytest.approx(102.0, abs=0.01) and info["lambda_2"] == history[0]["lambda_2"]
