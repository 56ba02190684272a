"""Slicing without regularization, and DReSS (regularize -> slice)."""
from __future__ import annotations

import logging

import torch

from ...surgery import slice_hidden_channels
from ...train.loop import lr_budget, train_loop
from ...train.objective import prepare_teacher
from ..base import CalibrationData, MethodResult, PruningMethod, register_method
from ..selection import num_removed, select_channels
from .config import DressConfig, SliceConfig
from .regularizer import ChannelRegularizer

log = logging.getLogger(__name__)


def _choose(model, calib: CalibrationData, cfg: SliceConfig) -> tuple[list[int], dict]:
    d = model.config.hidden_size
    k = num_removed(d, cfg.ratio, cfg.multiple_of, model.config)
    removed, scores = select_channels(model, cfg.selection, k, calib.regularize, cfg.seed, onload=calib.onload)
    info = {"hidden_size_before": d, "hidden_size_after": d - k, "removed_channels": removed,
            "selection": cfg.selection}
    if scores is not None:
        info["selection_scores"] = [round(float(x), 6) for x in scores]
    log.info("removing %d of %d hidden channels (selection=%s)", k, d, cfg.selection)
    return removed, info


@register_method
class SliceMethod(PruningMethod):
    name = "slice"
    config_cls = SliceConfig

    def run(self, model, calib: CalibrationData, config: SliceConfig) -> MethodResult:
        removed, info = _choose(model, calib, config)
        if not config.finetune:
            return MethodResult(slice_hidden_channels(model, removed, inplace=True), info)
        # The prune-then-train baseline: slice the same channels, then train every weight with the same
        # objective, windows and schedule as a DReSS run (no regularization).
        teacher, info["objective"] = prepare_teacher(model, calib.regularize, config.train, calib)  # before slicing
        model = slice_hidden_channels(model, removed, inplace=True)
        history = train_loop(model, calib.regularize, config.train, teacher=teacher,
                             desc=f"slice + fine-tuning ({config.train.objective})")
        info["finetune_steps"] = len(history)
        return MethodResult(model, info, history)

    def check_model(self, model_config, config) -> None:
        super().check_model(model_config, config)
        num_removed(model_config.hidden_size, config.ratio, config.multiple_of, model_config)


@register_method
class DressMethod(SliceMethod):
    name = "dress"
    config_cls = DressConfig

    def run(self, model, calib: CalibrationData, config: DressConfig) -> MethodResult:
        removed, info = _choose(model, calib, config)
        steps = config.train.total_steps(len(calib.regularize))
        reg = ChannelRegularizer(model, removed, config.norm, config.lam, config.mode,
                                 lr_budget(config.train, steps))

        def metrics() -> dict:
            return {"reg_loss": reg.value(), "energy_left": reg.energy_left()}

        teacher, info["objective"] = prepare_teacher(model, calib.regularize, config.train, calib)  # still unpruned
        history = train_loop(
            model, calib.regularize, config.train,
            extra_loss=reg.loss if config.mode == "loss" else None,
            after_step=(lambda step, lr: reg.prox(step, lr / config.train.lr)) if config.mode == "prox" else None,
            metrics=metrics, teacher=teacher, desc=f"DReSS {config.norm} regularization ({config.train.objective})",
        )
        del teacher
        info.update({
            "regularization_steps": len(history),
            "energy_left_before_slicing": reg.energy_left(),
            "exact_zero_fraction_before_slicing": reg.exact_zero_fraction(),
            "magnitudes": reg.magnitudes(),
        })
        return MethodResult(slice_hidden_channels(model, removed, inplace=True), info, history)
