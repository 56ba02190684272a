"""CUDA-only checks (skipped without a GPU): bf16 autocast training on the device, and a fused-attention
forward whose kept activations `regprune plan` measures on the meta device."""
from __future__ import annotations

import pytest
import torch

import regprune

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("method,opts", [("dress", dict(steps=2)), ("trsp", dict(steps=2, layers=1)),
                                         ("compresso", dict(steps=2, collaborative_prompt=False))])
def test_training_on_cuda_with_bf16_autocast(method, opts, tiny_model_dir, corpus_dir):
    res = regprune.prune(str(tiny_model_dir), method=method, device="cuda", num_samples=8, seq_len=32,
                         data_dir=corpus_dir, batch_size=2, **opts)
    assert next(res.model.parameters()).device.type == "cuda"
    assert all(torch.isfinite(torch.tensor(h["lm_loss"])) for h in res.record["history"])


def test_onload_scores_on_cuda_equal_cpu(tiny_model_dir, corpus_dir):
    kw = dict(method="shortgpt", layers=1, num_samples=8, seq_len=32, data_dir=corpus_dir)
    a = regprune.prune(str(tiny_model_dir), **kw)
    b = regprune.prune(str(tiny_model_dir), onload="cuda", **kw)
    assert a.record["method_details"]["removed_layers"] == b.record["method_details"]["removed_layers"]
