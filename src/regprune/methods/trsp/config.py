from __future__ import annotations

from dataclasses import dataclass, field, replace

from ...train.loop import TrainConfig
from ..blocks.config import BlockRemovalConfig


@dataclass
class TrspConfig(BlockRemovalConfig):
    """TRSP: two-stage regularization, then removal of whole blocks (`ratio` of them, rounded, or `layers`).

    Stage 1 (selection). Every block's contribution is scaled by a learnable scalar, block output =
    input + alpha_i * (block(input) - input), alpha_i = 1 at the start, and

        loss = LM loss + lam1 * sum_i |alpha_i|

    (the LM loss whatever stage 2's objective: `stage1_objective` below)

    is minimized over the alphas only (the model's weights are frozen, so stage 1 changes nothing in
    the model). Normalization of lam1: the penalty is a *sum*, so each alpha feels the same pull lam1
    whatever the number of layers; lam1 is in LM-loss units (nats per token) per unit of alpha. An
    alpha settles where removing a little more of its block would cost lam1 nats per unit, so a block
    whose contribution is worth less than lam1 is driven to 0. Adam moves each alpha by at most about
    `stage1_lr` per step, so stage1_lr x stage-1 steps (default 0.1 x 24 on 96 windows) bounds the distance
    an alpha can travel; until the LM loss pushes back, all alphas fall at that same speed. The `layers` blocks with the smallest |alpha|
    are selected. The alphas are then dropped (the blocks run unscaled again): stage 1 is only a
    selection, and folding alpha into the writers (o_proj/down_proj rows) would not keep its function
    anyway, because scaling the attention's write also changes what the MLP of the same block reads.

    Stage 2 (knowledge transfer). All weights are trained (the `train` config) with

        loss = LM loss + lam2 * mean over selected blocks b of gap_b / gap_b(start),
        gap_b = ||out_b - in_b||^2 / ||in_b||^2

    where the norms run over the whole batch (all tokens and hidden channels), ||in_b||^2 is detached (so the
    model cannot shrink the penalty by inflating the residual stream), and gap_b(start) is the block's gap
    measured on the `num_windows` gap windows just before stage 2. Normalization of lam2: gap_b is already
    scale-free (independent of the residual stream's size, the hidden size and the batch), but the gaps of
    one model span five orders of magnitude (SmolLM2-135M: 1e-3 in blocks 12-17, 55 in block 11, 356 in
    block 0), so each selected block is measured in units of its own starting gap and the blocks are
    averaged: the penalty starts at lam2 whatever the model, K or the blocks selected, and lam2 is in
    LM-loss units (nats per token) for removing the whole gap. Then the selected blocks are removed.

    Defaults. lam1 = 0.05 and stage1_lr = 0.1 come from probes on SmolLM2-135M
    (bench/tuning/trsp_alpha_gradients.py, trsp_stage1_probe.py): at alpha = 1 the LM-loss gradients of the
    alphas are 0.001-0.06 except blocks 0 and 1 (0.16), so lam1 = 0.05 pulls all but the most needed
    blocks down until the LM loss pushes back (after 12 steps at lr 0.1 the alphas spread over 0.64-0.99
    and the LM loss rose 3.36 -> 3.56). lam2 = 3 is chosen, not measured: the penalty starts at lam2, so 3
    puts it at the scale of the LM loss (3.36 nats on SmolLM2-135M), as the reference code's fixed
    coefficients do (stage 1: 100 x ||alpha||_1, stage 2: 1e-4 x the unnormalized ||input - output||, on
    OPT). Stage 2 trains with DReSS's measured settings for this model (lr 3e-4, 1 epoch, batch 4).

    num_windows / batch_size (inherited): calibration windows and batch used to measure the gaps of every
    block before and after stage 2 (recorded, not used for the selection).
    """

    lam1: float = 0.05
    lam2: float = 3.0
    stage1_lr: float = 0.1
    # Stage 1 optimizer steps; None: as many as stage 2 (the `train` config's steps / epochs).
    stage1_steps: int | None = None
    # Stage 1's objective: "lm" (default), or "same" as stage 2's (`train.objective`). Distillation cannot
    # rank the blocks: at alpha = 1 the student is the teacher, the KL sits at its minimum and its gradient
    # in the alphas is zero, so every alpha falls at the same Adam speed under lam1 and the ranking is
    # noise (measured: bench/results/generality_smollm2.md, row trsp-kd-stage1kd).
    stage1_objective: str = "lm"
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=3e-4, epochs=1.0, batch_size=4,
                                                                   warmup_steps=2))

    def __post_init__(self):
        super().__post_init__()
        for name in ("lam1", "lam2"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.stage1_lr <= 0:
            raise ValueError(f"stage1_lr must be positive, got {self.stage1_lr}")
        if self.stage1_objective not in ("lm", "same"):
            raise ValueError(f"stage1_objective must be lm or same, got {self.stage1_objective!r}")
        if self.stage1_steps is not None and self.stage1_steps <= 0:
            raise ValueError(f"stage1_steps must be positive (or None: as many as stage 2), got {self.stage1_steps}")

    def stage1_train(self) -> TrainConfig:
        """Stage 1 runs with stage 2's batches and schedule, at its own learning rate (and step count)."""
        t = replace(self.train, lr=self.stage1_lr)
        if self.stage1_objective == "lm":
            t = replace(t, objective="lm")
        return replace(t, steps=self.stage1_steps, epochs=None) if self.stage1_steps is not None else t
