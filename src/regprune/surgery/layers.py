"""Remove whole transformer blocks, and run a model's blocks one by one (used by SLEB, ShortGPT, TRSP).

A model with blocks removed is the same architecture with a smaller `num_hidden_layers`: it saves and
reloads as a standard checkpoint. What has to stay consistent, and is fixed here:

- `config.num_hidden_layers`, and per-layer lists in the config (`layer_types`, which the KV cache and
  the sliding-window masks read; `no_rope_layers`), filtered to the kept blocks;
- layer *indices* in the config (`max_window_layers`, `mlp_only_layers`), renumbered;
- every `layer_idx` attribute inside the kept blocks (attention modules use it to find their slot in the
  KV cache), renumbered 0..n-1, so generation with a cache works after removal.
"""
from __future__ import annotations

import contextlib
import copy
import logging
from typing import Sequence

import torch
from torch import nn

from ..arch import config_fields, get_arch

log = logging.getLogger(__name__)



def get_layers(model: nn.Module) -> nn.ModuleList:
    return model.get_submodule(get_arch(model).layers)


def _set_layers(model: nn.Module, layers: nn.ModuleList) -> None:
    parent_path, _, attr = get_arch(model).layers.rpartition(".")
    setattr(model.get_submodule(parent_path) if parent_path else model, attr, layers)


def check_layer_indices(n_layers: int, removed: Sequence[int]) -> list[int]:
    removed = sorted(set(int(i) for i in removed))
    bad = [i for i in removed if not 0 <= i < n_layers]
    if bad:
        raise ValueError(f"layer indices out of range [0, {n_layers}): {bad}")
    if len(removed) >= n_layers:
        raise ValueError(f"cannot remove all {n_layers} layers; keep at least one")
    return removed


def _config_updates(config, n_old: int, keep: list[int]) -> dict:
    """The config attributes to change when only the blocks `keep` (sorted) remain."""
    fields = config_fields(config)  # which config entries are per layer: the registry says
    new_index = {old: new for new, old in enumerate(keep)}
    updates = {fields.layers: len(keep)}
    for name in fields.per_layer_lists:  # one entry per layer: keep the kept layers'
        v = getattr(config, name, None)
        if isinstance(v, (list, tuple)) and len(v) == n_old:
            updates[name] = [v[i] for i in keep]
    for name in fields.layer_index_lists:  # layer indices: renumbered, removed layers dropped
        v = getattr(config, name, None)
        if isinstance(v, (list, tuple)):
            updates[name] = [new_index[i] for i in v if i in new_index]
    mwl = getattr(config, fields.max_window_layers, None) if fields.max_window_layers else None
    if isinstance(mwl, int):  # layers with index >= max_window_layers use sliding windows (Qwen2)
        updates[fields.max_window_layers] = sum(1 for i in keep if i < mwl)
    return updates


def _renumber(layers: nn.ModuleList) -> None:
    for new, block in enumerate(layers):
        for m in block.modules():
            if hasattr(m, "layer_idx"):
                m.layer_idx = new


@torch.no_grad()
def remove_layers(model: nn.Module, removed: Sequence[int], *, inplace: bool = False) -> nn.Module:
    """Return the model without the blocks `removed` (indices into the current block list)."""
    if not inplace:
        model = copy.deepcopy(model)
    layers = get_layers(model)
    n = len(layers)
    removed = check_layer_indices(n, removed)
    keep = [i for i in range(n) if i not in set(removed)]
    for k, v in _config_updates(model.config, n, keep).items():
        setattr(model.config, k, v)
    new_layers = nn.ModuleList([layers[i] for i in keep])
    _renumber(new_layers)
    _set_layers(model, new_layers)
    log.info("removed %d of %d blocks: %s", len(removed), n, removed)
    return model


@contextlib.contextmanager
def layers_skipped(model: nn.Module, removed: Sequence[int]):
    """Run the model as if the blocks `removed` were gone, without copying it (no KV cache inside).

    Only for forward passes without a cache: `layer_idx` values are left alone.
    """
    layers = get_layers(model)
    n = len(layers)
    removed = check_layer_indices(n, removed)
    keep = [i for i in range(n) if i not in set(removed)]
    updates = _config_updates(model.config, n, keep)
    saved = {k: getattr(model.config, k) for k in updates}
    try:
        for k, v in updates.items():
            setattr(model.config, k, v)
        _set_layers(model, nn.ModuleList([layers[i] for i in keep]))
        yield model
    finally:
        for k, v in saved.items():
            setattr(model.config, k, v)
        _set_layers(model, layers)


class BlockTrace:
    """One forward pass recorded per block: each block's input hidden state and call arguments.

    With the trace, any suffix of blocks can be run again from a recorded input (SLEB scores every
    candidate block this way at half the cost of full forwards), and block outputs give ShortGPT's
    Block Influence. `outputs[i]` is block i's output (the input of block i + 1, before the final norm).
    """

    def __init__(self, model: nn.Module, input_ids: torch.Tensor):
        self.model = model
        self.layers = get_layers(model)
        self.inputs: list[torch.Tensor] = [None] * len(self.layers)
        self.kwargs: list[dict] = [None] * len(self.layers)
        self.outputs: list[torch.Tensor] = [None] * len(self.layers)
        hooks = []
        for i, block in enumerate(self.layers):
            hooks.append(block.register_forward_pre_hook(self._pre(i), with_kwargs=True))
            hooks.append(block.register_forward_hook(self._post(i)))
        try:
            with torch.no_grad():
                model(input_ids=input_ids, use_cache=False)
        finally:
            for h in hooks:
                h.remove()

    def _pre(self, i):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            self.inputs[i] = hidden.detach()
            self.kwargs[i] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        return hook

    def _post(self, i):
        def hook(module, args, out):
            self.outputs[i] = (out[0] if isinstance(out, tuple) else out).detach()
        return hook

    @torch.no_grad()
    def run_from(self, hidden: torch.Tensor, start: int, skip: Sequence[int] = ()) -> torch.Tensor:
        """Hidden state after the last block, starting with `hidden` as the input of block `start`."""
        skip = set(skip)
        for j in range(start, len(self.layers)):
            if j in skip:
                continue
            out = self.layers[j](hidden, **self.kwargs[j])
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden


def head_nll(model: nn.Module, hidden: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL from a last-block hidden state (final norm, LM head), and the token count."""
    spec = get_arch(model)
    logits = model.get_submodule(spec.lm_head)(model.get_submodule(spec.final_norm)(hidden)).float()
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)),
                                             input_ids[:, 1:].reshape(-1).to(logits.device), reduction="sum")
