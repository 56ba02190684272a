"""`regprune plan` (issue 13): memory per phase from the config alone, checked against measurements."""
from __future__ import annotations

import copy
import pytest
import torch

from regprune.errors import RegpruneError
from regprune.plan import plan, saved_activation_bytes

from conftest import tiny_config


def _real_saved_bytes(config, n_layers: int, batch: int, seq_len: int, wrap=None) -> int:
    from transformers import AutoModelForCausalLM

    from regprune.train.objective import final_hidden

    c = copy.deepcopy(config)
    c.num_hidden_layers = n_layers
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(c).train()
    if wrap is not None:
        model = wrap(model)
    seen = {}

    def pack(t):
        s = t.untyped_storage()
        seen[(s.data_ptr(), s.nbytes())] = s.nbytes()
        return t

    ids = torch.randint(3, c.vocab_size, (batch, seq_len))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        final_hidden(model, ids)
    return sum(seen.values())


@pytest.mark.parametrize("model_type,wrap", [("llama", None), ("qwen2", None), ("mistral", None), ("llama", "lora"),
                                             ("llama", "compresso")])
def test_activation_bytes_on_meta_match_a_real_cpu_forward(model_type, wrap):
    """The meta-device measurement of what autograd keeps per block is within 15% of a real CPU forward
    (whose attention is a fused kernel: no L x L matrix kept), also with LoRA and Compresso's masks."""
    from regprune.plan import _with_compresso, _with_lora

    w = {None: None, "lora": _with_lora(8, 16.0), "compresso": _with_compresso}[wrap]
    config = tiny_config(model_type)
    config.hidden_size, config.intermediate_size, config.num_attention_heads = 256, 512, 8
    config.num_key_value_heads = 4 if model_type != "llama" else 8
    config.head_dim = 32
    real = _real_saved_bytes(config, 2, 2, 128, w) - _real_saved_bytes(config, 1, 2, 128, w)
    est, _ = saved_activation_bytes(config, 2, 128, wrap=w)
    assert est == pytest.approx(real, rel=0.15), (est, real)


def test_checkpointing_and_bf16_shrink_the_activations(tiny_model_dir):
    """Gradient checkpointing keeps only each block's input (plus one block while it is recomputed); bf16
    about halves what is kept (the norms' statistics stay fp32). (A tiny run's peak resident memory is the libraries' and varies by more than 15%
    between runs of the same command, so the plan is checked against measured peaks on SmolLM2 instead:
    bench/results/plan_smollm2.md.)"""
    acts = lambda p: next(v for ph in p["phases"] for k, v in ph["parts"].items() if k.startswith("activations"))
    base = plan(str(tiny_model_dir), "dress", device="cpu", mixed_precision="no", seq_len=64)
    ckpt = plan(str(tiny_model_dir), "dress", device="cpu", mixed_precision="no", seq_len=64,
                gradient_checkpointing=True)
    bf16 = plan(str(tiny_model_dir), "dress", device="cpu", mixed_precision="bf16", seq_len=64)
    assert acts(ckpt) < acts(base) and acts(base) / 2 <= acts(bf16) < 0.7 * acts(base)  # norms stay fp32


def test_plan_phases_sharding_and_refusals(tiny_model_dir, capsys):
    from regprune.cli import main

    one = plan(str(tiny_model_dir), "dress", device="cuda", dtype="bfloat16")
    two = plan(str(tiny_model_dir), "dress", processes=2, device="cuda", dtype="bfloat16")
    from transformers import AutoModelForCausalLM

    assert one["parameters"] == sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_model_dir).parameters())
    names = [ph["name"] for ph in two["phases"]]
    assert names[:2] == ["calibration data (tokenizing the text)", "load"] and any(n.startswith("before sharding") for n in names)
    opt = lambda p: next(v for ph in p["phases"] for k, v in ph["parts"].items() if k.startswith("gradients + AdamW"))
    assert opt(two) == opt(one) // 2  # sharded over the two processes
    lora = plan(str(tiny_model_dir), "sleb", recover=True, device="cuda")
    assert [ph["name"] for ph in lora["phases"]][-2] == "recovery (LoRA)"
    assert main(["plan", str(tiny_model_dir), "--device-memory", "0.001"]) == 1
    assert "Does NOT fit" in capsys.readouterr().out
    assert main(["plan", str(tiny_model_dir), "--device-memory", "64"]) == 0
    with pytest.raises(RegpruneError, match="must be a multiple of the number of processes"):
        plan(str(tiny_model_dir), "dress", processes=3, batch_size=4)
    assert main(["plan", "no/such/model"]) == 2
