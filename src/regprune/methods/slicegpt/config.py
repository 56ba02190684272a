from __future__ import annotations

from dataclasses import dataclass

from ...validate import check_number


@dataclass
class SliceGptConfig:
    """SliceGPT: rotate the residual stream into PCA bases of calibration activations, drop the
    components with the smallest variance.

    ratio: fraction of the hidden (embedding) dimension removed, as in the SliceGPT paper.
    rotation: "per-layer" (the paper's: a basis before every attention and every MLP, with d'×d'
        shortcut matrices on the residual connections, saved as a `regprune_slicegpt_<base>` model type)
        or "shared" (one basis for the whole residual stream: no shortcuts, a standard checkpoint of
        the base type, usually worse).
    num_windows: calibration windows for the covariances (default: all regularization windows).
    """

    ratio: float = 0.25
    rotation: str = "per-layer"
    multiple_of: int = 8
    num_windows: int | None = None
    seed: int = 0

    def __post_init__(self):
        check_number("ratio", self.ratio, minimum=0.0, maximum=1.0, strict=True, strict_max=True)
        check_number("multiple_of", self.multiple_of, integer=True, minimum=1)
        check_number("num_windows", self.num_windows, integer=True, minimum=1, optional=True)
        if self.rotation not in ("per-layer", "shared"):
            raise ValueError(f"rotation must be 'per-layer' or 'shared', got {self.rotation!r}")
