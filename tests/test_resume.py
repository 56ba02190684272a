"""Resumable training (issue 13): a run killed at step k and resumed gives the same final model as an
uninterrupted run, for every training method and for the LoRA recovery; wrong resumes are refused."""
from __future__ import annotations

import json

import pytest
import torch

import regprune
from regprune.errors import RegpruneError
from regprune.train import checkpoint as ckpt_mod
from regprune.train.loop import TrainConfig
from regprune.train.lora import RecoveryConfig


class Killed(Exception):
    """Stands for the process dying: raised inside the loop, after some work past the last checkpoint."""


def _kill_after(monkeypatch, call: str, step: int):
    """Make the training step after checkpoint `step` of loop call `call` ('00', '01', ...) die mid-step."""
    real_save = ckpt_mod.LoopCheckpoint.save
    armed = {}

    def save(self, **kw):
        real_save(self, **kw)
        if self.dir.name == call and kw["step"] == step:
            armed["on"] = True

    import regprune.train.loop as loop

    real_loss = loop.objective_loss  # (the same function as regprune.train.objective.objective_loss)

    def loss(*a, **k):
        if armed.pop("on", False):
            raise Killed(f"killed in call {call} after step {step}")
        return real_loss(*a, **k)

    import regprune.train.objective as objective

    monkeypatch.setattr(ckpt_mod.LoopCheckpoint, "save", save)
    monkeypatch.setattr(loop, "objective_loss", loss)
    monkeypatch.setattr(objective, "objective_loss", loss)  # what a sharded loop's FSDP root calls


def _same_models(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].shape == sb[k].shape, k
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=1e-6, msg=k)


def _strip(history):
    return [{k: v for k, v in r.items() if k != "seconds" and not k.startswith("t_")} for r in history]


CASES = {
    "dress": (dict(method="dress", steps=6, lr=1e-3), "00", 2),
    "slice+finetune": (dict(method="slice", finetune=True, steps=5, lr=1e-3), "00", 3),
    # two calls: stage 1 then stage 2; killed in stage 2 (stage 1 is restored from its final checkpoint)
    "trsp": (dict(method="trsp", layers=1, steps=4, stage1_steps=3), "01", 2),
    "compresso": (dict(method="compresso", steps=5, collaborative_prompt=False), "00", 2),
    # the method's call finished; the LoRA recovery (call 01) is killed
    "dress+recovery": (dict(method="dress", steps=3, recovery=RecoveryConfig(
        train=TrainConfig(lr=1e-3, steps=5, batch_size=2), eval_every=2, patience=5)), "01", 2),
}


@pytest.mark.parametrize("case", list(CASES))
def test_killed_and_resumed_equals_uninterrupted(case, tiny_model_dir, corpus_dir, tmp_path, monkeypatch):
    opts, call, step = CASES[case]
    common = dict(num_samples=16, seq_len=32, data_dir=corpus_dir, batch_size=2, teacher_top_k=32, **opts)
    ref = regprune.prune(str(tiny_model_dir), **common)

    ck = tmp_path / "ck"
    with monkeypatch.context() as m:
        _kill_after(m, call, step)
        with pytest.raises(Killed):
            regprune.prune(str(tiny_model_dir), checkpoint_dir=ck, checkpoint_every=1, **common)
    meta = json.loads((ck / call / "meta.json").read_text())
    assert (meta["step"], meta["finished"]) == (step, False)
    with pytest.raises(RegpruneError, match="add --resume"):  # never silently restarted over the checkpoints
        regprune.prune(str(tiny_model_dir), checkpoint_dir=ck, checkpoint_every=1, **common)

    res = regprune.prune(str(tiny_model_dir), checkpoint_dir=ck, checkpoint_every=1, resume=True, **common)
    _same_models(ref.model, res.model)
    assert _strip(res.record["history"]) == _strip(ref.record["history"])
    if "recovery" in opts:
        assert _strip(res.record["recovery"]["history"]) == _strip(ref.record["recovery"]["history"])
        assert res.record["recovery"]["best_step"] == ref.record["recovery"]["best_step"]
    assert res.record["method_details"].get("removed_layers") == ref.record["method_details"].get("removed_layers")
    res.save(tmp_path / "out")
    assert not ck.exists()  # the checkpoints go once the output is complete


def test_checkpoints_every_n_steps_and_resume_refusals(tiny_model_dir, corpus_dir, tmp_path, monkeypatch):
    common = dict(method="dress", steps=5, num_samples=16, seq_len=32, data_dir=corpus_dir, batch_size=2,
                  teacher_top_k=32)
    ck = tmp_path / "ck"
    saved = []
    real_save = ckpt_mod.LoopCheckpoint.save
    monkeypatch.setattr(ckpt_mod.LoopCheckpoint, "save", lambda self, **kw: (saved.append(kw["step"]),
                                                                             real_save(self, **kw)))
    res = regprune.prune(str(tiny_model_dir), checkpoint_dir=ck, checkpoint_every=2, **common)
    assert saved == [2, 4, 5]  # every 2 steps and at the end
    assert res.record["resumed"] is False
    with pytest.raises(RegpruneError, match=r"other settings \(config.lam: 4.0 then, 2.0 now"):
        regprune.prune(str(tiny_model_dir), checkpoint_dir=ck, resume=True, lam=2.0, **common)
    again = regprune.prune(str(tiny_model_dir), checkpoint_dir=ck, resume=True, **common)  # all calls finished
    _same_models(res.model, again.model)
    assert again.record["resumed"] is True
    with pytest.raises(RegpruneError, match="need a checkpoint_dir"):
        regprune.prune(str(tiny_model_dir), resume=True, **common)
    with pytest.raises(RegpruneError, match="checkpoint_every must be a whole number"):
        regprune.prune(str(tiny_model_dir), checkpoint_dir=tmp_path / "ck2", checkpoint_every=0, **common)
    (tmp_path / "other").mkdir()
    with pytest.raises(RegpruneError, match="holds no regprune checkpoint"):
        regprune.prune(str(tiny_model_dir), checkpoint_dir=tmp_path / "other", **common)


def test_cli_checkpoints_next_to_the_output_and_resumes(tiny_model_dir, corpus_dir, tmp_path, monkeypatch, capsys):
    from regprune.cli import main

    out = tmp_path / "out"
    args = ["prune", str(tiny_model_dir), "-o", str(out), "--method", "dress", "--steps", "4", "--batch-size", "2",
            "--num-samples", "16", "--seq-len", "32", "--data-dir", str(corpus_dir), "--teacher-top-k", "32",
            "--checkpoint-every", "1"]
    ck = tmp_path / ".out.checkpoints"
    with monkeypatch.context() as m:
        _kill_after(m, "00", 2)
        with pytest.raises(Killed):
            main(args)
    assert list((ck / "00").glob("state-step2-rank0of1.pt")) and not out.exists()
    assert main(args) == 2
    assert "add --resume" in capsys.readouterr().err
    assert main(args + ["--resume"]) == 0
    assert (out / "config.json").is_file() and not ck.exists()
    rec = json.loads((out / "regprune.json").read_text())
    assert rec["resumed"] is True and [h["step"] for h in rec["history"]] == [1, 2, 3, 4]
