"""The training loop the methods share: AdamW on the shared objective (LM, distillation from the unpruned
model, or a mix: train/objective.py) plus method hooks.

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

from ..validate import check_number
from ..distributed import sharded
from .checkpoint import active_checkpoints
from .objective import OBJECTIVES, TEACHERS, kd_alpha, objective_loss

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    lr: float = 1e-4
    steps: int | None = None  # optimizer steps; or give epochs
    epochs: float | None = None
    batch_size: int = 4
    grad_accum: int = 1
    warmup_steps: int = 0
    # After the warm-up: "constant", or a decay to final_lr_ratio * lr at the last step ("cosine", "linear").
    lr_schedule: str = "constant"
    final_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    seed: int = 0
    gradient_checkpointing: bool = False
    # The method's diagnostics (DReSS energy left, Compresso sparsity, ...) every this many steps (and at the
    # last); each costs a pass over the regularized slices.
    metrics_every: int = 1
    # The objective (train/objective.py): "kd" distils the unpruned model (forward KL at kd_temperature),
    # "lm" is the next-token loss on the calibration text, "mix" is (1 - kd_alpha) LM + kd_alpha KD.
    objective: str = "kd"
    kd_alpha: float = 0.5
    kd_temperature: float = 1.0
    # "cached": the unpruned model's top-k log-probs for the training windows, computed once before training
    # (no second model in memory); "live": a frozen copy run on every batch (exact, twice the memory).
    teacher: str = "cached"
    teacher_top_k: int = 256
    teacher_cache_dir: str | None = None  # memory-mapped cache here (default: in RAM up to 2 GiB, else $TMPDIR)
    # Tokens per chunk of the LM head + loss; None: 2^26 / vocabulary (256 MiB per fp32 [chunk, vocab] tensor).
    loss_chunk_tokens: int | None = None
    # "bf16": forward and backward under bf16 autocast, weights and optimizer state stay fp32 (the master
    # copy the proximal steps and regularizers act on); "no": the weights' own dtype; "auto": bf16 on a CUDA
    # device that supports it, else no.
    mixed_precision: str = "auto"

    def __post_init__(self):
        check_number("lr", self.lr, minimum=0.0, strict=True)
        check_number("steps", self.steps, integer=True, minimum=1, optional=True)
        check_number("epochs", self.epochs, minimum=0.0, strict=True, optional=True)
        check_number("batch_size", self.batch_size, integer=True, minimum=1)
        check_number("grad_accum", self.grad_accum, integer=True, minimum=1)
        check_number("warmup_steps", self.warmup_steps, integer=True, minimum=0)
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        check_number("final_lr_ratio", self.final_lr_ratio, minimum=0.0, maximum=1.0)
        check_number("weight_decay", self.weight_decay, minimum=0.0)
        check_number("max_grad_norm", self.max_grad_norm, minimum=0.0, strict=True, optional=True)
        check_number("seed", self.seed, integer=True)
        check_number("metrics_every", self.metrics_every, integer=True, minimum=1)
        if not isinstance(self.gradient_checkpointing, bool):
            raise ValueError(f"gradient_checkpointing must be true or false, got {self.gradient_checkpointing!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.teacher not in TEACHERS:
            raise ValueError(f"teacher must be one of {', '.join(TEACHERS)}, got {self.teacher!r}")
        check_number("kd_alpha", self.kd_alpha, minimum=0.0, maximum=1.0)
        check_number("kd_temperature", self.kd_temperature, minimum=0.0, strict=True)
        check_number("teacher_top_k", self.teacher_top_k, integer=True, minimum=1)
        check_number("loss_chunk_tokens", self.loss_chunk_tokens, integer=True, minimum=1, optional=True)
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(f"mixed_precision must be one of {', '.join(PRECISIONS)}, got {self.mixed_precision!r}")

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


PRECISIONS = ("auto", "no", "bf16")
LR_SCHEDULES = ("constant", "cosine", "linear")


def lr_factor(cfg: TrainConfig, step: int, steps: int) -> float:
    """lr of optimizer step `step` (0-based) of a `steps`-step run, as a fraction of cfg.lr: a linear warm-up
    over cfg.warmup_steps, then constant or a cosine / linear decay to cfg.final_lr_ratio at the last step."""
    w = min(cfg.warmup_steps, steps)
    if step < w:
        return (step + 1) / w
    if cfg.lr_schedule == "constant" or steps - w <= 1:
        return 1.0
    t = (step - w) / (steps - w - 1)  # 0 at the first step after the warm-up, 1 at the last
    shape = 0.5 * (1 + math.cos(math.pi * t)) if cfg.lr_schedule == "cosine" else 1 - t
    return cfg.final_lr_ratio + (1 - cfg.final_lr_ratio) * shape


def lr_budget(cfg: TrainConfig, steps: int) -> float:
    """Sum over the run's steps of lr_t / lr (what a proximal penalty spread over the run is scaled by)."""
    return sum(lr_factor(cfg, s, steps) for s in range(steps))


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a run on `device` (None: no autocast)."""
    mode = cfg.mixed_precision
    if mode == "auto":
        mode = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "no"
    return torch.bfloat16 if mode == "bf16" else None


def lm_loss(model, batch: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=batch, use_cache=False).logits[:, :-1]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1))


def _batches(windows: torch.Tensor, batch_size: int, seed: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """(row numbers, windows) batches: each epoch a new seeded permutation of all windows."""
    g = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(windows), generator=g)
        for i in range(0, len(order) - batch_size + 1 if len(order) >= batch_size else 1, batch_size):
            rows = order[i:i + batch_size]
            yield rows, windows[rows]


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
    extra_loss: Callable[[], torch.Tensor] | None = None,
    after_step: Callable[[int, float], None] | None = None,
    metrics: Callable[[], dict] | None = None,
    evaluate: Callable[[], float] | None = None,
    eval_every: int | None = None,
    should_stop: Callable[[float], bool] | None = None,
    teacher=None,
    desc: str = "train",
    resumable_state: dict | None = None,
) -> list[dict]:
    """Train in place on `cfg.objective` (train/objective.py); return the history (one dict per step).

    `windows`: [n, L] token ids, or [n, 2, L] rows of (ids, loss mask) where only tokens whose mask is 1
    carry loss. `teacher`: the unpruned model's LiveTeacher / CachedTeacher (build_teacher; a cached one
    must have been built for these `windows`), needed unless the objective is "lm". The LM loss is logged
    whatever the objective. `params` is a list of parameters or of torch param-group dicts (own `lr`,
    `weight_decay`; `"clip": False` keeps a group out of gradient clipping).

    Inside `RunCheckpoints.active()` (train/checkpoint.py) the loop saves a checkpoint every N steps and at
    its end, and continues from a saved one; `resumable_state` names the caller's own mutable dicts / lists
    that change during the loop (hooks' counters, early-stopping records), saved and restored with it."""
    steps = cfg.total_steps(len(windows))
    alpha = kd_alpha(cfg.objective, cfg.kd_alpha)
    if alpha > 0 and teacher is None:
        raise ValueError(f"objective {cfg.objective!r} needs a teacher (regprune.train.objective.build_teacher)")
    per_step = cfg.batch_size * cfg.grad_accum
    if steps * per_step > len(windows):
        log.warning("%s: %d steps x %d windows need %d windows but %d were given, so windows repeat (%.1f epochs); "
                    "give more calibration windows (--num-samples) to see new text at every step", desc, steps,
                    per_step, steps * per_step, len(windows), steps * per_step / len(windows))
    groups = [g for g in _param_groups(params or model.parameters()) if g["params"]]
    device = next(model.parameters()).device
    amp = autocast_dtype(cfg, device)
    if amp is not None and any(g["params"][0].dtype != torch.float32 for g in groups):
        raise ValueError("mixed precision keeps fp32 master weights: train a float32 model (regprune.prune upcasts "
                         "a model stored in bf16/fp16 for training and casts the result back)")
    runs = active_checkpoints()
    ckpt = runs.next_call(desc) if runs is not None else None
    # In a multi-process launch the model is sharded over the processes for the loop (distributed.py).
    with sharded(model, cfg.batch_size) as sh:
        groups = [{**g, "params": [sh.param(p) for p in g["params"]]} for g in groups]
        return _run(model, windows, cfg, steps, alpha, groups, device, amp, sh, ckpt, extra_loss, after_step,
                    metrics, evaluate, eval_every, should_stop, teacher, desc, resumable_state or {})


def _run(model, windows, cfg, steps, alpha, groups, device, amp, sh, ckpt, extra_loss, after_step, metrics,
         evaluate, eval_every, should_stop, teacher, desc, state) -> list[dict]:
    clipped = [p for g in groups if g.get("clip", True) for p in g["params"]]
    trained = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(cfg, s, steps))
    batches = _batches(windows, cfg.batch_size, cfg.seed)
    history: list[dict] = []
    seen, start, t_before = 0, 0, 0.0
    if ckpt is not None:
        got = ckpt.load(steps=steps, groups=groups, optimizer=opt, scheduler=sched, state=state)
        if got is not None:
            start, history, finished = got
            if finished:  # this call completed before the interruption: its result is restored
                model.eval()
                return history
            for _ in range(start * cfg.grad_accum):  # the data position: replay the seeded order
                seen += len(next(batches)[0])
            t_before = history[-1]["seconds"] if history else 0.0
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    t0 = time.perf_counter() - t_before
    bar = tqdm(range(start, steps), desc=desc, initial=start, total=steps, disable=sh.rank != 0 or None)
    try:
        for step in bar:
            t_step = time.perf_counter()
            t_data = 0.0
            totals = {"loss": 0.0, "lm_loss": 0.0, "distill_loss": 0.0, "extra_loss": 0.0}
            for _ in range(cfg.grad_accum):
                t = time.perf_counter()
                rows, batch = next(batches)
                seen += len(rows)
                if len(rows) % sh.world:
                    raise ValueError(f"a batch of {len(rows)} windows cannot be split over {sh.world} processes: "
                                     "give more calibration windows or another --batch-size")
                rows, batch = sh.local(rows, batch)
                batch = batch.to(device)
                ids, mask = (batch[:, 0], batch[:, 1]) if batch.dim() == 3 else (batch, None)
                t_data += time.perf_counter() - t
                with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    kw = dict(alpha=alpha, temperature=cfg.kd_temperature, teacher=teacher, rows=rows,
                              chunk_tokens=cfg.loss_chunk_tokens)
                    if sh.root is None:
                        loss, parts = objective_loss(model, ids, mask, **kw)
                    else:  # sharded: the same function, run as the forward of the FSDP root (distributed.py)
                        loss, parts = sh.root(ids, mask, **kw)
                if sh.active:  # each process's mean weighs by its share of the batch's loss tokens
                    tokens = (ids.shape[1] - 1) * len(ids) if mask is None else float(mask[:, 1:].sum())
                    loss = loss * sh.token_weight(tokens)
                totals["lm_loss"] += parts["lm_loss"] / cfg.grad_accum
                if parts["distill_loss"] is not None:
                    totals["distill_loss"] += parts["distill_loss"] / cfg.grad_accum
                if extra_loss is not None:
                    extra = extra_loss()
                    totals["extra_loss"] += extra.item() / cfg.grad_accum
                    loss = loss + extra
                totals["loss"] += loss.item() / cfg.grad_accum
                (loss / cfg.grad_accum).backward()
            sh.average_replicated_grads(trained)
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(clipped, cfg.max_grad_norm)
            lr_now = opt.param_groups[0]["lr"]
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            t = time.perf_counter()
            if after_step is not None:
                after_step(step, lr_now)
            t_hook = time.perf_counter() - t
            if sh.active:
                keys = list(totals)
                totals = dict(zip(keys, sh.mean([totals[k] for k in keys])))
            row = {"step": step + 1, "lm_loss": totals["lm_loss"], "lr": lr_now,
                   "epoch": round(seen / len(windows), 4), "seconds": time.perf_counter() - t0}
            if alpha > 0:
                row["distill_loss"] = totals["distill_loss"]
            if extra_loss is not None:
                row["extra_loss"] = totals["extra_loss"]
            if alpha > 0 or extra_loss is not None:
                row["loss"] = totals["loss"]
            t = time.perf_counter()
            if metrics is not None and ((step + 1) % cfg.metrics_every == 0 or step + 1 == steps):
                row.update(metrics())
            # Where the step's time went: regprune's own work besides the forward/backward/optimizer (the
            # batch, the method's after-step hook such as DReSS's proximal step, the diagnostics).
            row.update(t_data=t_data, t_after_step=t_hook, t_metrics=time.perf_counter() - t,
                       t_step=time.perf_counter() - t_step)
            if evaluate is not None and eval_every and ((step + 1) % eval_every == 0 or step + 1 == steps):
                row["eval_loss"] = evaluate()
                model.train()
            history.append(row)
            bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in row.items()
                             if k not in ("step", "seconds", "lr", "epoch")})
            stop = "eval_loss" in row and should_stop is not None and should_stop(row["eval_loss"])
            if ckpt is not None and (stop or ckpt.due(step + 1, steps)):
                ckpt.save(step=step + 1, steps=steps, finished=stop or step + 1 == steps, groups=groups,
                          optimizer=opt, scheduler=sched, history=history, state=state)
            if stop:
                log.info("early stop at step %d", step + 1)
                break
    finally:
        bar.close()
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_disable()
        model.eval()
    return history
