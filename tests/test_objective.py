"""The shared training objective (issue 12): KD loss against a reference, cached top-k == live at k = vocab,
the teacher never modified, and the objective reaching every training method."""
from __future__ import annotations

import dataclasses
import hashlib

import pytest
import torch
import torch.nn.functional as F

import regprune
from regprune.errors import RegpruneError
from regprune.train.loop import TrainConfig, train_loop
from regprune.train.objective import CachedTeacher, LiveTeacher, build_teacher, objective_loss

from conftest import tiny_model


def _digest(model) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().numpy().tobytes())
    return h.hexdigest()


@pytest.fixture
def pair():
    teacher = tiny_model("llama", seed=0)
    student = tiny_model("llama", seed=1)
    ids = torch.randint(3, 300, (3, 17), generator=torch.Generator().manual_seed(0))
    return teacher, student, ids


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kd_loss_matches_a_reference_computation(pair, temperature):
    teacher, student, ids = pair
    with torch.no_grad():
        zs = student(ids).logits[:, :-1].float() / temperature
        zt = teacher(ids).logits[:, :-1].float() / temperature
        ref_kd = F.kl_div(F.log_softmax(zs, -1).flatten(0, 1), F.log_softmax(zt, -1).flatten(0, 1), log_target=True,
                          reduction="batchmean") * temperature ** 2
        ref_lm = F.cross_entropy(student(ids).logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
    live = LiveTeacher(teacher, temperature)
    for chunk in (5, 7, 10_000):  # chunking does not change the value
        with torch.no_grad():
            loss, parts = objective_loss(student, ids, None, alpha=1.0, temperature=temperature, teacher=live,
                                         chunk_tokens=chunk)
        assert loss.item() == pytest.approx(ref_kd.item(), rel=1e-5)
        assert parts["lm_loss"] == pytest.approx(ref_lm.item(), rel=1e-5)
    with torch.no_grad():
        mix, _ = objective_loss(student, ids, None, alpha=0.25, temperature=temperature, teacher=live)
    assert mix.item() == pytest.approx(0.75 * ref_lm.item() + 0.25 * ref_kd.item(), rel=1e-5)


def test_masked_tokens_carry_no_loss(pair):
    teacher, student, ids = pair
    live = LiveTeacher(teacher)
    mask = torch.zeros_like(ids)
    mask[:, 9:] = 1
    with torch.no_grad():
        zs, zt = student(ids).logits[:, 8:-1].float(), teacher(ids).logits[:, 8:-1].float()
        ref = F.kl_div(F.log_softmax(zs, -1).flatten(0, 1), F.log_softmax(zt, -1).flatten(0, 1), log_target=True,
                       reduction="batchmean")
        loss, _ = objective_loss(student, ids, mask, alpha=1.0, teacher=live, chunk_tokens=4)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)


def test_cached_top_k_equals_live_when_k_is_the_vocabulary(pair):
    teacher, student, ids = pair
    vocab = teacher.config.vocab_size
    cached = CachedTeacher.build(teacher, ids, top_k=vocab, temperature=1.5, batch_size=2, chunk_tokens=9)
    live = LiveTeacher(teacher, 1.5)
    rows = torch.tensor([2, 0])
    a, _ = objective_loss(student, ids[rows], None, alpha=1.0, temperature=1.5, teacher=cached, rows=rows)
    b, _ = objective_loss(student, ids[rows], None, alpha=1.0, temperature=1.5, teacher=live)
    assert a.item() == pytest.approx(b.item(), rel=1e-4)
    a.backward()
    g_cached = [p.grad.clone() for p in student.parameters()]
    student.zero_grad()
    b.backward()
    for ga, p in zip(g_cached, student.parameters()):
        torch.testing.assert_close(ga, p.grad, rtol=1e-3, atol=1e-6)
    assert cached.describe()["tail_mass_mean"] == pytest.approx(0.0, abs=1e-6)


def test_cached_top_k_tail_bucket(pair):
    """With k < vocab the loss is the KL of the distributions coarsened to the top k + one tail bucket."""
    teacher, student, ids = pair
    k = 20
    cached = CachedTeacher.build(teacher, ids, top_k=k)
    rows = torch.arange(len(ids))
    with torch.no_grad():
        got, _ = objective_loss(student, ids, None, alpha=1.0, teacher=cached, rows=rows)
        lt = F.log_softmax(teacher(ids).logits[:, :-1].double(), -1).flatten(0, 1)
        ls = F.log_softmax(student(ids).logits[:, :-1].double(), -1).flatten(0, 1)
        top = lt.topk(k, -1).indices
        lpk, lqk = lt.gather(-1, top), ls.gather(-1, top)
        r = (1 - lpk.exp().sum(-1)).clamp_min(0)
        q = 1 - lqk.exp().sum(-1)
        ref = (lpk.exp() * (lpk - lqk)).sum(-1) + torch.special.xlogy(r, r) - torch.special.xlogy(r, q)
        full = (lt.exp() * (lt - ls)).sum(-1)
    assert got.item() == pytest.approx(ref.mean().item(), rel=1e-4)
    assert got.item() <= full.mean().item() + 1e-6  # coarsening never increases a KL
    with pytest.raises(RuntimeError, match="not built for"):
        objective_loss(student, ids[[1, 0]], None, alpha=1.0, teacher=cached, rows=torch.tensor([0, 1]))


def test_large_cache_goes_to_a_memory_mapped_file(pair, tmp_path):
    teacher, _, ids = pair
    in_ram = CachedTeacher.build(teacher, ids, top_k=8)
    mapped = CachedTeacher.build(teacher, ids, top_k=8, cache_dir=str(tmp_path))
    assert "memory-mapped" in mapped.describe()["storage"] and list(tmp_path.iterdir()) == []
    assert torch.equal(in_ram.idx, mapped.idx) and torch.equal(in_ram.logp, mapped.logp)


@pytest.mark.parametrize("kind", ["live", "cached"])
def test_teacher_is_never_modified(kind, pair):
    teacher, _, ids = pair
    before = _digest(teacher)
    cfg = TrainConfig(lr=1e-2, steps=3, batch_size=2, objective="kd", teacher=kind, teacher_top_k=16)
    student = teacher  # the usual case: the method trains the model the teacher was made from
    t = build_teacher(student, ids, cfg)
    t_digest = _digest(t.model) if kind == "live" else None
    train_loop(student, ids, cfg, teacher=t)
    assert _digest(student) != before  # the student trained
    if kind == "live":
        assert _digest(t.model) == t_digest == before
    else:
        assert torch.equal(t.windows, ids)


def test_lm_objective_needs_no_teacher_and_kd_refuses_none(pair):
    _, student, ids = pair
    assert build_teacher(student, ids, TrainConfig(steps=1, objective="lm")) is None
    with pytest.raises(ValueError, match="needs a teacher"):
        train_loop(student, ids, TrainConfig(steps=1, batch_size=2, objective="kd"))


@pytest.mark.parametrize("bad,match", [
    (dict(objective="ce"), "objective must be"), (dict(teacher="disk"), "teacher must be"),
    (dict(kd_alpha=1.5), "kd_alpha must be in"), (dict(kd_temperature=0), "kd_temperature must be > 0"),
    (dict(teacher_top_k=0), "teacher_top_k must be >= 1"), (dict(loss_chunk_tokens=0), "loss_chunk_tokens"),
])
def test_bad_objective_options(bad, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(steps=1, **bad)


@pytest.mark.parametrize("method,opts", [
    ("dress", dict(steps=1)), ("trsp", dict(steps=1, layers=1)), ("slice", dict(steps=1, finetune=True)),
    ("compresso", dict(steps=1, collaborative_prompt=False)),
])
def test_objective_reaches_every_training_method(method, opts, tiny_model_dir, corpus_dir, monkeypatch):
    import regprune.train.loop as loop

    seen = []
    real = loop.objective_loss

    def spy(*a, **k):
        seen.append((k["alpha"], None if k.get("teacher") is None else k["teacher"].kind))
        return real(*a, **k)

    monkeypatch.setattr(loop, "objective_loss", spy)
    for objective, teacher, want in (("lm", "cached", (0.0, None)), ("kd", "live", (1.0, "live")),
                                     ("mix", "cached", (0.5, "cached"))):
        seen.clear()
        res = regprune.prune(str(tiny_model_dir), method=method, num_samples=8, seq_len=32, data_dir=corpus_dir,
                             batch_size=2, objective=objective, teacher=teacher, teacher_top_k=32, **opts)
        if method == "trsp":  # stage 1 ranks the blocks on the LM loss (stage1_objective="lm"), stage 2 as asked
            assert seen == [(0.0, None), want], (objective, seen)
        else:
            assert seen and set(seen) == {want}, (objective, seen)
        assert res.record["config"]["train"]["objective"] == objective
        assert res.record["method_details"]["objective"]["objective"] == objective


def test_objective_reaches_recovery(tiny_model_dir, corpus_dir, monkeypatch):
    import regprune.train.loop as loop
    from regprune.train.lora import RecoveryConfig

    seen = []
    real = loop.objective_loss

    def spy(*a, **k):
        seen.append(k["alpha"])
        return real(*a, **k)

    monkeypatch.setattr(loop, "objective_loss", spy)
    rec = RecoveryConfig(train=TrainConfig(lr=1e-4, steps=2, batch_size=2, objective="kd", teacher="cached",
                                           teacher_top_k=32))
    res = regprune.prune(str(tiny_model_dir), method="slice", num_samples=12, seq_len=32, data_dir=corpus_dir,
                         recovery=rec)
    assert seen == [1.0, 1.0]  # slice itself does not train; both recovery steps distil
    assert res.record["recovery"]["objective"]["teacher"] == "cached"
    assert dataclasses.asdict(rec)["train"]["objective"] == "kd"


def test_slice_training_options_need_finetune():
    from regprune.api import check_method_options

    check_method_options("slice", {"seed": 3})  # the seed reaches the (unused) run too: not a training option
    with pytest.raises(RegpruneError, match="only with finetune=true"):
        check_method_options("slice", {"steps": 4, "epochs": None})
    cfg = check_method_options("slice", {"steps": 4, "epochs": None, "finetune": True, "objective": "lm"})
    assert cfg.finetune and cfg.train.steps == 4 and cfg.train.lr == 3e-4  # DReSS's schedule otherwise


@pytest.mark.parametrize("method,opts", [
    ("dress", dict(steps=2)), ("slice", dict(steps=2, finetune=True)), ("trsp", dict(steps=2, layers=1)),
    ("compresso", dict(steps=2, collaborative_prompt=False)),
])
def test_bf16_autocast_smoke_every_training_method(method, opts, tiny_model_dir, corpus_dir):
    """bf16 autocast on the CPU, fp32 master weights: every training method runs and trains."""
    res = regprune.prune(str(tiny_model_dir), method=method, num_samples=8, seq_len=32, data_dir=corpus_dir,
                         batch_size=2, mixed_precision="bf16", **opts)
    h = res.record["history"]
    assert h and all(torch.isfinite(torch.tensor(r["loss" if "loss" in r else "lm_loss"])) for r in h)
    assert next(res.model.parameters()).dtype == torch.float32


def test_model_stored_in_bf16_trains_on_fp32_master_weights(tiny_model_dir, corpus_dir):
    from regprune.train.lora import RecoveryConfig

    res = regprune.prune(str(tiny_model_dir), method="dress", dtype="bfloat16", steps=2, num_samples=12, seq_len=32,
                         data_dir=corpus_dir, batch_size=2, mixed_precision="bf16",
                         recovery=RecoveryConfig(train=TrainConfig(steps=1, batch_size=2, mixed_precision="bf16")))
    assert res.record["precision"] == {"storage": "bfloat16", "training": "fp32 master weights"}
    assert next(res.model.parameters()).dtype == torch.bfloat16  # cast back for saving
    assert res.record["method_details"]["exact_zero_fraction_before_slicing"] == 1.0  # prox on the fp32 copy
    with pytest.raises(ValueError, match="fp32 master weights"):
        model = tiny_model("llama").to(torch.bfloat16)
        train_loop(model, torch.randint(3, 300, (2, 16)), TrainConfig(steps=1, batch_size=2, objective="lm",
                                                                       mixed_precision="bf16"))


@pytest.mark.parametrize("schedule", ["constant", "cosine", "linear"])
def test_lr_schedule_is_what_the_optimizer_uses(schedule):
    """The lr the optimizer steps with follows lr_factor: warm-up, then constant or a decay that ends exactly
    at final_lr_ratio; lr_budget (the DReSS prox scale) is the sum of those factors."""
    from regprune.train.loop import lr_budget, lr_factor

    model = tiny_model("llama", seed=0)
    cfg = TrainConfig(lr=1e-3, steps=7, batch_size=2, warmup_steps=2, lr_schedule=schedule, final_lr_ratio=0.1,
                      objective="lm")
    windows = torch.randint(3, 300, (14, 9), generator=torch.Generator().manual_seed(0))
    hist = train_loop(model, windows, cfg)
    lrs = [h["lr"] / cfg.lr for h in hist]
    assert lrs == pytest.approx([lr_factor(cfg, s, 7) for s in range(7)])
    assert lrs[:3] == pytest.approx([0.5, 1.0, 1.0])
    assert lrs[-1] == pytest.approx(1.0 if schedule == "constant" else 0.1)
    if schedule != "constant":
        assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))  # non-increasing after the warm-up
    if schedule == "linear":
        assert lrs[2:] == pytest.approx([1.0, 0.775, 0.55, 0.325, 0.1])
    assert lr_budget(cfg, 7) == pytest.approx(sum(lrs))


def test_lr_schedule_options_are_checked_and_reach_the_cli(tiny_model_dir, corpus_dir, tmp_path):
    with pytest.raises(ValueError, match="lr_schedule must be one of constant, cosine, linear"):
        TrainConfig(lr_schedule="step")
    with pytest.raises(ValueError, match="final_lr_ratio"):
        TrainConfig(final_lr_ratio=1.5)
    from regprune.cli import main

    out = tmp_path / "out"
    rc = main(["prune", str(tiny_model_dir), "-o", str(out), "--method", "dress", "--ratio", "0.25", "--steps", "3",
               "--batch-size", "2", "--lr-schedule", "linear", "--final-lr-ratio", "0.5", "--warmup-steps", "0",
               "--objective", "lm", "--calib", "wikitext2:validation", "--num-samples", "8", "--seq-len", "32",
               "--data-dir", str(corpus_dir)])
    assert rc == 0
    rec = __import__("json").loads((out / "regprune.json").read_text())
    train = rec["config"]["train"]
    assert (train["lr_schedule"], train["final_lr_ratio"]) == ("linear", 0.5)
    assert [round(h["lr"] / train["lr"], 6) for h in rec["history"]] == [1.0, 0.75, 0.5]


def test_metrics_every_n_steps_and_step_timing(tiny_model_dir, corpus_dir):
    res = regprune.prune(str(tiny_model_dir), method="dress", steps=5, batch_size=2, num_samples=16, seq_len=32,
                         data_dir=corpus_dir, objective="lm", metrics_every=2)
    h = res.record["history"]
    assert [r["step"] for r in h if "energy_left" in r] == [2, 4, 5]  # every 2 steps and the last
    for r in h:
        assert 0 <= r["t_data"] + r["t_after_step"] + r["t_metrics"] <= r["t_step"]
    with pytest.raises(RegpruneError, match="metrics_every must be"):
        regprune.prune(str(tiny_model_dir), method="dress", steps=2, metrics_every=0, num_samples=8, seq_len=32,
                       data_dir=corpus_dir)


def test_trsp_stage1_objective(tiny_model_dir, corpus_dir, monkeypatch):
    import regprune.train.loop as loop

    seen = []
    real = loop.objective_loss
    monkeypatch.setattr(loop, "objective_loss", lambda *a, **k: (seen.append(k["alpha"]), real(*a, **k))[1])
    res = regprune.prune(str(tiny_model_dir), method="trsp", layers=1, steps=2, stage1_steps=2, num_samples=16,
                         seq_len=32, data_dir=corpus_dir, batch_size=2, teacher_top_k=32, stage1_objective="same")
    assert seen == [1.0] * 4 and res.record["method_details"]["stage1_objective"] == "kd"
    with pytest.raises(RegpruneError, match="stage1_objective must be lm or same"):
        regprune.prune(str(tiny_model_dir), method="trsp", layers=1, stage1_objective="kd", num_samples=8, seq_len=32,
                       data_dir=corpus_dir)


@pytest.mark.parametrize("method,opts", [("dress", dict(steps=3)), ("compresso", dict(steps=2, collaborative_prompt=False))])
def test_gradient_checkpointing_gives_the_same_run(method, opts, tiny_model_dir, corpus_dir):
    """Recomputing activations in the backward pass changes memory, not the result."""
    kw = dict(method=method, num_samples=8, seq_len=32, data_dir=corpus_dir, batch_size=2, lr=1e-3, objective="lm",
              **opts)
    a = regprune.prune(str(tiny_model_dir), **kw)
    b = regprune.prune(str(tiny_model_dir), gradient_checkpointing=True, **kw)
    assert b.record["config"]["train"]["gradient_checkpointing"] is True
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-5, atol=1e-6, msg=k)
    assert not getattr(b.model, "is_gradient_checkpointing", False)  # switched off again after training
