"""Unstructured and 2:4 baselines: Wanda and SparseGPT through llm-compressor, magnitude by hand.

Wanda and SparseGPT run llm-compressor's `oneshot` with its WandaPruningModifier / SparseGPTModifier on
our calibration windows (install with `pip install 'regprune[sparse]'`). Magnitude pruning is written
here: llm-compressor's MagnitudePruningModifier is a training-schedule modifier that leaves the weights
unchanged in `oneshot` (measured with llmcompressor 0.14.0.1), and magnitude pruning is a one-liner.
"""
from __future__ import annotations

import contextlib
import logging
import tempfile

import torch
from torch import nn

from ...arch import get_arch
from ...errors import RegpruneError
from ...surgery.layers import get_layers
from ..base import CalibrationData, MethodResult, PruningMethod, register_method
from .config import UnstructuredConfig

log = logging.getLogger(__name__)


def block_linears(model) -> dict[str, nn.Linear]:
    """name -> every Linear inside the transformer blocks (the registry's readers and writers)."""
    spec = get_arch(model)
    prefix = spec.layers
    return {f"{prefix}.{i}.{path}": block.get_submodule(path)
            for i, block in enumerate(get_layers(model)) for path in spec.readers + spec.writers}


def _sparsity_details(model, cfg: UnstructuredConfig) -> dict:
    lin = block_linears(model)
    zeros = sum(int((m.weight == 0).sum()) for m in lin.values())
    total = sum(m.weight.numel() for m in lin.values())
    all_params = sum(p.numel() for p in model.parameters())
    return {"structure": cfg.structure, "target_sparsity": cfg.ratio, "linear_sparsity": zeros / total,
            "pruned_linears": len(lin), "parameters_nonzero": all_params - zeros,
            "note": "dense tensors with zeros: no smaller checkpoint and no speed-up without sparse kernels"}


@torch.no_grad()
def magnitude_prune(model, ratio: float, structure: str) -> None:
    for lin in block_linears(model).values():
        w = lin.weight
        if structure == "2:4":
            if w.shape[1] % 4:
                raise RegpruneError(f"2:4 sparsity needs input sizes divisible by 4, got {tuple(w.shape)}")
            groups = w.abs().reshape(-1, 4)
            drop = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, groups.argsort(dim=1)[:, :2], True)
            w.masked_fill_(drop.reshape(w.shape), 0.0)
        else:  # per matrix, as the Wanda paper's magnitude baseline
            k = int(round(ratio * w.numel()))
            if k:
                thresh = w.abs().flatten().kthvalue(k).values
                w.masked_fill_(w.abs() <= thresh, 0.0)


def _require_llmcompressor():
    try:
        import llmcompressor  # noqa: F401
    except ImportError as e:
        raise RegpruneError("this method runs through llm-compressor, which is not installed: "
                            "pip install 'regprune[sparse]' (it pins transformers<=5.17, torch 2.10-2.14)") from e


@contextlib.contextmanager
def _config_on_disk(model):
    """llm-compressor re-reads the model's config from `config.name_or_path`; give an in-memory model one."""
    import os

    old = getattr(model.config, "name_or_path", "")
    if old and os.path.isfile(os.path.join(old, "config.json")):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="regprune-config-") as d:
        model.config.save_pretrained(d)
        model.config.name_or_path = d
        try:
            yield
        finally:
            model.config.name_or_path = old


def llmcompressor_prune(model, windows: torch.Tensor, tokenizer, modifier) -> None:
    """Run llm-compressor's oneshot with one pruning modifier on our (already tokenized) windows."""
    _require_llmcompressor()
    from datasets import Dataset
    from llmcompressor import oneshot

    if tokenizer is None:
        raise RegpruneError("llm-compressor needs the tokenizer of the calibration windows")
    ds = Dataset.from_dict({"input_ids": windows.tolist(), "attention_mask": torch.ones_like(windows).tolist()})
    with _config_on_disk(model):
        oneshot(model=model, processor=tokenizer, dataset=ds, recipe=[modifier],
                num_calibration_samples=len(windows), max_seq_length=windows.shape[1])
    # oneshot leaves bookkeeping on the config that a plain transformers reload does not need
    for attr in ("quantization_config", "sparsity_config"):
        if hasattr(model.config, attr):
            delattr(model.config, attr)


def _targets(model) -> dict:
    """Exactly the block Linears, by full name: llm-compressor's default ("Linear" with ignore) reaches the
    LM head, and through tied weights the embeddings (measured with 0.14.0.1)."""
    return {"targets": list(block_linears(model)), "ignore": []}


class _Unstructured(PruningMethod):
    config_cls = UnstructuredConfig

    def windows(self, calib: CalibrationData, cfg: UnstructuredConfig) -> torch.Tensor:
        w = calib.regularize if cfg.num_windows is None else calib.regularize[: cfg.num_windows]
        if len(w) == 0:
            raise RegpruneError(f"{self.name} needs calibration windows")
        return w

    def prune(self, model, calib: CalibrationData, cfg: UnstructuredConfig) -> dict:
        raise NotImplementedError

    def run(self, model, calib: CalibrationData, config: UnstructuredConfig) -> MethodResult:
        model.eval()
        info = self.prune(model, calib, config)
        info.update(_sparsity_details(model, config))
        log.info("%s: %s sparsity %.3f of the block Linear weights", self.name, config.structure,
                 info["linear_sparsity"])
        return MethodResult(model, info)


def _mask_structure(cfg: UnstructuredConfig) -> str:
    return "2:4" if cfg.structure == "2:4" else "0:0"


@register_method
class MagnitudeMethod(_Unstructured):
    name = "magnitude"

    def prune(self, model, calib, cfg):
        magnitude_prune(model, cfg.ratio, cfg.structure)
        return {"implementation": "regprune (per matrix; 2:4 along the input dimension)"}


class _ThroughLlmCompressor(_Unstructured):
    modifier: str = ""  # class name in llm-compressor

    def prune(self, model, calib, cfg):
        _require_llmcompressor()
        import llmcompressor.modifiers.obcq as obcq
        import llmcompressor.modifiers.pruning as pruning

        cls = getattr(pruning, self.modifier, None) or getattr(obcq, self.modifier)
        w = self.windows(calib, cfg)
        llmcompressor_prune(model, w, calib.tokenizer,
                            cls(sparsity=cfg.ratio, mask_structure=_mask_structure(cfg), **_targets(model)))
        return {"implementation": f"{_version()} {self.modifier}", "calibration_windows": len(w)}


@register_method
class WandaMethod(_ThroughLlmCompressor):
    name = "wanda"
    modifier = "WandaPruningModifier"


@register_method
class SparseGptMethod(_ThroughLlmCompressor):
    name = "sparsegpt"
    modifier = "SparseGPTModifier"


def _version() -> str:
    import llmcompressor

    return f"llm-compressor {llmcompressor.__version__} oneshot"
