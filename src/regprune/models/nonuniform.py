"""Model types whose layers have different numbers of heads and FFN channels (Compresso's non-uniform output).

`LlamaConfig` and its relatives have one `num_attention_heads`, `num_key_value_heads` and
`intermediate_size` for all layers. The types here add the per-layer lists `layer_num_heads`,
`layer_num_kv_heads` and `layer_intermediate_sizes` and build each decoder layer with its own sizes; the
rest of the model is the base architecture's code. They are registered with `AutoConfig` and
`AutoModelForCausalLM` when regprune is imported, so after `import regprune`,
`AutoModelForCausalLM.from_pretrained(dir)` loads a saved non-uniform model and generates with the
(dynamic) KV cache. The base config fields hold the largest per-layer value; caches that preallocate
one size for every layer (static caches) are not supported.
"""
from __future__ import annotations

import copy
from types import SimpleNamespace

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from ..arch.registry import get_arch, register_arch
from ..errors import RegpruneError

PER_LAYER_FIELDS = ("layer_num_heads", "layer_num_kv_heads", "layer_intermediate_sizes")


def _bases() -> dict:
    from transformers.models.llama import modeling_llama as llama
    from transformers.models.mistral import modeling_mistral as mistral
    from transformers.models.qwen2 import modeling_qwen2 as qwen2
    from transformers.models.qwen3 import modeling_qwen3 as qwen3

    return {
        "llama": (llama.LlamaConfig, llama.LlamaModel, llama.LlamaForCausalLM, llama.LlamaDecoderLayer),
        "mistral": (mistral.MistralConfig, mistral.MistralModel, mistral.MistralForCausalLM,
                    mistral.MistralDecoderLayer),
        "qwen2": (qwen2.Qwen2Config, qwen2.Qwen2Model, qwen2.Qwen2ForCausalLM, qwen2.Qwen2DecoderLayer),
        "qwen3": (qwen3.Qwen3Config, qwen3.Qwen3Model, qwen3.Qwen3ForCausalLM, qwen3.Qwen3DecoderLayer),
    }


def nonuniform_type(base_type: str) -> str:
    return f"regprune_{base_type}_nonuniform"


def _layer_config(config, i: int):
    # A shallow copy is enough: the layer constructors only read sizes from it.
    lc = copy.copy(config)
    if config.layer_num_heads is not None:  # without the lists every layer has the base sizes
        lc.num_attention_heads = config.layer_num_heads[i]
        lc.num_key_value_heads = config.layer_num_kv_heads[i]
        lc.intermediate_size = config.layer_intermediate_sizes[i]
    return lc


def _make_classes(base_type: str, cfg_cls, model_cls, lm_cls, layer_cls):
    prefix = f"Regprune{lm_cls.__name__.removesuffix('ForCausalLM')}Nonuniform"

    def validate_architecture(self):
        n = self.num_hidden_layers
        lists = [getattr(self, f) for f in PER_LAYER_FIELDS]
        if all(v is None for v in lists):  # a bare config (transformers builds one for its defaults)
            return
        if any(v is None or len(v) != n for v in lists):
            raise ValueError(f"{self.model_type} needs {', '.join(PER_LAYER_FIELDS)} with one entry per layer ({n})")
        for i, (h, kv, f) in enumerate(zip(*lists)):
            if kv < 1 or h < kv or h % kv or f < 0:
                raise ValueError(f"layer {i}: invalid sizes heads={h}, kv_heads={kv}, intermediate={f}")

    config_cls = strict(type(f"{prefix}Config", (cfg_cls,), {
        "__module__": __name__,
        "__annotations__": {f: list[int] | None for f in PER_LAYER_FIELDS},
        **{f: None for f in PER_LAYER_FIELDS},
        "model_type": nonuniform_type(base_type),
        "validate_architecture": validate_architecture,
    }))

    def model_init(self, config):
        model_cls.__init__(self, config)
        layers = []
        for i in range(config.num_hidden_layers):
            layer = layer_cls(_layer_config(config, i), i)
            # Attention reads the attention implementation from its config at run time: the model's.
            layer.self_attn.config = config
            layers.append(layer)
        self.layers = nn.ModuleList(layers)

    base = type(f"{prefix}Model", (model_cls,), {"__module__": __name__, "config_class": config_cls,
                                                  "__init__": model_init})

    def lm_init(self, config):
        lm_cls.__init__(self, config)
        self.model = base(config)

    lm = type(f"{prefix}ForCausalLM", (lm_cls,), {"__module__": __name__, "config_class": config_cls,
                                                   "__init__": lm_init})
    return config_cls, base, lm


NONUNIFORM: dict[str, tuple] = {}  # base model_type -> (config class, base model class, causal-LM class)

for _t, _classes in _bases().items():
    NONUNIFORM[_t] = _make_classes(_t, *_classes)
    _cfg, _base, _lm = NONUNIFORM[_t]
    globals().update({_cfg.__name__: _cfg, _base.__name__: _base, _lm.__name__: _lm})
    AutoConfig.register(_cfg.model_type, _cfg, exist_ok=True)
    AutoModel.register(_cfg, _base, exist_ok=True)
    AutoModelForCausalLM.register(_cfg, _lm, exist_ok=True)
    # Hidden-channel slicing (DReSS) works on these too: the same modules as the base architecture.
    _spec = get_arch(SimpleNamespace(model_type=_t))
    register_arch(type(_spec)(**{**_spec.__dict__, "model_types": (_cfg.model_type,)}))


def to_nonuniform(model) -> nn.Module:
    """The same weights in the non-uniform type of `model`'s architecture, with per-layer sizes read
    from the modules (after heads / FFN channels were cut out of them). No weights are copied."""
    config = model.config
    base_type = config.model_type
    if base_type not in NONUNIFORM:
        if base_type.startswith("regprune_"):
            base_type = base_type.removeprefix("regprune_").removesuffix("_nonuniform")
        else:
            raise RegpruneError(f"no non-uniform model type for {base_type!r}; supported: {', '.join(NONUNIFORM)}")
    config_cls, _, lm_cls = NONUNIFORM[base_type]
    spec = get_arch(model)
    q, k, _, _ = spec.attention
    up = spec.ffn[1]
    head_dim = config.head_dim
    heads, kv_heads, ffn = [], [], []
    for block in model.get_submodule(spec.layers):
        heads.append(block.get_submodule(q).out_features // head_dim)
        kv_heads.append(block.get_submodule(k).out_features // head_dim)
        ffn.append(block.get_submodule(up).out_features)
    fields = {k: v for k, v in config.to_dict().items()
              if k not in ("model_type", "architectures", "transformers_version", *PER_LAYER_FIELDS)}
    fields.update(num_attention_heads=max(heads), num_key_value_heads=max(kv_heads), intermediate_size=max(ffn),
                  layer_num_heads=heads, layer_num_kv_heads=kv_heads, layer_intermediate_sizes=ffn)
    new_config = config_cls(**fields)
    new_config._attn_implementation = config._attn_implementation
    with torch.device("meta"):
        new = lm_cls(new_config)
    new.load_state_dict(model.state_dict(), strict=True, assign=True)
    # Buffers that are not saved (rotary frequencies) are taken over from the source model.
    for name, buf in model.named_buffers():
        mod, _, attr = name.rpartition(".")
        new.get_submodule(mod)._buffers[attr] = buf
    if getattr(new_config, "tie_word_embeddings", False):
        new.get_output_embeddings().weight = new.get_input_embeddings().weight
    new.generation_config = copy.deepcopy(model.generation_config)
    new.train(model.training)
    return new
