"""Block-removal baselines: SLEB (iterative, by calibration perplexity) and ShortGPT (Block Influence)."""
from __future__ import annotations

import logging
import math

import torch
from tqdm.auto import tqdm

from ...surgery.layers import BlockTrace, get_layers, head_nll, remove_layers
from ..base import CalibrationData, MethodResult, PruningMethod, register_method
from .config import ShortGptConfig, SlebConfig

log = logging.getLogger(__name__)


def _batches(calib: CalibrationData, cfg) -> list[torch.Tensor]:
    w = calib.regularize[: cfg.num_windows]
    if len(w) == 0:
        raise ValueError("block removal needs calibration windows")
    return [w[i:i + cfg.batch_size] for i in range(0, len(w), cfg.batch_size)]


@torch.no_grad()
def sleb_scores(model, batches: list[torch.Tensor], onload: str | None = None) -> list[float]:
    """Calibration perplexity of the model with each single block removed (index = block). `onload`: on
    this device one block at a time (pipelines/sequential.py)."""
    if onload is not None:
        from ...pipelines.sequential import SequentialForward

        nll = SequentialForward(model, onload).skip_one_nll(batches)
        tokens = sum(b[:, 1:].numel() for b in batches)
        return [math.exp(x / tokens) for x in nll]
    device = next(model.parameters()).device
    n = len(get_layers(model))
    nll, tokens = [0.0] * n, 0
    for b in batches:
        b = b.to(device)
        trace = BlockTrace(model, b)
        # The input of block i does not depend on block i, so each candidate reruns only the blocks after it.
        for i in range(n):
            nll[i] += head_nll(model, trace.run_from(trace.inputs[i], i, skip=[i]), b).item()
        tokens += b[:, 1:].numel()
        del trace
    return [math.exp(x / tokens) for x in nll]


class BlockRemovalMethod(PruningMethod):
    """A method that removes whole blocks: the number removed must leave at least one."""

    def check_model(self, model_config, config) -> None:
        super().check_model(model_config, config)
        config.num_layers_removed(model_config.num_hidden_layers)


@register_method
class SlebMethod(BlockRemovalMethod):
    name = "sleb"
    config_cls = SlebConfig

    def run(self, model, calib: CalibrationData, config: SlebConfig) -> MethodResult:
        model.eval()
        n0 = len(get_layers(model))
        k = config.num_layers_removed(n0)
        batches = _batches(calib, config)
        original = list(range(n0))  # original index of each current block
        removed, steps = [], []
        for step in tqdm(range(k), desc="SLEB block removal"):
            ppl = sleb_scores(model, batches, onload=calib.onload)
            best = min(range(len(ppl)), key=ppl.__getitem__)
            steps.append({"step": step, "removed_block": original[best], "calibration_ppl": ppl[best],
                          "candidates_ppl": {str(original[i]): p for i, p in enumerate(ppl)}})
            log.info("SLEB step %d: remove block %d (calibration ppl %.2f)", step, original[best], ppl[best])
            removed.append(original.pop(best))
            model = remove_layers(model, [best], inplace=True)
        details = {"layers_before": n0, "layers_after": n0 - k, "removed_layers": sorted(removed),
                   "removal_order": removed, "scoring_windows": sum(len(b) for b in batches), "steps": steps}
        return MethodResult(model, details)


@torch.no_grad()
def block_influence(model, batches: list[torch.Tensor], onload: str | None = None) -> list[float]:
    """ShortGPT's Block Influence of every block: 1 - mean cosine of its input and output hidden states.
    `onload`: compute on this device one block at a time (pipelines/sequential.py)."""
    n = len(get_layers(model))
    if onload is not None:
        from ...pipelines.sequential import SequentialForward

        total = [0.0] * n

        def on_block(i, x, y):
            total[i] += torch.nn.functional.cosine_similarity(x.float(), y.float(), dim=-1).sum().item()

        batches = list(batches)
        SequentialForward(model, onload).run(batches, on_block=on_block)
        return [1.0 - t / sum(b.numel() for b in batches) for t in total]
    device = next(model.parameters()).device
    total, count = [0.0] * n, 0
    for b in batches:
        trace = BlockTrace(model, b.to(device))
        for i in range(n):
            cos = torch.nn.functional.cosine_similarity(trace.inputs[i].float(), trace.outputs[i].float(), dim=-1)
            total[i] += cos.sum().item()
        count += b.numel()
        del trace
    return [1.0 - t / count for t in total]


@register_method
class ShortGptMethod(BlockRemovalMethod):
    name = "shortgpt"
    config_cls = ShortGptConfig

    def run(self, model, calib: CalibrationData, config: ShortGptConfig) -> MethodResult:
        model.eval()
        n0 = len(get_layers(model))
        k = config.num_layers_removed(n0)
        batches = _batches(calib, config)
        bi = block_influence(model, tqdm(batches, desc="ShortGPT block influence"), onload=calib.onload)
        removed = sorted(sorted(range(n0), key=bi.__getitem__)[:k])
        log.info("ShortGPT: removing blocks %s (lowest Block Influence)", removed)
        details = {"layers_before": n0, "layers_after": n0 - k, "removed_layers": removed,
                   "block_influence": bi, "scoring_windows": sum(len(b) for b in batches)}
        return MethodResult(remove_layers(model, removed, inplace=True), details)
