"""The training loop the methods share: AdamW on the LM loss plus method hooks.

Hooks let a method add a loss term (`extra_loss`), act after every optimizer step (`after_step`, e.g. a
proximal step), and show its own numbers in the progress bar and history (`metrics`).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    lr: float = 1e-4
    steps: int | None = None  # optimizer steps; or give epochs
    epochs: float | None = None
    batch_size: int = 4
    grad_accum: int = 1
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    seed: int = 0
    gradient_checkpointing: bool = False

    def __post_init__(self):
        from ..validate import check_number

        check_number("lr", self.lr, minimum=0.0, strict=True)
        check_number("steps", self.steps, integer=True, minimum=1, optional=True)
        check_number("epochs", self.epochs, minimum=0.0, strict=True, optional=True)
        check_number("batch_size", self.batch_size, integer=True, minimum=1)
        check_number("grad_accum", self.grad_accum, integer=True, minimum=1)
        check_number("warmup_steps", self.warmup_steps, integer=True, minimum=0)
        check_number("weight_decay", self.weight_decay, minimum=0.0)
        check_number("max_grad_norm", self.max_grad_norm, minimum=0.0, strict=True, optional=True)
        check_number("seed", self.seed, integer=True)
        if not isinstance(self.gradient_checkpointing, bool):
            raise ValueError(f"gradient_checkpointing must be true or false, got {self.gradient_checkpointing!r}")

    def total_steps(self, n_windows: int) -> int:
        if self.steps is not None:
            steps = self.steps
        elif self.epochs is not None:
            steps = math.ceil(self.epochs * n_windows / (self.batch_size * self.grad_accum))
        else:
            raise ValueError("give steps or epochs")
        if steps <= 0:
            raise ValueError(f"the number of training steps must be positive, got {steps}")
        return steps


def lm_loss(model, batch: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=batch, use_cache=False).logits[:, :-1]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1))


def masked_lm_loss(model, batch: torch.Tensor) -> torch.Tensor:
    """LM loss on rows stacked as [ids, loss mask] ([b, 2, L]): only tokens whose mask is 1 are predicted."""
    ids, mask = batch[:, 0], batch[:, 1, 1:].reshape(-1).bool()
    logits = model(input_ids=ids, use_cache=False).logits[:, :-1]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1), reduction="none")
    return (nll * mask).sum() / mask.sum().clamp_min(1)


def lm_and_distill_loss(model, teacher, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(LM loss, KL(teacher || student) per token) on the same forward pass."""
    logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
    with torch.no_grad():
        t_logits = teacher(input_ids=batch, use_cache=False).logits[:, :-1].float()
    flat = logits.reshape(-1, logits.shape[-1])
    lm = F.cross_entropy(flat, batch[:, 1:].reshape(-1))
    kd = F.kl_div(F.log_softmax(flat, -1), F.log_softmax(t_logits.reshape(flat.shape), -1), log_target=True,
                  reduction="batchmean")
    return lm, kd


def _batches(windows: torch.Tensor, batch_size: int, seed: int) -> Iterable[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(windows), generator=g)
        for i in range(0, len(order) - batch_size + 1 if len(order) >= batch_size else 1, batch_size):
            yield windows[order[i:i + batch_size]]


def _param_groups(params) -> list[dict]:
    """Trainable parameters as param groups: plain parameters form one group, dicts are kept."""
    plain, groups = [], []
    for p in params:
        if isinstance(p, dict):
            groups.append({**p, "params": [q for q in p["params"] if q.requires_grad]})
        elif p.requires_grad:
            plain.append(p)
    return ([{"params": plain}] if plain else []) + groups


def train_loop(
    model,
    windows: torch.Tensor,
    cfg: TrainConfig,
    *,
    params: list | None = None,
    loss_fn: Callable[[object, torch.Tensor], torch.Tensor] | None = None,
    extra_loss: Callable[[], torch.Tensor] | None = None,
    after_step: Callable[[int, float], None] | None = None,
    metrics: Callable[[], dict] | None = None,
    evaluate: Callable[[], float] | None = None,
    eval_every: int | None = None,
    should_stop: Callable[[float], bool] | None = None,
    teacher=None,
    desc: str = "train",
) -> list[dict]:
    """Train in place; return the history (one dict per step).

    With a `teacher`, the loss is the distillation loss KL(teacher || student) instead of the LM loss
    (which is still computed and logged). `loss_fn(model, batch)` replaces the LM loss (e.g. for windows
    that carry a loss mask). `params` is a list of parameters or of torch param-group dicts (own `lr`,
    `weight_decay`; `"clip": False` keeps a group out of gradient clipping)."""
    steps = cfg.total_steps(len(windows))
    groups = [g for g in _param_groups(params or model.parameters()) if g["params"]]
    clipped = [p for g in groups if g.get("clip", True) for p in g["params"]]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    device = next(model.parameters()).device
    batches = _batches(windows, cfg.batch_size, cfg.seed)
    history: list[dict] = []
    model.train()
    t0 = time.perf_counter()
    bar = tqdm(range(steps), desc=desc)
    try:
        for step in bar:
            lm_total, extra_total, kd_total = 0.0, 0.0, 0.0
            for _ in range(cfg.grad_accum):
                batch = next(batches).to(device)
                if teacher is None:
                    loss = (loss_fn or lm_loss)(model, batch)
                else:
                    lm, loss = lm_and_distill_loss(model, teacher, batch)
                    kd_total += loss.item() / cfg.grad_accum
                lm_total += (loss if teacher is None else lm).item() / cfg.grad_accum
                if extra_loss is not None:
                    extra = extra_loss()
                    extra_total += extra.item() / cfg.grad_accum
                    loss = loss + extra
                (loss / cfg.grad_accum).backward()
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(clipped, cfg.max_grad_norm)
            lr_now = opt.param_groups[0]["lr"]
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            if after_step is not None:
                after_step(step, lr_now)
            row = {"step": step + 1, "lm_loss": lm_total, "lr": lr_now, "seconds": time.perf_counter() - t0}
            if extra_loss is not None:
                row["extra_loss"] = extra_total
            if teacher is not None:
                row["distill_loss"] = kd_total
            if metrics is not None:
                row.update(metrics())
            if evaluate is not None and eval_every and ((step + 1) % eval_every == 0 or step + 1 == steps):
                row["eval_loss"] = evaluate()
                model.train()
            history.append(row)
            bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in row.items()
                             if k not in ("step", "seconds", "lr")})
            if "eval_loss" in row and should_stop is not None and should_stop(row["eval_loss"]):
                log.info("early stop at step %d", step + 1)
                break
    finally:
        bar.close()
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_disable()
        model.eval()
    return history
