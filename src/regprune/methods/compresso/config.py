from __future__ import annotations

from dataclasses import dataclass, field

from ...train.loop import TrainConfig

STRUCTURES = ("heads", "ffn", "hidden")


@dataclass
class CompressoConfig:
    """Compresso: L0 (hard-concrete) masks trained jointly with LoRA, then physical pruning.

    ratio: fraction of the model's parameters to remove (all of them, embeddings included, so that a
        Compresso model at ratio p has the size of a DReSS model at ratio p).
    structures: what the masks cover: attention heads (whole key-value groups under GQA), FFN
        intermediate channels, hidden (residual-stream) channels.
    uniform: keep the same numbers of heads and FFN channels in every layer (a standard checkpoint);
        else each layer keeps what its masks keep (the non-uniform model type, loadable after
        `import regprune`).
    collaborative_prompt: prepend `data.instructions.COLLABORATIVE_PROMPT` to every training input (no
        loss on its tokens).
    mask_init: initial log-alpha of every mask. 3 keeps about 80% of sampled masks at exactly 1 at the
        start, so a short run does not begin with a heavily damaged model (the CoFi code starts at 0,
        i.e. E[z] about 0.5, for runs of thousands of steps).
    mask_lr, lambda_lr: AdamW learning rates of the mask log-alphas and of the two Lagrange multipliers
        (which are trained by gradient ascent). The multipliers must reach the hundreds before the size
        term outweighs the LM loss's pull on the masks (keeping everything lowers the loss): with
        lambda_lr 1 a 48-step run on SmolLM2-135M stayed at expected sparsity 0.014 for a target of 0.25
        (step 20); with 20 it reaches the target, and overshoots it in a run that short
        (bench/results/compresso_tuning_smollm2.md). Longer runs can use smaller values.
    lambda_beta1: AdamW momentum of the multipliers. With 0.9 a multiplier keeps growing for several
        steps after the expected sparsity has crossed the target; 0 lets it turn as soon as the gap
        changes sign (in the 48-step probes this did not remove the overshoot either).
    lambda2_init: starting value of the quadratic multiplier lambda_2 (0 in CoFi / Compresso). A large
        value makes lambda_2 (s - t)^2 a stiff spring toward the target from the first step, so the size
        pressure follows the gap instead of waiting for the multipliers to wind up (5000 with lambda_lr 5
        tracked a 0.25 target within about 0.1 in 48 steps, but the pruned model was worse than with the
        overshooting default: see bench/results/compresso_tuning_smollm2.md).
    target_warmup: fraction of the steps over which the target sparsity rises linearly from 0 to ratio.
    multiple_of: kept hidden and FFN sizes are rounded to a multiple of this.
    """

    ratio: float = 0.25
    structures: str = "heads,ffn,hidden"
    uniform: bool = False
    collaborative_prompt: bool = True
    lora_r: int = 8
    lora_alpha: float = 16.0
    mask_init: float = 3.0
    mask_lr: float = 0.2
    lambda_lr: float = 20.0
    lambda_beta1: float = 0.9
    lambda2_init: float = 0.0
    target_warmup: float = 0.5
    multiple_of: int = 8
    seed: int = 0
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=3e-4, epochs=1.0, batch_size=4,
                                                                   warmup_steps=2))

    def __post_init__(self):
        if not 0.0 < float(self.ratio) < 1.0:
            raise ValueError(f"pruning ratio must be in (0, 1), got {self.ratio}")
        bad = set(self.structure_list) - set(STRUCTURES)
        if bad or not self.structure_list:
            raise ValueError(f"structures must be a comma-separated subset of {', '.join(STRUCTURES)}, "
                             f"got {self.structures!r}")
        if not 0.0 <= self.target_warmup <= 1.0:
            raise ValueError(f"target_warmup is a fraction of the steps in [0, 1], got {self.target_warmup}")
        if self.multiple_of < 1 or self.lora_r < 1:
            raise ValueError("multiple_of and lora_r must be >= 1")
        if self.mask_lr <= 0 or self.lambda_lr <= 0:
            raise ValueError("mask_lr and lambda_lr must be positive")
        if self.lambda2_init < 0:
            raise ValueError(f"lambda2_init must be >= 0 (a penalty weight), got {self.lambda2_init}")
        if not 0.0 <= self.lambda_beta1 < 1.0:
            raise ValueError(f"lambda_beta1 is an AdamW momentum in [0, 1), got {self.lambda_beta1}")

    @property
    def structure_list(self) -> tuple[str, ...]:
        return tuple(s.strip() for s in self.structures.split(",") if s.strip())
