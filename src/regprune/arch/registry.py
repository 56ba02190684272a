"""Where the hidden (residual-stream) channels live, per architecture.

This is the one place that knows module names. Everything that slices, regularizes or scores hidden
channels asks `hidden_channel_slices(model)` for the list of tensors and the axis along which the
hidden channels run, and never looks at module names itself.

Terms: a *reader* is a Linear whose input is the hidden state (its weight columns belong to hidden
channels); a *writer* is a Linear whose output is added to the residual stream (its weight rows, and
bias entries, belong to hidden channels). Norms have one element per hidden channel.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import UnsupportedArchitecture


@dataclass(frozen=True)
class ConfigFields:
    """Where an architecture's config keeps the sizes regprune changes when it prunes."""

    hidden: str = "hidden_size"
    heads: str = "num_attention_heads"
    kv_heads: str = "num_key_value_heads"
    ffn: str = "intermediate_size"
    layers: str = "num_hidden_layers"
    head_dim: str = "head_dim"
    # lists with one entry per layer (filtered to the kept layers when blocks are removed)
    per_layer_lists: tuple[str, ...] = ("layer_types", "no_rope_layers")
    # lists of layer indices (renumbered when blocks are removed)
    layer_index_lists: tuple[str, ...] = ("mlp_only_layers",)
    # the per-layer attention kinds ("full_attention", "sliding_attention")
    layer_kinds: str | None = "layer_types"
    # layers with an index >= this use sliding windows (Qwen2); renumbered when blocks are removed
    max_window_layers: str | None = "max_window_layers"


@dataclass(frozen=True)
class ArchSpec:
    model_types: tuple[str, ...]
    layers: str = "model.layers"
    embeddings: tuple[str, ...] = ("model.embed_tokens",)
    final_norm: str = "model.norm"
    lm_head: str = "lm_head"
    layer_norms: tuple[str, ...] = ("input_layernorm", "post_attention_layernorm")
    readers: tuple[str, ...] = (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj",
    )
    writers: tuple[str, ...] = ("self_attn.o_proj", "mlp.down_proj")
    # Separate q, k, v, o projections and gate, up, down of a gated FFN, for pruning heads and FFN
    # channels (Compresso); None where they are fused into one Linear.
    attention: tuple[str, str, str, str] | None = (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
    ffn: tuple[str, str, str] | None = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
    # "rms": y = w * x / rms(x). Slicing d -> d' channels that are zero multiplies rms by sqrt(d'/d),
    # so the kept norm weights are scaled by sqrt(d/d') to keep the function exact.
    norm_kind: str = "rms"
    # With RMSNorm, eps' = eps * d/d' makes slicing exact including epsilon. Norms over other axes that
    # read the same config value (Qwen3's q_norm/k_norm over head_dim) see a slightly larger eps.
    eps_attr: str | None = "rms_norm_eps"
    config: ConfigFields = field(default_factory=ConfigFields)
    notes: str = ""

    @property
    def linear_names(self) -> tuple[str, ...]:
        """Leaf names of every Linear in a block (LoRA targets)."""
        return tuple(n.rsplit(".", 1)[-1] for n in self.readers + self.writers)


@dataclass
class ChannelSlice:
    """One tensor whose `dim` runs over hidden channels."""

    name: str  # parameter name in model.named_parameters()
    module: nn.Module
    attr: str  # "weight" or "bias"
    dim: int
    role: str  # embedding | reader | writer | norm | lm_head
    layer: int | None = None  # block index, None for embedding / final norm / lm_head

    @property
    def param(self) -> torch.nn.Parameter:
        return getattr(self.module, self.attr)

    @property
    def matrix(self) -> str:
        """Short name for reports, e.g. 'q_proj' or 'input_layernorm'."""
        return self.name.rsplit(".", 2)[-2] if "." in self.name else self.name


_LLAMA_LIKE = ArchSpec(model_types=("llama", "mistral", "qwen2", "qwen3"),
                       notes="Qwen3's q_norm/k_norm act on head_dim, which slicing leaves unchanged.")
_PHI3 = ArchSpec(
    model_types=("phi3",),
    readers=("self_attn.qkv_proj", "mlp.gate_up_proj"),
    writers=("self_attn.o_proj", "mlp.down_proj"),
    attention=None,
    ffn=None,
    notes="fused qkv and gate_up projections: their input is the hidden state, so columns are sliced.",
)

_REGISTRY: dict[str, ArchSpec] = {}


def register_arch(spec: ArchSpec) -> None:
    for t in spec.model_types:
        _REGISTRY[t] = spec


for _spec in (_LLAMA_LIKE, _PHI3):
    register_arch(_spec)


def supported_model_types() -> list[str]:
    return sorted(_REGISTRY)


def get_arch(config_or_model) -> ArchSpec:
    config = getattr(config_or_model, "config", config_or_model)
    model_type = getattr(config, "model_type", None)
    if model_type not in _REGISTRY:
        raise UnsupportedArchitecture(
            f"model_type {model_type!r} is not supported yet. "
            f"Supported: {', '.join(supported_model_types())}. "
            "Adding one is an ArchSpec entry in regprune/arch/registry.py."
        )
    return _REGISTRY[model_type]


def config_fields(config_or_model) -> ConfigFields:
    """The config field names of this architecture (the defaults for one the registry does not know)."""
    try:
        return get_arch(config_or_model).config
    except UnsupportedArchitecture:
        return ConfigFields()


def head_dim(config) -> int:
    """Per-head width: the config's explicit head_dim, else hidden / heads."""
    f = config_fields(config)
    return getattr(config, f.head_dim, None) or getattr(config, f.hidden) // getattr(config, f.heads)


def has_sliding_layers(config) -> bool:
    """Whether some layers attend through a sliding window (a per-layer mask)."""
    f = config_fields(config)
    return f.layer_kinds is not None and any(t == "sliding_attention" for t in (getattr(config, f.layer_kinds, None)
                                                                                 or []))


def _get(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path)


def hidden_channel_slices(model: nn.Module, spec: ArchSpec | None = None) -> list[ChannelSlice]:
    """Every parameter tensor that has a hidden-channel axis, each listed once (tied weights once)."""
    spec = spec or get_arch(model)
    names = {id(p): n for n, p in model.named_parameters()}
    seen: set[int] = set()
    out: list[ChannelSlice] = []

    def add(module: nn.Module, attr: str, dim: int, role: str, layer: int | None) -> None:
        p = getattr(module, attr, None)
        if p is None or id(p) in seen:
            return
        seen.add(id(p))
        out.append(ChannelSlice(names[id(p)], module, attr, dim, role, layer))

    for path in spec.embeddings:
        add(_get(model, path), "weight", 1, "embedding", None)
    for i, block in enumerate(_get(model, spec.layers)):
        for path in spec.layer_norms:
            norm = _get(block, path)
            add(norm, "weight", 0, "norm", i)
            add(norm, "bias", 0, "norm", i)
        for path in spec.readers:
            add(_get(block, path), "weight", 1, "reader", i)
        for path in spec.writers:
            lin = _get(block, path)
            add(lin, "weight", 0, "writer", i)
            add(lin, "bias", 0, "writer", i)
    norm = _get(model, spec.final_norm)
    add(norm, "weight", 0, "norm", None)
    add(norm, "bias", 0, "norm", None)
    add(_get(model, spec.lm_head), "weight", 1, "lm_head", None)  # skipped when tied (seen)
    return out
