"""Recovery fine-tuning (RFT) with LoRA through peft, with early stopping, merged before saving."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from ..arch import get_arch
from ..validate import check_number
from ..distributed import full
from .loop import TrainConfig, train_loop
from .objective import describe_objective, kd_alpha, objective_loss

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
def _mean_loss(model, windows: torch.Tensor, cfg: TrainConfig, teacher=None) -> float:
    """The training objective on held-out windows (one at a time), for early stopping."""
    model.eval()
    device = next(model.parameters()).device
    alpha = kd_alpha(cfg.objective, cfg.kd_alpha)
    total = 0.0
    for i in range(len(windows)):
        loss, _ = objective_loss(model, windows[i:i + 1].to(device), None, alpha=alpha,
                                 temperature=cfg.kd_temperature, teacher=teacher, rows=torch.tensor([i]),
                                 chunk_tokens=cfg.loss_chunk_tokens)
        total += loss.item()
    return total / len(windows)


def add_lora(model, r: int, alpha: float, dropout: float = 0.0):
    """Wrap `model` (in place) with peft LoRA adapters on every Linear of its blocks; base weights frozen."""
    from peft import LoraConfig, get_peft_model

    lcfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                      target_modules=list(get_arch(model).linear_names), task_type="CAUSAL_LM")
    return get_peft_model(model, lcfg)


def recover_with_lora(model, windows: torch.Tensor, cfg: RecoveryConfig, teacher=None) -> tuple[object, dict]:
    """Fine-tune LoRA adapters on `windows` with the training objective, keep the best adapter (held-out
    objective), merge; returns (model, log). `teacher`: built from the *unpruned* model for these windows
    (build_teacher), needed unless the objective is "lm"."""
    if len(windows) < 2:
        raise ValueError("recovery needs at least 2 windows (one is held out for early stopping)")
    n_eval = max(1, round(len(windows) * cfg.eval_fraction))
    train_w, eval_w = windows[n_eval:], windows[:n_eval]
    if kd_alpha(cfg.train.objective, cfg.train.kd_alpha) > 0 and teacher is None:
        raise ValueError(f"recovery with objective {cfg.train.objective!r} needs the unpruned model's teacher")
    t_train = t_eval = None
    if teacher is not None:
        t_train, t_eval = teacher.subset(slice(n_eval, None)), teacher.subset(slice(0, n_eval))
    peft_model = add_lora(model, cfg.r, cfg.alpha, cfg.dropout)
    def adapter() -> dict:
        # full tensors also while the loop has the model sharded over processes (distributed.full)
        return {k: full(v.detach()).clone() for k, v in peft_model.state_dict().items() if "lora_" in k}

    initial = _mean_loss(peft_model, eval_w, cfg.train, t_eval)
    state = {"best": initial, "bad": 0, "evals": 0, "best_step": 0}
    best_adapter = adapter()

    def evaluate() -> float:
        return _mean_loss(peft_model, eval_w, cfg.train, t_eval)

    def should_stop(loss: float) -> bool:
        state["evals"] += 1
        if loss < state["best"] - cfg.min_delta:
            state.update(best=loss, bad=0, best_step=state["evals"] * cfg.eval_every)
            best_adapter.update(adapter())
            return False
        state["bad"] += 1
        return state["bad"] >= cfg.patience

    history = train_loop(peft_model, train_w, cfg.train, evaluate=evaluate, eval_every=cfg.eval_every,
                         should_stop=should_stop, teacher=t_train, desc=f"recovery (LoRA, {cfg.train.objective})",
                         resumable_state={"early_stop": state, "best_adapter": best_adapter})
    peft_model.load_state_dict(best_adapter, strict=False)
    merged = peft_model.merge_and_unload()
    info = {"initial_eval_loss": initial, "best_eval_loss": state["best"], "best_step": state["best_step"],
            "steps_run": len(history), "train_windows": len(train_w), "eval_windows": len(eval_w),
            "eval_loss": "the training objective on the held-out windows",
            "objective": describe_objective(cfg.train, teacher), "history": history}
    return merged, info
