"""Layer-by-layer onloading for the parts of a run that only need forward passes.

A model that does not fit on the device can still be scored: its weights stay in host memory, and
`SequentialForward` moves onto the device only what one step needs.

1. The parts outside the blocks (embeddings, rotary tables, final norm, LM head) go to the device, and the
   calibration batches run until the first block. There a hook records each batch's hidden state and the
   block's call arguments (position embeddings, masks), then stops the forward pass.
2. One block at a time goes to the device. Every batch runs through it, the method's callback sees the
   block's input and output, the outputs (kept in host memory) become the next block's inputs, and the
   block goes back to the host.

The peak device memory is the non-block parts plus one block plus one batch's activations. The hidden
states of every calibration window ([windows, L, d]) are held in host memory. The scores are the same as
those of whole-model forwards (tested: Block Influence, activation energies and identity gaps, on models
whose blocks take no per-layer mask, i.e. without sliding-window attention). This is the data flow of
llm-compressor's sequential pipeline, written for regprune's scoring callbacks.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Callable

import torch
from torch import nn

from ..arch import get_arch, has_sliding_layers
from ..surgery.layers import get_layers

log = logging.getLogger(__name__)


class _Stop(Exception):
    pass


def _to(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to(o, device) for o in obj)
    if isinstance(obj, list):
        return [_to(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


class SequentialForward:
    """Forward passes of `model` (on the host) over `batches`, one block at a time on `device`."""

    def __init__(self, model: nn.Module, device: str | torch.device):
        self.model, self.device = model, torch.device(device)
        self.layers = get_layers(model)
        if has_sliding_layers(model.config):
            raise NotImplementedError("layer-by-layer scoring does not handle per-layer sliding-window masks yet: "
                                      "score this model whole (without onloading)")
        self._in_blocks = {id(t) for b in self.layers for t in [*b.parameters(), *b.buffers()]}

    def _move_outside(self, device) -> None:
        """Move the parameters and buffers outside the blocks (tied ones once, identities kept)."""
        seen = set()
        for m in self.model.modules():
            for p in m._parameters.values():
                if p is not None and id(p) not in self._in_blocks and id(p) not in seen:
                    seen.add(id(p))
                    p.data = p.data.to(device)
            for name, b in list(m._buffers.items()):
                if b is not None and id(b) not in self._in_blocks:
                    m._buffers[name] = b.to(device)

    @contextlib.contextmanager
    def _onloaded(self):
        """Eval mode with the parts outside the blocks on the device; yields the host device, and puts
        everything back afterwards."""
        was_training = self.model.training
        self.model.eval()
        host = next(self.layers[0].parameters()).device
        self._move_outside(self.device)
        try:
            yield host
        finally:
            self._move_outside(host)
            self.model.train(was_training)

    def _capture(self, batches: list[torch.Tensor], host) -> tuple[list, list]:
        """Each batch's hidden state at the first block's input and that block's call arguments (host)."""
        hidden, kwargs = [], []

        def catch(module, args, kw):
            h = args[0] if args else kw.pop("hidden_states")
            hidden.append(h.to(host))
            kwargs.append(_to({k: v for k, v in kw.items() if k != "hidden_states"}, host))
            raise _Stop

        handle = self.layers[0].register_forward_pre_hook(catch, with_kwargs=True)
        try:
            for b in batches:
                try:
                    self.model(input_ids=b.to(self.device), use_cache=False)
                except _Stop:
                    pass
        finally:
            handle.remove()
        return hidden, kwargs

    def _block(self, block, h, kw, host):
        out = block(h.to(self.device), **_to(kw, self.device))
        return (out[0] if isinstance(out, tuple) else out).to(host)

    @torch.no_grad()
    def run(self, batches: list[torch.Tensor], on_block: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
            on_embeddings: Callable[[torch.Tensor], None] | None = None,
            on_final: Callable[[torch.Tensor, torch.Tensor], None] | None = None) -> None:
        """Run every batch through the model block by block. Callbacks (tensors on the device):
        `on_embeddings(h0)` per batch, `on_block(i, block_input, block_output)` per block and batch, and
        `on_final(hidden_after_final_norm, input_ids)` per batch."""
        with self._onloaded() as host:
            hidden, kwargs = self._capture(batches, host)
            if on_embeddings is not None:
                for h in hidden:
                    on_embeddings(h.to(self.device))
            for i, block in enumerate(self.layers):
                block.to(self.device)
                try:
                    for j, (h, kw) in enumerate(zip(hidden, kwargs)):
                        x = h.to(self.device)
                        out = block(x, **_to(kw, self.device))
                        y = out[0] if isinstance(out, tuple) else out
                        if on_block is not None:
                            on_block(i, x, y)
                        hidden[j] = y.to(host)
                finally:
                    block.to(host)
            if on_final is not None:
                norm = self.model.get_submodule(get_arch(self.model).final_norm)
                for h, b in zip(hidden, batches):
                    on_final(norm(h.to(self.device)), b.to(self.device))

    @torch.no_grad()
    def skip_one_nll(self, batches: list[torch.Tensor]) -> list[float]:
        """SLEB's candidates: the summed next-token NLL over `batches` of the model with block i skipped, for
        every i, with each block onloaded once. Candidate i's hidden states are block i's inputs passed on
        unchanged, then run through the blocks after it alongside the others (n(n+1)/2 block passes)."""
        from ..surgery.layers import head_nll

        with self._onloaded() as host:
            hidden, kwargs = self._capture(batches, host)
            streams: dict[int, list] = {}
            for j, block in enumerate(self.layers):
                streams[j] = list(hidden)  # skipping block j: its input goes on unchanged
                block.to(self.device)
                try:
                    for i in streams:
                        if i != j:
                            streams[i] = [self._block(block, h, kw, host) for h, kw in zip(streams[i], kwargs)]
                    hidden = [self._block(block, h, kw, host) for h, kw in zip(hidden, kwargs)]
                finally:
                    block.to(host)
            return [sum(head_nll(self.model, h.to(self.device), b.to(self.device)).item()
                        for h, b in zip(streams[i], batches)) for i in range(len(self.layers))]


__all__ = ["SequentialForward"]
