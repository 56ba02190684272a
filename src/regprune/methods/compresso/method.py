"""Compresso: L0 masks + LoRA trained together under a Lagrangian size constraint, then physical pruning.

Training minimizes  LM loss + lambda_1 (s - t) + lambda_2 (s - t)^2  over the LoRA adapters and the mask
log-alphas, where s is the expected sparsity (1 - expected parameters / dense parameters) and t the
target, which rises linearly from 0 to the ratio over the first `target_warmup` of the steps. The
multipliers lambda_1, lambda_2 are maximized (gradient ascent: a hook flips the sign of their gradient
before the shared AdamW step), so they grow while the constraint is violated and the pressure on the
masks with them. At the end the masks are binarized at the target size, LoRA is merged, and the dropped
key-value groups, FFN channels and hidden channels are cut out of the weights.
"""
from __future__ import annotations

import logging

import torch

from ...data.instructions import COLLABORATIVE_PROMPT, pack_examples, prefix_windows, training_examples
from ...arch import get_arch
from ...errors import UnsupportedArchitecture
from ...record import count_parameters
from ...surgery import slice_hidden_channels
from ...surgery.heads_ffn import prune_heads_and_ffn
from ...train.lora import add_lora
from ...train.loop import train_loop
from ...train.objective import prepare_teacher
from ..base import CalibrationData, MethodResult, PruningMethod, register_method
from .config import CompressoConfig
from .masks import CompressoMasks, KeptStructure

log = logging.getLogger(__name__)


def training_sequences(calib: CalibrationData, cfg: CompressoConfig) -> tuple[torch.Tensor, dict]:
    """Rows [ids, loss mask] ([n, 2, L]) for training: instruction examples or text windows, with the
    collaborative prompt in front of each example / window when it is on."""
    prompt = COLLABORATIVE_PROMPT if cfg.collaborative_prompt else None
    n, seq_len = calib.regularize.shape
    if calib.protocol.get("kind") == "instructions":
        ids, mask = pack_examples(calib.tokenizer, training_examples(calib.protocol), n, seq_len, prompt)
        kind = "instruction examples packed into windows, loss on responses"
    elif prompt is not None:
        if calib.tokenizer is None:
            raise ValueError("the collaborative prompt needs the tokenizer in the calibration data "
                             "(build it with regprune.build_calibration) or collaborative_prompt=False")
        ids, mask = prefix_windows(calib.tokenizer, calib.regularize, prompt)
        kind = "text windows, prompt in front (text tail cut to keep the length), loss on text tokens"
    else:
        ids, mask = calib.regularize, torch.ones_like(calib.regularize, dtype=torch.bool)
        kind = "text windows, loss on every token"
    info = {"collaborative_prompt": prompt, "training_windows": len(ids), "training_data": kind,
            "loss_tokens": int(mask[:, 1:].sum())}
    return torch.stack([ids, mask.to(ids.dtype)], dim=1), info


def train_masks(model, calib: CalibrationData, cfg: CompressoConfig) -> tuple[object, CompressoMasks, list, dict]:
    """Train masks and LoRA on `model` (modified: LoRA is merged into it). Returns (merged model, masks,
    history, info)."""
    torch.manual_seed(cfg.seed)
    masks = CompressoMasks(model, cfg.structure_list, init=cfg.mask_init, seed=cfg.seed)
    seqs, info = training_sequences(calib, cfg)
    steps = cfg.train.total_steps(len(seqs))
    warm = max(1, round(cfg.target_warmup * steps))
    dev = next(model.parameters()).device
    lambdas = [torch.nn.Parameter(torch.tensor(float(v), device=dev)) for v in (0.0, cfg.lambda2_init)]
    for lam in lambdas:
        lam.register_hook(lambda g: -g)  # ascent on the multipliers with the same (descending) optimizer
    teacher, info["objective"] = prepare_teacher(model, seqs, cfg.train, calib)  # before LoRA and masks
    peft_model = add_lora(model, cfg.lora_r, cfg.lora_alpha)
    masks.attach(peft_model.get_base_model())
    state = {"step": 0, "lagrangian": 0.0}

    def target() -> float:
        return cfg.ratio * min(1.0, state["step"] / warm) if cfg.target_warmup > 0 else cfg.ratio

    def lagrangian() -> torch.Tensor:
        gap = masks.expected_sparsity() - target()
        value = lambdas[0] * gap + lambdas[1] * gap * gap
        state["lagrangian"] = float(value.detach())
        return value

    def after_step(step: int, lr: float) -> None:
        state["step"] = step + 1

    def metrics() -> dict:
        with torch.no_grad():
            return {"expected_sparsity": float(masks.expected_sparsity()), "target_sparsity": target(),
                    "lagrangian": state["lagrangian"], "lambda_1": float(lambdas[0]), "lambda_2": float(lambdas[1])}

    lora = [p for p in peft_model.parameters() if p.requires_grad]
    groups = [{"params": lora},
              {"params": list(masks.parameters()), "lr": cfg.mask_lr, "weight_decay": 0.0, "clip": False},
              {"params": lambdas, "lr": cfg.lambda_lr, "weight_decay": 0.0, "clip": False,
               "betas": (cfg.lambda_beta1, 0.999)}]
    try:
        history = train_loop(peft_model, seqs, cfg.train, params=groups, teacher=teacher,
                             extra_loss=lagrangian, after_step=after_step, metrics=metrics,
                             desc="Compresso (masks + LoRA)", resumable_state={"compresso": state, "mask_noise": masks.generator})
    finally:
        masks.detach()
        del teacher
    merged = peft_model.merge_and_unload()
    with torch.no_grad():
        info.update({"steps": len(history), "target_warmup_steps": warm, "lambda_1": float(lambdas[0]),
                     "lambda_2": float(lambdas[1]), "final_expected_sparsity": float(masks.expected_sparsity())})
    return merged, masks, history, info


def prune_to(model, masks: CompressoMasks, kept: KeptStructure, *, inplace: bool = False):
    """Cut out what `kept` drops: key-value groups and FFN channels per layer, then hidden channels."""
    pruned = prune_heads_and_ffn(model, kept.groups, kept.ffn, inplace=inplace)
    return slice_hidden_channels(pruned, kept.removed_hidden, inplace=True)


def finalize(model, masks: CompressoMasks, cfg: CompressoConfig, uniform: bool, *, inplace: bool = False):
    """Binarize the masks at the target size and prune; returns (pruned model, info)."""
    kept = masks.binarize(cfg.ratio, cfg.multiple_of, uniform=uniform, config=model.config)
    pruned = prune_to(model, masks, kept, inplace=inplace)
    n = count_parameters(pruned)
    if n != kept.parameters:
        raise AssertionError(f"size model predicted {kept.parameters} parameters, the pruned model has {n}")
    info = {"layout": "uniform" if uniform else "non-uniform", **kept.summary(),
            "hidden_size_after": pruned.config.hidden_size,
            "achieved_sparsity": 1.0 - n / masks.size.total, "target_parameters": (1 - cfg.ratio) * masks.size.total}
    log.info("Compresso %s: %d -> %d parameters (sparsity %.3f, target %.3f)", info["layout"], masks.size.total, n,
             info["achieved_sparsity"], cfg.ratio)
    return pruned, info


@register_method
class CompressoMethod(PruningMethod):
    name = "compresso"
    config_cls = CompressoConfig

    def check_model(self, model_config, config) -> None:
        super().check_model(model_config, config)
        spec = get_arch(model_config)
        if spec.attention is None or spec.ffn is None:
            raise UnsupportedArchitecture(
                f"method 'compresso' cannot prune model_type {model_config.model_type!r}: its attention or FFN "
                "projections are fused into one Linear, and Compresso masks heads and FFN channels separately")

    def run(self, model, calib: CalibrationData, config: CompressoConfig) -> MethodResult:
        merged, masks, history, info = train_masks(model, calib, config)
        pruned, final = finalize(merged, masks, config, config.uniform, inplace=True)
        info.update(final)
        info["log_alpha"] = {s: a.detach().cpu().tolist() for s, a in masks.log_alpha.items()}
        return MethodResult(pruned, info, history)
