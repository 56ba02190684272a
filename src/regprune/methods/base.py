"""The small interface every pruning method implements."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import RegpruneError, UnsupportedArchitecture


@dataclass
class CalibrationData:
    regularize: torch.Tensor  # [n, seq_len] windows used by the method itself
    recovery: torch.Tensor  # [m, seq_len] windows kept for recovery fine-tuning
    protocol: dict = field(default_factory=dict)
    tokenizer: object = None  # the tokenizer that made the windows (for methods that hand data to other libraries)
    shared_teacher: object = None  # a live teacher of the unpruned model made by the pipeline (reused, not copied)
    # Forward-only scoring on this device one block at a time, the weights staying in host memory
    # (pipelines/sequential.py); None: on the model's own device, whole.
    onload: str | None = None


@dataclass
class MethodResult:
    model: object  # the pruned (physically smaller) model
    details: dict = field(default_factory=dict)  # goes into regprune.json under "method_details"
    history: list = field(default_factory=list)  # per-step training log


class PruningMethod:
    """A method takes a model it may modify (a copy the pipeline made) and returns the pruned model."""

    name: str = ""
    config_cls: type = object

    def run(self, model, calib: CalibrationData, config) -> MethodResult:  # pragma: no cover - interface
        raise NotImplementedError

    def check_model(self, model_config, config) -> None:
        """Refuse, from the model's config alone (before any weight is loaded), a model this method cannot
        prune with this config. Raises UnsupportedArchitecture or ValueError with the reason."""
        from ..arch import get_arch, supported_model_types

        try:
            get_arch(model_config)
        except UnsupportedArchitecture:
            known = [t for t in supported_model_types() if not t.startswith("regprune_")]
            raise UnsupportedArchitecture(
                f"method {self.name!r}: model_type {getattr(model_config, 'model_type', None)!r} is not supported; "
                f"regprune knows the layout of {', '.join(known)} (adding one is an ArchSpec entry in "
                "regprune/arch/registry.py)") from None


_METHODS: dict[str, PruningMethod] = {}


def register_method(cls):
    _METHODS[cls.name] = cls()
    return cls


def get_method(name: str) -> PruningMethod:
    if name not in _METHODS:
        raise RegpruneError(f"unknown method {name!r}; available: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def list_methods() -> list[str]:
    return sorted(_METHODS)
