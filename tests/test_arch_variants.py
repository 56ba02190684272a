"""Issue 14, item 4: Llama 3.x rope scaling and Qwen2.5-style q/k/v biases, through slicing and DReSS."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

import regprune
from regprune.surgery import mask_hidden_channels, slice_hidden_channels

from conftest import tiny_model

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
VARIANTS = {
    # Llama 3.1/3.2/3.3 configs: llama3 rope scaling (frequencies rescaled beyond the original context)
    "llama3.x": dict(model_type="llama", rope_scaling=LLAMA3_ROPE, rope_theta=500000.0),
    # Qwen2.5: biases on q, k and v (not on o), untied head
    "qwen2.5": dict(model_type="qwen2", tie_word_embeddings=False),
}
REMOVED = list(range(0, 64, 4))


def _model(name):
    kw = dict(VARIANTS[name])
    return tiny_model(kw.pop("model_type"), **kw)


def test_the_variants_are_what_they_claim():
    llama = _model("llama3.x")
    rope = getattr(llama.config, "rope_scaling", None) or getattr(llama.config, "rope_parameters", {})
    assert rope.get("rope_type") == "llama3"
    attn = _model("qwen2.5").model.layers[0].self_attn
    assert attn.q_proj.bias is not None and attn.k_proj.bias is not None and attn.v_proj.bias is not None
    assert attn.o_proj.bias is None


@pytest.mark.parametrize("name", list(VARIANTS))
def test_masked_equals_sliced_reload_and_cache(name, tmp_path):
    masked = mask_hidden_channels(_model(name), REMOVED)
    sliced = slice_hidden_channels(masked, REMOVED)
    x = torch.randint(0, 320, (2, 120), generator=torch.Generator().manual_seed(0))  # past the original 64
    with torch.no_grad():
        a, b = masked(x).logits, sliced(x).logits
    assert a.abs().max() > 1.0
    torch.testing.assert_close(b, a, atol=2e-5, rtol=1e-5)
    sliced.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(x).logits, b)
    prompt = x[:1, :70]
    with_cache = reloaded.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0, use_cache=True)
    without = reloaded.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0, use_cache=False)
    assert torch.equal(with_cache, without)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_dress_end_to_end(name, tmp_path, tokenizer, corpus_dir):
    d = tmp_path / "in"
    model = _model(name)
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(d)
    tokenizer.save_pretrained(d)
    res = regprune.prune(str(d), method="dress", steps=2, batch_size=2, num_samples=8, seq_len=32,
                         data_dir=corpus_dir, objective="lm")
    out = res.save(tmp_path / "out")
    back = AutoModelForCausalLM.from_pretrained(out)
    assert back.config.hidden_size == 48
    rope = getattr(back.config, "rope_scaling", None) or getattr(back.config, "rope_parameters", None)
    if name == "llama3.x":
        assert rope["rope_type"] == "llama3" and rope["factor"] == 8.0
