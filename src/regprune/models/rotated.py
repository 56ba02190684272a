"""Checkpoints whose blocks carry residual "shortcut" matrices (SliceGPT with per-block rotations).

SliceGPT rotates the residual stream into a different PCA basis before each attention and each MLP.
The residual connection then has to change basis too: h = x·S + f(x) instead of h = x + f(x), with one
d'×d' matrix S per residual connection (two per block). No standard architecture has these, so a model
with them is saved under its own model type, e.g. `regprune_slicegpt_llama`: the base architecture's
config plus nothing else (the shortcut shapes follow from hidden_size), and the base model class with
two `nn.Linear(d', d', bias=False)` per block. Importing regprune registers these types with the
transformers Auto classes, so `AutoModelForCausalLM.from_pretrained(dir)` works after `import regprune`.

Cost: 2·L·d'² extra parameters and the same number of extra multiply-adds per token.
"""
from __future__ import annotations

import types

from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

PREFIX = "regprune_slicegpt_"
BASES = ("llama", "mistral", "qwen2", "qwen3", "phi3")
_CLASSES: dict[str, tuple[type, type]] = {}


def _shortcut_forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_values=None,
                      use_cache=False, position_embeddings=None, **kwargs):
    # The base decoder layer's forward (pre-norm attention, then pre-norm MLP) with each residual
    # connection passed through its shortcut matrix. Phi-3's residual dropouts are identity in eval.
    h = self.input_layernorm(hidden_states)
    h, _ = self.self_attn(hidden_states=h, attention_mask=attention_mask, position_ids=position_ids,
                          past_key_values=past_key_values, use_cache=use_cache,
                          position_embeddings=position_embeddings, **kwargs)
    drop = getattr(self, "resid_attn_dropout", None)
    h = self.attn_shortcut(hidden_states) + (drop(h) if drop is not None else h)
    m = self.mlp(self.post_attention_layernorm(h))
    drop = getattr(self, "resid_mlp_dropout", None)
    return self.mlp_shortcut(h) + (drop(m) if drop is not None else m)


def add_shortcuts(model: nn.Module) -> None:
    """Give every block of a llama-like model identity-initialized shortcut matrices."""
    d = model.config.hidden_size
    p = next(model.parameters())
    for layer in model.model.layers:
        for name in ("attn_shortcut", "mlp_shortcut"):
            lin = nn.Linear(d, d, bias=False, device=p.device, dtype=p.dtype)
            nn.init.eye_(lin.weight)
            setattr(layer, name, lin)
        layer.forward = types.MethodType(_shortcut_forward, layer)


def _make(base: str) -> tuple[type, type]:
    base_cfg = type(AutoConfig.for_model(base))
    base_model = AutoModelForCausalLM._model_mapping[base_cfg]
    model_type = PREFIX + base
    cfg_cls = type(f"SliceGPT{base_cfg.__name__}", (base_cfg,), {"model_type": model_type})

    def __init__(self, config):
        base_model.__init__(self, config)
        add_shortcuts(self)

    model_cls = type(f"SliceGPT{base_model.__name__}", (base_model,), {"config_class": cfg_cls, "__init__": __init__})
    return cfg_cls, model_cls


def register_all() -> None:
    for base in BASES:
        if base in _CLASSES:
            continue
        cfg_cls, model_cls = _make(base)
        AutoConfig.register(cfg_cls.model_type, cfg_cls, exist_ok=True)
        AutoModelForCausalLM.register(cfg_cls, model_cls, exist_ok=True)
        _CLASSES[base] = (cfg_cls, model_cls)


def shortcut_classes(base: str) -> tuple[type, type]:
    register_all()
    if base not in _CLASSES:
        raise ValueError(f"no shortcut model type for {base!r}; supported: {', '.join(BASES)}")
    return _CLASSES[base]


def base_model_type(model_type: str) -> str:
    return model_type[len(PREFIX):] if model_type.startswith(PREFIX) else model_type
