"""Multi-process training (issue 13): a 2-process gloo FSDP2 run on a tiny Llama equals the one-process run
(loss curve within tolerance, the same exact zeros, pruned models equal within tolerance), for DReSS, the
prune-then-train baseline, the LoRA recovery, TRSP and Compresso."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import regprune
from regprune.train.loop import TrainConfig
from regprune.train.lora import RecoveryConfig

WORKER = Path(__file__).parent / "distributed" / "prune_worker.py"


def _torchrun(tmp_path, model_dir, data_dir, spec: dict, n: int = 2, name: str = "dist",
             expect_ok: bool = True) -> tuple[dict, dict] | None:
    out = tmp_path / name
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", str(WORKER),
           str(model_dir), str(data_dir), str(out), json.dumps(spec)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if not expect_ok:
        assert r.returncode != 0 and "Killed" in r.stderr, r.stderr[-3000:]
        return None
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    return torch.load(out / "state.pt"), json.loads((out / "record.json").read_text())


def _curve(history, key):
    return [h[key] for h in history if h.get(key) is not None]


COMMON = dict(num_samples=16, seq_len=32, batch_size=4, teacher_top_k=32)
# Runs that start from the unpruned model (DReSS, TRSP, Compresso) use the LM loss here: with distillation
# their first gradient is the KL of a model to itself, zero up to rounding, and Adam scales that rounding
# noise (which differs with the reduction order of 2 processes) to lr-sized steps. The distillation path is
# covered by the runs that start from a pruned model (slice + fine-tuning, the recovery).
CASES = {
    "dress": dict(method="dress", steps=4, lr=1e-3, objective="lm"),
    "dress-loss-mode": dict(method="dress", steps=3, lr=1e-3, objective="lm", mode="loss", lam=1e-3),
    "dress-l1-accum": dict(method="dress", steps=3, lr=1e-3, objective="lm", grad_accum=2, norm="l1"),
    "slice+finetune-kd": dict(method="slice", finetune=True, steps=3, lr=1e-3, objective="kd"),
    "trsp": dict(method="trsp", layers=1, steps=3, stage1_steps=2, objective="lm"),
    "compresso": dict(method="compresso", steps=3, collaborative_prompt=False, objective="lm"),
    "dress+recovery-kd": dict(method="dress", steps=2, objective="lm", recovery=dict(
        train=dict(lr=1e-3, steps=3, batch_size=2, objective="kd"), eval_every=2, patience=5)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_two_process_fsdp_equals_one_process(case, tiny_model_dir, corpus_dir, tmp_path):
    spec = {**COMMON, **CASES[case]}
    state, rec = _torchrun(tmp_path, tiny_model_dir, corpus_dir, spec)
    kw = dict(spec)
    if "recovery" in kw:
        r = dict(kw.pop("recovery"))
        kw["recovery"] = RecoveryConfig(train=TrainConfig(**r.pop("train")), **r)
    ref = regprune.prune(str(tiny_model_dir), data_dir=corpus_dir, **kw)
    ref_state = ref.model.state_dict()
    assert state.keys() == ref_state.keys()
    for k, v in ref_state.items():
        assert state[k].shape == v.shape, k
        torch.testing.assert_close(state[k], v, rtol=1e-4, atol=1e-5, msg=k)
    for key in ("lm_loss", "loss", "distill_loss", "energy_left"):
        assert _curve(rec["history"], key) == pytest.approx(_curve(ref.record["history"], key), rel=1e-4, abs=1e-6)
    d, rd = rec["method_details"], ref.record["method_details"]
    for key in ("removed_channels", "removed_layers", "exact_zero_fraction_before_slicing"):
        assert d.get(key) == rd.get(key), key
    if "recovery" in spec:
        assert _curve(rec["recovery"]["history"], "eval_loss") == pytest.approx(
            _curve(ref.record["recovery"]["history"], "eval_loss"), rel=1e-4)
    assert rec["distributed"] == {"processes": 2, "backend": "gloo", "sharding": "FSDP2 fully_shard"}


def _torchrun_cli(args: list[str], n: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
                           "-m", "regprune", *args], capture_output=True, text=True, env=env, timeout=600)


def test_cli_under_torchrun_writes_once_and_equals_one_process(tiny_model_dir, corpus_dir, tmp_path):
    from safetensors.torch import load_file

    from regprune.cli import main

    args = ["--method", "dress", "--steps", "3", "--batch-size", "4", "--objective", "lm", "--lr", "1e-3",
            "--num-samples", "16", "--seq-len", "32", "--data-dir", str(corpus_dir)]
    r = _torchrun_cli(["prune", str(tiny_model_dir), "-o", str(tmp_path / "dist"), *args])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert r.stdout.count("saved to") == 1  # process 0 alone writes
    assert main(["prune", str(tiny_model_dir), "-o", str(tmp_path / "one"), *args]) == 0
    a, b = load_file(tmp_path / "dist" / "model.safetensors"), load_file(tmp_path / "one" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    rec = json.loads((tmp_path / "dist" / "regprune.json").read_text())
    assert rec["distributed"]["processes"] == 2
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no lock or partial left


def test_cli_under_torchrun_refuses_before_work(tiny_model_dir, corpus_dir, tmp_path):
    base = ["prune", str(tiny_model_dir), "--method", "dress", "--steps", "2", "--num-samples", "16",
            "--seq-len", "32", "--data-dir", str(corpus_dir)]
    r = _torchrun_cli(base + ["-o", str(tmp_path / "a"), "--batch-size", "3"])
    assert r.returncode != 0 and "--batch-size 3 must be a multiple of the number of processes (2)" in r.stderr
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("user data")
    r = _torchrun_cli(base + ["-o", str(tmp_path / "b")])
    assert r.returncode != 0 and "process 0:" in r.stderr and "not empty" in r.stderr
    assert (tmp_path / "b" / "x").read_text() == "user data"
    r = _torchrun_cli(["info", "smollm2-135m"])
    assert r.returncode != 0 and "only `regprune prune` runs as several processes" in r.stderr


def test_accelerate_launch_with_the_shipped_config(tiny_model_dir, corpus_dir, tmp_path):
    config = Path(__file__).parent.parent / "examples" / "accelerate" / "multi_cpu_2proc.yaml"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "-m",
                        "regprune", "prune", str(tiny_model_dir), "-o", str(out), "--method", "slice", "--finetune",
                        "--steps", "2", "--batch-size", "2", "--num-samples", "8", "--seq-len", "32", "--data-dir",
                        str(corpus_dir)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    rec = json.loads((out / "regprune.json").read_text())
    assert rec["distributed"] == {"processes": 2, "backend": "gloo", "sharding": "FSDP2 fully_shard"}
    assert [h["step"] for h in rec["history"]] == [1, 2]


def test_two_process_run_killed_and_resumed_equals_uninterrupted(tiny_model_dir, corpus_dir, tmp_path):
    """Each process checkpoints its own shards; a 2-process run killed after step 2 and resumed with 2
    processes ends where the uninterrupted 2-process run ends."""
    spec = {**COMMON, **CASES["dress"], "checkpoint_every": 1}
    ref_state, ref = _torchrun(tmp_path, tiny_model_dir, corpus_dir, {**spec, "checkpoint_dir": str(tmp_path / "ck0")},
                               name="ref")
    ck = str(tmp_path / "ck")
    _torchrun(tmp_path, tiny_model_dir, corpus_dir, {**spec, "checkpoint_dir": ck, "kill_after": ["00", 2]},
              name="killed", expect_ok=False)
    assert sorted(p.name for p in (tmp_path / "ck" / "00").glob("state-*")) == [
        "state-step2-rank0of2.pt", "state-step2-rank1of2.pt"]
    state, rec = _torchrun(tmp_path, tiny_model_dir, corpus_dir, {**spec, "checkpoint_dir": ck, "resume": True},
                           name="resumed")
    for k, v in ref_state.items():
        torch.testing.assert_close(state[k], v, rtol=0, atol=1e-6, msg=k)
    assert _curve(rec["history"], "lm_loss") == pytest.approx(_curve(ref["history"], "lm_loss"), rel=1e-6)
