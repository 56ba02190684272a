"""Recovery fine-tuning (RFT) with LoRA through peft, with early stopping, merged before saving."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from ..arch import get_arch
from ..validate import check_number
from .loop import TrainConfig, lm_loss, train_loop

log = logging.getLogger(__name__)


@dataclass
class RecoveryConfig:
    # The paper's RFT: r=32, alpha=10, lr 2e-5, patience 5, min delta 1e-4 (peft defaults otherwise).
    r: int = 32
    alpha: float = 10.0
    dropout: float = 0.0
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=2e-5, epochs=1.0))
    eval_fraction: float = 0.1  # recovery windows held out for early stopping
    eval_every: int = 1
    patience: int = 5
    min_delta: float = 1e-4

    def __post_init__(self):
        check_number("lora_r", self.r, integer=True, minimum=1)
        check_number("lora_alpha", self.alpha, minimum=0.0, strict=True)
        check_number("lora dropout", self.dropout, minimum=0.0, maximum=1.0, strict_max=True)
        check_number("eval_fraction", self.eval_fraction, minimum=0.0, maximum=1.0, strict=True, strict_max=True)
        check_number("eval_every", self.eval_every, integer=True, minimum=1)
        check_number("patience", self.patience, integer=True, minimum=1)
        check_number("min_delta", self.min_delta, minimum=0.0)


@torch.no_grad()
def _mean_loss(model, windows: torch.Tensor) -> float:
    model.eval()
    device = next(model.parameters()).device
    return sum(lm_loss(model, w[None].to(device)).item() for w in windows) / len(windows)


def add_lora(model, r: int, alpha: float, dropout: float = 0.0):
    """Wrap `model` (in place) with peft LoRA adapters on every Linear of its blocks; base weights frozen."""
    from peft import LoraConfig, get_peft_model

    lcfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                      target_modules=list(get_arch(model).linear_names), task_type="CAUSAL_LM")
    return get_peft_model(model, lcfg)


def recover_with_lora(model, windows: torch.Tensor, cfg: RecoveryConfig) -> tuple[object, dict]:
    """Fine-tune LoRA adapters on `windows`, keep the best (held-out loss), merge; returns (model, log)."""
    if len(windows) < 2:
        raise ValueError("recovery needs at least 2 windows (one is held out for early stopping)")
    n_eval = max(1, round(len(windows) * cfg.eval_fraction))
    train_w, eval_w = windows[n_eval:], windows[:n_eval]
    peft_model = add_lora(model, cfg.r, cfg.alpha, cfg.dropout)
    def adapter() -> dict:
        return {k: v.detach().clone() for k, v in peft_model.state_dict().items() if "lora_" in k}

    initial = _mean_loss(peft_model, eval_w)
    state = {"best": initial, "bad": 0, "evals": 0, "best_step": 0}
    best_adapter = adapter()

    def evaluate() -> float:
        return _mean_loss(peft_model, eval_w)

    def should_stop(loss: float) -> bool:
        state["evals"] += 1
        if loss < state["best"] - cfg.min_delta:
            state.update(best=loss, bad=0, best_step=state["evals"] * cfg.eval_every)
            best_adapter.update(adapter())
            return False
        state["bad"] += 1
        return state["bad"] >= cfg.patience

    history = train_loop(peft_model, train_w, cfg.train, evaluate=evaluate, eval_every=cfg.eval_every,
                         should_stop=should_stop, desc="recovery (LoRA)")
    peft_model.load_state_dict(best_adapter, strict=False)
    merged = peft_model.merge_and_unload()
    info = {"initial_eval_loss": initial, "best_eval_loss": state["best"], "best_step": state["best_step"],
            "steps_run": len(history), "train_windows": len(train_w), "eval_windows": len(eval_w),
            "history": history}
    return merged, info
