from __future__ import annotations

from dataclasses import dataclass


@dataclass
class UnstructuredConfig:
    """Zero individual weights of every Linear inside the transformer blocks (embeddings, LM head and
    norms untouched). The tensors keep their shapes: the checkpoint is as large as the dense one and,
    without sparse kernels, just as fast. These are the papers' quality references, not compressors.

    ratio: fraction of each Linear's weights set to zero (structure "unstructured").
    structure: "unstructured" or "2:4" (two of every four consecutive input weights zeroed; ratio must be
        0.5 or left unset).
    num_windows: calibration windows (Wanda, SparseGPT); default: all regularization windows.
    """

    ratio: float | None = None
    structure: str = "unstructured"
    num_windows: int | None = None
    seed: int = 0

    def __post_init__(self):
        if self.structure not in ("unstructured", "2:4"):
            raise ValueError(f"structure must be 'unstructured' or '2:4', got {self.structure!r}")
        if self.structure == "2:4":
            if self.ratio not in (None, 0.5):
                raise ValueError(f"2:4 sparsity removes exactly half of the weights; ratio {self.ratio} is not "
                                 "possible (use ratio 0.5 or leave it unset)")
            self.ratio = 0.5
        elif self.ratio is None:
            self.ratio = 0.5
        if not 0.0 < float(self.ratio) < 1.0:
            raise ValueError(f"sparsity ratio must be in (0, 1), got {self.ratio}")
