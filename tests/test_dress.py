import copy

import pytest
import torch

from conftest import tiny_model
from regprune.methods import CalibrationData, get_method
from regprune.methods.dress import ChannelRegularizer, DressConfig
from regprune.methods.selection import num_removed, select_channels
from regprune.surgery import mask_hidden_channels
from regprune.train import TrainConfig


def windows(n=8, L=32, seed=0):
    return torch.randint(3, 320, (n, L), generator=torch.Generator().manual_seed(seed))


def run_dress(norm, lam, steps=6, mode="prox", lr=1e-3, selection="last"):
    model = tiny_model()
    cfg = DressConfig(ratio=0.25, selection=selection, norm=norm, lam=lam, mode=mode,
                      train=TrainConfig(lr=lr, steps=steps, batch_size=2, warmup_steps=0))
    calib = CalibrationData(windows(), windows(4, seed=1))
    removed = list(range(48, 64))
    reg = ChannelRegularizer(model, removed, norm, lam, mode, lr_budget=steps)
    return model, cfg, calib, reg, removed


@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_prox_shrinks_selected_and_l1_l2_give_exact_zeros(norm):
    model, cfg, calib, reg, removed = run_dress(norm, lam=8.0)
    kept_before = [s.param.detach().clone() for s in reg.slices]
    assert reg.energy_left() == pytest.approx(1.0)
    for step in range(6):
        reg.prox(step, 1.0)
    assert reg.energy_left() == 0.0
    assert reg.exact_zero_fraction() == 1.0
    keep = torch.tensor([i for i in range(64) if i not in removed])
    for s, before in zip(reg.slices, kept_before):  # prox never touches kept channels
        assert torch.equal(s.param.detach().index_select(s.dim, keep), before.index_select(s.dim, keep))


def test_prox_small_lambda_shrinks_without_zeroing():
    model, cfg, calib, reg, removed = run_dress("l2", lam=0.3)
    for step in range(6):
        reg.prox(step, 1.0)
    assert 0.3 < reg.energy_left() < 0.9  # roughly (1 - 0.3)^2 for a typical slice
    assert reg.exact_zero_fraction() == 0.0


@pytest.mark.parametrize("norm,lam", [("l1", 6.0), ("l2", 2.0)])
def test_dress_method_trains_regularizes_and_slices_exactly(norm, lam):
    model = tiny_model()
    cfg = DressConfig(ratio=0.25, selection="last", norm=norm, lam=lam,
                      train=TrainConfig(lr=1e-3, steps=4, batch_size=2, warmup_steps=0))
    res = get_method("dress").run(model, CalibrationData(windows(), windows(4, seed=1)), cfg)
    d = res.details
    assert d["hidden_size_after"] == 48 and d["removed_channels"] == list(range(48, 64))
    assert d["exact_zero_fraction_before_slicing"] == 1.0
    assert len(res.history) == 4 and {"lm_loss", "reg_loss", "energy_left"} <= set(res.history[0])
    assert res.history[-1]["energy_left"] == 0.0 < res.history[0]["energy_left"]
    mags = d["magnitudes"]
    assert all(m["selected_rms_after"] == 0.0 for m in mags)
    assert all(m["kept_rms_after"] > 0.0 for m in mags)
    assert res.model.config.hidden_size == 48


def test_loss_mode_reduces_selected_norm():
    model, cfg, calib, reg, removed = run_dress("l2", lam=1.0, mode="loss")
    before = reg.value()
    cfg = DressConfig(ratio=0.25, selection="last", norm="l2", lam=1.0, mode="loss",
                      train=TrainConfig(lr=1e-2, steps=5, batch_size=2, warmup_steps=0, objective="lm"))
    from regprune.train.loop import train_loop

    train_loop(model, calib.regularize, cfg.train, extra_loss=reg.loss)
    assert reg.value() < 0.8 * before


def test_regularization_leaves_model_equal_to_sliced():
    """After DReSS drives the slices to exact zero, slicing changes nothing about the function."""
    model = tiny_model()
    cfg = DressConfig(ratio=0.25, selection="last", norm="l1", lam=5.0,
                      train=TrainConfig(lr=1e-3, steps=3, batch_size=2, warmup_steps=0, objective="lm"))
    # Run the regularization on a copy, then compare that (unsliced) model with the sliced result.
    m = copy.deepcopy(model)
    reg = ChannelRegularizer(m, list(range(48, 64)), "l1", 5.0, "prox", lr_budget=3)
    from regprune.train.loop import train_loop

    train_loop(m, windows(), cfg.train, after_step=lambda s, lr: reg.prox(s, 1.0))
    from regprune.surgery import slice_hidden_channels

    sliced = slice_hidden_channels(m, list(range(48, 64)))
    x = windows(2, 20, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(sliced(x).logits, m(x).logits, atol=2e-5, rtol=1e-5)


def test_num_removed_and_selection():
    assert num_removed(576, 0.25) == 144 and num_removed(576, 0.5) == 288
    assert num_removed(64, 0.25) == 16
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"in \(0, 1\)"):
            num_removed(64, bad)
    model = tiny_model()
    w = windows()
    for strategy in ("last", "random", "activation", "weight"):
        idx, _ = select_channels(model, strategy, 16, w, seed=0)
        assert len(set(idx)) == 16 and all(0 <= i < 64 for i in idx) and idx == sorted(idx)
    assert select_channels(model, "random", 16, w, seed=0)[0] == select_channels(model, "random", 16, w, seed=0)[0]


def test_activation_selection_finds_quiet_channels():
    model = tiny_model()
    quiet = [3, 10, 17, 40]
    with torch.no_grad():  # make four channels nearly silent in the residual stream
        model.model.embed_tokens.weight[:, quiet] *= 1e-3
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[quiet] *= 1e-3
            layer.mlp.down_proj.weight[quiet] *= 1e-3
    idx, scores = select_channels(model, "activation", 4, windows(), seed=0)
    assert idx == quiet


def test_distillation_uses_frozen_teacher_and_logs_kl():
    model = tiny_model()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = DressConfig(ratio=0.25, selection="last", norm="l2", lam=2.0, distill=True,
                      train=TrainConfig(lr=1e-3, steps=3, batch_size=2, warmup_steps=0))
    res = get_method("dress").run(model, CalibrationData(windows(), windows(4, seed=1)), cfg)
    h = res.history
    assert all("distill_loss" in r and r["distill_loss"] >= 0 for r in h)
    assert h[0]["distill_loss"] < 1e-3  # the student starts as the teacher: KL ~ 0 before the first update
    assert h[-1]["distill_loss"] > h[0]["distill_loss"]  # then channels shrink and the KL grows
    assert res.model.config.hidden_size == 48
    assert not torch.equal(model.model.layers[0].mlp.up_proj.weight, original["model.layers.0.mlp.up_proj.weight"])
