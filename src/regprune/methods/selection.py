"""Which hidden channels to remove.

- `last`: the last k channels (the paper's fixed pseudo-index set; kept for reproduction).
- `random`: k channels drawn with a seed.
- `activation`: the k channels with the smallest calibration energy in the residual stream, each layer's
  hidden state normalized by its mean channel energy so that deep layers with large norms do not dominate.
  Massive-activation channels have the largest energy and are never picked.
- `weight`: the k channels whose slices have the smallest norm, relative per tensor (data-free).
"""
from __future__ import annotations

import torch

from ..arch import hidden_channel_slices
from ..surgery.layers import get_layers

STRATEGIES = ("activation", "weight", "last", "random")


def num_removed(hidden_size: int, ratio: float, multiple_of: int = 8, config=None) -> int:
    """Channels to remove so that about (1 - ratio) * hidden_size remain, the kept size rounded to a
    multiple of `multiple_of` and, given the model's `config`, to a size that config accepts."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"pruning ratio must be in (0, 1), got {ratio}")
    target = (1.0 - ratio) * hidden_size
    step = multiple_of if multiple_of > 1 and hidden_size >= 2 * multiple_of else 1
    candidates = sorted(range(step, hidden_size, step), key=lambda k: (abs(k - target), k))
    for kept in candidates:
        if config is None or hidden_size_allowed(config, kept):
            return hidden_size - kept
    raise ValueError(f"no kept hidden size that is a multiple of {step} is accepted by {type(config).__name__} "
                     f"(hidden {hidden_size}); try multiple_of=1")


def hidden_size_allowed(config, hidden_size: int) -> bool:
    """Whether the config class accepts this hidden size. Some (Llama's, in transformers 5) insist on a
    multiple of the number of attention heads even with an explicit head_dim, and refuse to save otherwise."""
    import copy

    c = copy.deepcopy(config)
    c.hidden_size = hidden_size
    validate = getattr(c, "validate", None)
    if validate is None:
        return True
    try:
        validate()
    except Exception:  # the config library's own validation error types differ across versions
        return False
    return True


def _energy(h: torch.Tensor) -> torch.Tensor:
    h = h.float()
    return h.pow(2).mean(dim=(0, 1)) / h.pow(2).mean()


@torch.no_grad()
def activation_scores(model, windows: torch.Tensor, max_windows: int = 16, onload: str | None = None) -> torch.Tensor:
    """Sum over layers of each channel's mean squared hidden state, normalized per layer (per window: the
    embeddings, every block's output but the last, and the last after the final norm, as the model's
    `hidden_states`). `onload`: compute on this device one block at a time, the weights staying where they
    are (pipelines/sequential.py)."""
    model.eval()
    windows = windows[:max_windows]
    if onload is not None:
        from ..pipelines.sequential import SequentialForward

        n = len(get_layers(model))
        acc = {"s": None}

        def add(h):
            e = _energy(h).cpu()
            acc["s"] = e if acc["s"] is None else acc["s"] + e

        SequentialForward(model, onload).run([w[None] for w in windows], on_embeddings=add,
                                             on_block=lambda i, x, y: add(y) if i < n - 1 else None,
                                             on_final=lambda h, ids: add(h))
        return acc["s"]
    device = next(model.parameters()).device
    score = None
    for w in windows:
        hs = model(input_ids=w[None].to(device), output_hidden_states=True, use_cache=False).hidden_states
        s = sum(_energy(h) for h in hs)
        score = s if score is None else score + s
    return score.cpu()


@torch.no_grad()
def weight_scores(model) -> torch.Tensor:
    score = None
    for s in hidden_channel_slices(model):
        p = s.param.detach().float()
        e = p.pow(2).sum(dim=tuple(i for i in range(p.dim()) if i != s.dim)) if p.dim() > 1 else p.pow(2)
        e = e / e.mean().clamp_min(1e-12)
        score = e if score is None else score + e
    return score.cpu()


def select_channels(model, strategy: str, k: int, windows: torch.Tensor | None = None, seed: int = 0,
                    onload: str | None = None) -> tuple[list[int], torch.Tensor | None]:
    """Return (sorted channel indices to remove, the scores used or None)."""
    d = model.config.hidden_size
    if strategy == "last":
        return list(range(d - k, d)), None
    if strategy == "random":
        g = torch.Generator().manual_seed(seed)
        return sorted(torch.randperm(d, generator=g)[:k].tolist()), None
    if strategy == "activation":
        if windows is None or len(windows) == 0:
            raise ValueError("channel selection 'activation' needs calibration windows")
        scores = activation_scores(model, windows, onload=onload)
    elif strategy == "weight":
        scores = weight_scores(model)
    else:
        raise ValueError(f"unknown channel selection {strategy!r}; choose from {', '.join(STRATEGIES)}")
    return sorted(torch.argsort(scores)[:k].tolist()), scores
