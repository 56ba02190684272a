"""Physically remove hidden (residual-stream) channels from every weight of a model."""
from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
from torch import nn

from ..arch import get_arch, hidden_channel_slices
from ..arch import head_dim as arch_head_dim


def kept_channels(hidden_size: int, removed: Sequence[int]) -> list[int]:
    removed_set = set(int(i) for i in removed)
    bad = [i for i in removed_set if not 0 <= i < hidden_size]
    if bad:
        raise ValueError(f"channel indices out of range [0, {hidden_size}): {sorted(bad)[:5]}")
    return [i for i in range(hidden_size) if i not in removed_set]


@torch.no_grad()
def mask_hidden_channels(model: nn.Module, removed: Sequence[int]) -> nn.Module:
    """Zero every slice of the given channels in place (the 'masked full model' of the tests)."""
    idx = torch.as_tensor(sorted(set(int(i) for i in removed)), dtype=torch.long)
    for s in hidden_channel_slices(model):
        s.param.data.index_fill_(s.dim, idx.to(s.param.device), 0.0)
    return model


@torch.no_grad()
def slice_hidden_channels(model: nn.Module, removed: Sequence[int], *, inplace: bool = False) -> nn.Module:
    """Return the model with the `removed` hidden channels cut out of every tensor.

    The result is the same architecture with a smaller `hidden_size` and an explicit `head_dim`, so
    it saves and reloads as a standard checkpoint. RMSNorm weights are scaled by sqrt(d/d'): if the
    removed channels of the residual stream are zero, the sliced model computes the same function
    (the norm epsilon is scaled by d/d' too). Tied input/output embeddings stay tied.
    """
    spec = get_arch(model)
    if not inplace:
        model = copy.deepcopy(model)
    config = model.config
    fields = spec.config
    d = getattr(config, fields.hidden)
    keep = kept_channels(d, removed)
    d_new = len(keep)
    if d_new == d:
        return model
    if d_new == 0:
        raise ValueError("cannot remove every hidden channel")
    head_dim = arch_head_dim(config)
    tied = model.get_output_embeddings() is not None and (
        model.get_output_embeddings().weight is model.get_input_embeddings().weight
    )
    keep_t = torch.as_tensor(keep, dtype=torch.long)
    norm_scale = math.sqrt(d / d_new)
    for s in hidden_channel_slices(model, spec):
        old = s.param
        new = old.data.index_select(s.dim, keep_t.to(old.device)).clone()
        if s.role == "norm" and s.attr == "weight" and spec.norm_kind == "rms":
            new.mul_(norm_scale)
        setattr(s.module, s.attr, nn.Parameter(new, requires_grad=old.requires_grad))
        _fix_module_sizes(s.module, s.dim, d_new)
    if tied:
        model.get_output_embeddings().weight = model.get_input_embeddings().weight
    setattr(config, fields.head_dim, head_dim)
    if spec.norm_kind == "rms" and spec.eps_attr and getattr(config, spec.eps_attr, None) is not None:
        old_eps = getattr(config, spec.eps_attr)
        setattr(config, spec.eps_attr, old_eps * d / d_new)
        # Every norm built from the config value gets the new one, so the model in memory equals a reload.
        for module in model.modules():
            if getattr(module, "variance_epsilon", None) == old_eps:
                module.variance_epsilon = old_eps * d / d_new
    setattr(config, fields.hidden, d_new)
    return model


def _fix_module_sizes(module: nn.Module, dim: int, size: int) -> None:
    # Keep the modules' own bookkeeping true so that repr() and code reading these attributes agree.
    if isinstance(module, nn.Linear):
        if dim == 1:
            module.in_features = size
        else:
            module.out_features = size
    elif isinstance(module, nn.Embedding):
        module.embedding_dim = size
    elif hasattr(module, "hidden_size") and isinstance(module.hidden_size, int):
        module.hidden_size = size
