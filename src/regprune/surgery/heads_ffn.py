"""Physically remove attention heads (whole key-value groups) and FFN intermediate channels, per layer.

A key-value group is one k/v head and the `n_rep` query heads that share it (GQA; n_rep = 1 without
GQA): removing it takes its rows out of q, k and v (and their biases) and its columns out of o. An FFN
channel is one row of gate and up and one column of down. When every layer keeps the same numbers, the
result is the same architecture with smaller `num_key_value_heads`, `num_attention_heads` and
`intermediate_size` (a standard checkpoint); otherwise it is the architecture's non-uniform model type
(`regprune.models.nonuniform`), which `import regprune` registers with the transformers Auto classes.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

from ..arch import get_arch
from ..arch import head_dim as arch_head_dim
from ..errors import RegpruneError


def attention_ffn_modules(model: nn.Module, block: nn.Module):
    """(q, k, v, o, gate, up, down) Linears of a block; refuses architectures with fused projections."""
    spec = get_arch(model)
    if spec.attention is None or spec.ffn is None:
        raise RegpruneError(
            f"{model.config.model_type}: heads and FFN channels can only be pruned with separate q/k/v/o and "
            "gate/up/down projections; this architecture fuses them (not supported yet)")
    return tuple(block.get_submodule(n) for n in spec.attention + spec.ffn)


def layer_shapes(model: nn.Module) -> list[dict]:
    """Per layer: kv_groups, n_rep (query heads per group), head_dim, ffn (intermediate channels)."""
    head_dim = arch_head_dim(model.config)
    out = []
    for block in model.get_submodule(get_arch(model).layers):
        q, k, _, _, _, up, _ = attention_ffn_modules(model, block)
        groups = k.out_features // head_dim
        out.append({"kv_groups": groups, "n_rep": q.out_features // (groups * head_dim), "head_dim": head_dim,
                    "ffn": up.out_features})
    return out


def _select(linear: nn.Linear, dim: int, idx: torch.Tensor) -> None:
    """Keep entries `idx` of a Linear along its output (dim 0) or input (dim 1) axis."""
    idx = idx.to(linear.weight.device)
    linear.weight = nn.Parameter(linear.weight.data.index_select(dim, idx).clone(),
                                 requires_grad=linear.weight.requires_grad)
    if dim == 0:
        if linear.bias is not None:
            linear.bias = nn.Parameter(linear.bias.data.index_select(0, idx).clone(),
                                       requires_grad=linear.bias.requires_grad)
        linear.out_features = len(idx)
    else:
        linear.in_features = len(idx)


def _units(kept: Sequence[int], size: int) -> torch.Tensor:
    return torch.cat([torch.arange(g * size, (g + 1) * size) for g in kept]) if len(kept) else \
        torch.empty(0, dtype=torch.long)


def _check(kept: Sequence[int], n: int, what: str, layer: int, minimum: int) -> list[int]:
    kept = sorted(set(int(i) for i in kept))
    if any(not 0 <= i < n for i in kept):
        raise ValueError(f"layer {layer}: {what} indices out of range [0, {n})")
    if len(kept) < minimum:
        raise ValueError(f"layer {layer}: keep at least {minimum} {what} (got {len(kept)})")
    return kept


@torch.no_grad()
def prune_heads_and_ffn(model: nn.Module, kept_groups: Sequence[Sequence[int]],
                        kept_ffn: Sequence[Sequence[int]], *, inplace: bool = False) -> nn.Module:
    """Keep, in layer i, the key-value groups `kept_groups[i]` and FFN channels `kept_ffn[i]`.

    Every layer keeps at least one key-value group (the KV cache has an entry for every layer) and at
    least one FFN channel. Returns a standard model when all layers keep the same numbers, else the
    non-uniform model type (its weights are those of `model`)."""
    shapes = layer_shapes(model)
    layers = model.get_submodule(get_arch(model).layers)
    if len(kept_groups) != len(layers) or len(kept_ffn) != len(layers):
        raise ValueError(f"give kept groups and FFN channels for each of the {len(layers)} layers")
    if not inplace:
        model = copy.deepcopy(model)
        layers = model.get_submodule(get_arch(model).layers)
    for i, (block, shape) in enumerate(zip(layers, shapes)):
        groups = _check(kept_groups[i], shape["kv_groups"], "key-value groups", i, 1)
        ffn = _check(kept_ffn[i], shape["ffn"], "FFN channels", i, 1)
        q, k, v, o, gate, up, down = attention_ffn_modules(model, block)
        hd, n_rep = shape["head_dim"], shape["n_rep"]
        q_idx, kv_idx = _units(groups, n_rep * hd), _units(groups, hd)
        _select(q, 0, q_idx)
        _select(k, 0, kv_idx)
        _select(v, 0, kv_idx)
        _select(o, 1, q_idx)
        ffn_idx = torch.as_tensor(ffn, dtype=torch.long)
        _select(gate, 0, ffn_idx)
        _select(up, 0, ffn_idx)
        _select(down, 1, ffn_idx)
        mlp = block.get_submodule(get_arch(model).ffn[2].rpartition(".")[0])
        if isinstance(getattr(mlp, "intermediate_size", None), int):
            mlp.intermediate_size = len(ffn)
    counts = {(len(set(g)), len(set(f))) for g, f in zip(kept_groups, kept_ffn)}
    config = model.config
    fields = get_arch(model).config
    setattr(config, fields.head_dim, shapes[0]["head_dim"])
    if len(counts) == 1:
        (g, f), = counts
        setattr(config, fields.kv_heads, g)
        setattr(config, fields.heads, g * shapes[0]["n_rep"])
        setattr(config, fields.ffn, f)
        return model
    from ..models.nonuniform import to_nonuniform

    return to_nonuniform(model)
