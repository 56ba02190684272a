import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import ARCH_KWARGS, tiny_model
from regprune.arch import hidden_channel_slices
from regprune.errors import UnsupportedArchitecture
from regprune.surgery import mask_hidden_channels, slice_hidden_channels

ARCHS = sorted(ARCH_KWARGS)
REMOVED = list(range(0, 64, 4))  # 16 of 64 channels, spread out


@pytest.mark.parametrize("arch", ARCHS)
def test_masked_equals_sliced(arch):
    masked = mask_hidden_channels(tiny_model(arch), REMOVED)
    sliced = slice_hidden_channels(masked, REMOVED)
    x = torch.randint(0, 320, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = masked(x).logits, sliced(x).logits
    assert a.abs().max() > 1.0  # the comparison is not between near-zero outputs
    torch.testing.assert_close(b, a, atol=2e-5, rtol=1e-5)
    assert sliced.config.hidden_size == 48
    assert sliced.config.head_dim == masked.config.hidden_size // masked.config.num_attention_heads \
        or arch == "qwen3"
    assert masked.config.hidden_size == 64  # the input model is untouched


@pytest.mark.parametrize("arch", ARCHS)
def test_plain_reload_identical_and_generates(arch, tmp_path):
    sliced = slice_hidden_channels(tiny_model(arch), REMOVED)
    sliced.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    x = torch.randint(0, 320, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(reloaded(x).logits, sliced(x).logits)
    out = reloaded.generate(x[:, :5], max_new_tokens=6, do_sample=False, pad_token_id=0)
    ref = sliced.generate(x[:, :5], max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(out, ref) and out.shape == (1, 11)


def test_tied_embeddings_stay_tied_and_params_shrink():
    model = tiny_model("llama")
    assert model.config.tie_word_embeddings
    sliced = slice_hidden_channels(model, REMOVED)
    assert sliced.lm_head.weight is sliced.model.embed_tokens.weight
    assert sliced.model.embed_tokens.weight.shape == (320, 48)
    for s in hidden_channel_slices(sliced):
        assert s.param.shape[s.dim] == 48, s.name
    n = lambda m: sum(p.numel() for p in {id(p): p for p in m.parameters()}.values())  # noqa: E731
    assert n(sliced) < n(model)


def test_unsupported_architecture_lists_supported():
    from transformers import GPT2Config

    model = AutoModelForCausalLM.from_config(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(UnsupportedArchitecture, match="Supported: .*llama.*qwen3"):
        slice_hidden_channels(model, [0])


def test_bad_indices():
    with pytest.raises(ValueError, match="out of range"):
        slice_hidden_channels(tiny_model(), [64])
