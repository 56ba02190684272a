from __future__ import annotations

from dataclasses import dataclass, field, replace

from ...train.loop import TrainConfig
from ...validate import check_number


def default_schedule() -> TrainConfig:
    """The training run of DReSS and of slice + fine-tuning (the same, for the equal-budget comparison)."""
    return TrainConfig(lr=3e-4, epochs=1.0, batch_size=4, warmup_steps=2)


@dataclass
class ChannelChoice:
    """Which hidden channels to remove: `ratio` of them, chosen by `selection`."""

    ratio: float = 0.25  # fraction of hidden channels removed
    selection: str = "activation"  # activation | weight | last | random
    multiple_of: int = 8  # kept hidden size rounded to a multiple of this (1: exact round(p*d))
    seed: int = 0

    def __post_init__(self):
        check_number("ratio", self.ratio, minimum=0.0, maximum=1.0, strict=True, strict_max=True)
        if self.selection not in ("activation", "weight", "last", "random"):
            raise ValueError(f"selection must be activation, weight, last or random, got {self.selection!r}")
        check_number("multiple_of", self.multiple_of, integer=True, minimum=1)
        check_number("seed", self.seed, integer=True)


@dataclass
class SliceConfig(ChannelChoice):
    """Slicing hidden channels without regularization (the paper's 'w/o R' ablation).

    finetune: after slicing, train every weight of the sliced model with the `train` run (objective,
        windows, schedule: by default those of a DReSS run), i.e. prune-then-train (with the KD objective,
        the Minitron recipe). The fair comparison with DReSS at equal training tokens.
    """

    finetune: bool = False
    train: TrainConfig = field(default_factory=default_schedule)

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.finetune, bool):
            raise ValueError(f"finetune must be true or false, got {self.finetune!r}")
        if not self.finetune and replace(self.train, seed=0) != default_schedule():  # the seed is shared
            raise ValueError("training options (steps, lr, objective, ...) apply to slice only with finetune=true "
                             "(--finetune): slicing alone does not train")


@dataclass
class DressConfig(ChannelChoice):
    """DReSS: regularize the selected channels toward zero, then slice them out.

    norm: "l2" (group lasso: the l2 norm of each channel's slice) or "l1" (elementwise |w|).
    mode: "prox" (default) applies the penalty by its proximal operator after every AdamW step, which
        gives exact zeros for both norms; lam is then normalized as the total shrinkage budget: over the
        whole run the proximal steps can move every selected slice by lam times its tensor's initial RMS
        (per element for l1, per RMS-normalized channel slice for l2), distributed over steps in
        proportion to the learning rate. lam=1 would just reach zero at the last step with no push-back
        from the LM loss; larger lam reaches zero earlier and leaves the rest of the run for the kept
        channels to adapt with the pruned ones already at zero (default 4: zero after about a quarter).
    mode: "loss" is the paper's literal form: lam * sum over tensors and channels of ||slice|| added to
        the LM loss and optimized by AdamW with it (lam in the paper's units; its best on LLaMA-2-7B was
        1e-3).
    """

    norm: str = "l2"
    lam: float = 4.0
    mode: str = "prox"
    # Deprecated: distillation is now the training objective, `train.objective` ("kd" by default);
    # distill=True sets it to "kd" (kept so that older configs and records still load).
    distill: bool = False
    train: TrainConfig = field(default_factory=default_schedule)

    def __post_init__(self):
        super().__post_init__()
        if self.distill:  # the former switch for distillation, now the objective (the default already)
            if self.train.objective == "lm":
                raise ValueError("distill=true asks for distillation but objective is 'lm': drop distill "
                                 "(the objective decides; kd is the default)")
            self.train = replace(self.train, objective="kd")
        if self.norm not in ("l1", "l2"):
            raise ValueError(f"norm must be 'l1' or 'l2', got {self.norm!r}")
        if self.mode not in ("prox", "loss"):
            raise ValueError(f"mode must be 'prox' or 'loss', got {self.mode!r}")
        check_number("lam", self.lam, minimum=0.0)
