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
