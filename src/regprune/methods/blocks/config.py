from __future__ import annotations

from dataclasses import dataclass

from ...validate import check_number


@dataclass
class BlockRemovalConfig:
    """Remove whole transformer blocks: `ratio` of them (rounded), or exactly `layers` blocks.

    num_windows: calibration windows used for scoring (the first ones of the method's calibration set).
    """

    ratio: float | None = 0.25
    layers: int | None = None
    num_windows: int = 32
    batch_size: int = 4
    seed: int = 0

    def __post_init__(self):
        if self.layers is not None:
            if isinstance(self.layers, bool) or not isinstance(self.layers, int) or self.layers <= 0:
                raise ValueError(f"layers must be a positive number of blocks to remove, got {self.layers!r}")
            self.ratio = None  # layers=K wins; the record then shows what was used
        elif self.ratio is None or isinstance(self.ratio, (bool, str)) or not 0.0 < float(self.ratio) < 1.0:
            raise ValueError(f"give layers=K (blocks to remove) or a ratio in (0, 1), got ratio={self.ratio!r}")
        check_number("num_windows", self.num_windows, integer=True, minimum=1)
        check_number("batch_size", self.batch_size, integer=True, minimum=1)

    def num_layers_removed(self, n_layers: int) -> int:
        k = self.layers if self.layers is not None else round(float(self.ratio) * n_layers)
        if k <= 0:
            raise ValueError(f"ratio {self.ratio} of {n_layers} blocks rounds to 0 blocks; give a larger ratio "
                             "or layers=K")
        if k >= n_layers:
            raise ValueError(f"cannot remove {k} of {n_layers} blocks; remove at most {n_layers - 1}")
        return k


@dataclass
class SlebConfig(BlockRemovalConfig):
    """SLEB: remove one block at a time, each time the one whose removal gives the lowest calibration
    perplexity (of the model with the earlier removals already applied)."""


@dataclass
class ShortGptConfig(BlockRemovalConfig):
    """ShortGPT: remove the blocks with the lowest Block Influence, BI_i = 1 - mean cos(x_i, x_{i+1}) over
    calibration tokens (x_i: block i's input, x_{i+1}: its output), all scored on the unpruned model."""
