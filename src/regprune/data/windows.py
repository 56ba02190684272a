"""Token windows: random calibration samples and contiguous evaluation windows."""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ..errors import DataUnavailable


@dataclass
class TokenWindows:
    ids: torch.Tensor  # [n, seq_len] int64
    protocol: dict  # how they were made, for result files

    def __len__(self) -> int:
        return self.ids.shape[0]


def tokenize(tokenizer, text: str) -> torch.Tensor:
    # No special tokens: every window is an independent sequence without BOS (the papers' protocol).
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)


def sample_windows(ids: torch.Tensor, n: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """n windows at random offsets; the same offsets as `random.seed(seed); random.randint(0, len-L-1)`."""
    if len(ids) <= seq_len + 1:
        raise DataUnavailable(f"text has {len(ids)} tokens, too few for windows of {seq_len}")
    rng = random.Random(seed)
    starts = [rng.randint(0, len(ids) - seq_len - 1) for _ in range(n)]
    return torch.stack([ids[s:s + seq_len] for s in starts])


def sample_distinct_windows(ids: torch.Tensor, n: int, seq_len: int, seed: int = 0) -> tuple[torch.Tensor, dict]:
    """n windows that do not overlap, as far as the text allows: the text is cut into consecutive windows
    (from a seeded offset in [0, seq_len)) and n of them are drawn without replacement. When the text holds
    fewer than n, all of them are taken and the rest are drawn again (each window then appears more than
    once, and the returned info says so). Returns (windows, info)."""
    if len(ids) <= seq_len + 1:
        raise DataUnavailable(f"text has {len(ids)} tokens, too few for windows of {seq_len}")
    rng = random.Random(seed)
    shift = rng.randrange(min(seq_len, len(ids) - seq_len))
    starts = list(range(shift, len(ids) - seq_len + 1, seq_len))
    if n <= len(starts):
        chosen = rng.sample(starts, n)
    else:
        chosen = rng.sample(starts, len(starts))
        while len(chosen) < n:
            chosen += rng.sample(starts, min(len(starts), n - len(chosen)))
    info = {"windows": n, "distinct_available": len(starts), "distinct": min(n, len(starts)),
            "repeated": max(0, n - len(starts))}
    return torch.stack([ids[s:s + seq_len] for s in chosen]), info


def eval_windows(ids: torch.Tensor, seq_len: int, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping windows from the start of the text, the last partial one dropped."""
    n = len(ids) // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise DataUnavailable(f"text has {len(ids)} tokens, fewer than one window of {seq_len}")
    return ids[: n * seq_len].view(n, seq_len)


def split_windows(windows: torch.Tensor, regularize_fraction: float = 0.75) -> tuple[torch.Tensor, torch.Tensor]:
    """Split samples between regularization and recovery (the paper's 3:1)."""
    n_reg = max(1, round(len(windows) * regularize_fraction))
    return windows[:n_reg], windows[n_reg:]
