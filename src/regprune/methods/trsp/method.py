"""TRSP: learn a weight per block under an l1 penalty (stage 1), pull the blocks with the smallest weights
toward identity (stage 2), then remove them."""
from __future__ import annotations

import logging

import torch

from ...surgery.layers import get_layers, remove_layers
from ...distributed import sum_across
from ...train.loop import train_loop
from ...train.objective import prepare_teacher
from ..base import CalibrationData, MethodResult, register_method
from ..blocks.method import BlockRemovalMethod
from .config import TrspConfig

log = logging.getLogger(__name__)


def _block_io(args, kwargs, out) -> tuple[torch.Tensor, torch.Tensor]:
    """A decoder block's input and output hidden states (blocks return a tensor or a tuple, by version)."""
    x = args[0] if args else kwargs["hidden_states"]
    return x, (out[0] if isinstance(out, tuple) else out)


def smallest_abs(values: list[float], k: int) -> list[int]:
    """Indices of the k values with the smallest magnitude (ties: the lower index), sorted."""
    return sorted(sorted(range(len(values)), key=lambda i: (abs(values[i]), i))[:k])


class _Hooks:
    """Forward hooks on blocks, removed on exit, so the model is left as it was found."""

    def __init__(self, blocks: dict[int, torch.nn.Module]):
        self._handles = [b.register_forward_hook(self._hook(i), with_kwargs=True) for i, b in blocks.items()]

    def _hook(self, i: int):  # pragma: no cover - overridden
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []


class LayerScales(_Hooks):
    """Stage 1: block i's output becomes input + alpha_i * (output - input), with alpha a learnable vector."""

    def __init__(self, model):
        layers = get_layers(model)
        self.alpha = torch.nn.Parameter(torch.ones(len(layers), device=next(model.parameters()).device))
        super().__init__(dict(enumerate(layers)))

    def _hook(self, i: int):
        def hook(module, args, kwargs, out):
            x, y = _block_io(args, kwargs, out)
            new = x + self.alpha[i].to(y.dtype) * (y - x)
            return (new, *out[1:]) if isinstance(out, tuple) else new
        return hook

    def penalty(self) -> torch.Tensor:
        return self.alpha.abs().sum()

    def smallest(self, k: int) -> list[int]:
        return smallest_abs(self.alpha.detach().tolist(), k)


class IdentityGap(_Hooks):
    """Per block, from the last forward pass: ||out - in||^2 and ||in||^2 over the whole batch.

    `relative()` is the stage-2 penalty: the mean over the blocks of (||out - in||^2 / ||in||^2) / g_b, with
    g_b the block's gap before stage 2 (`initial`; 1 if not given) and the denominator ||in||^2 detached,
    so that inflating the residual stream cannot shrink the penalty."""

    def __init__(self, model, blocks: list[int], initial: list[float] | None = None):
        layers = get_layers(model)
        self.blocks = list(blocks)
        self.initial = list(initial) if initial is not None else [1.0] * len(self.blocks)
        if len(self.initial) != len(self.blocks) or not all(g > 0 for g in self.initial):
            raise ValueError(f"initial gaps must be positive, one per block; got {self.initial} for {self.blocks}")
        self.num: dict[int, torch.Tensor] = {}
        self.den: dict[int, torch.Tensor] = {}
        super().__init__({i: layers[i] for i in self.blocks})

    def _hook(self, i: int):
        def hook(module, args, kwargs, out):
            x, y = _block_io(args, kwargs, out)
            self.num[i] = (y - x).float().pow(2).sum()
            self.den[i] = x.detach().float().pow(2).sum()
        return hook

    def gaps(self) -> list[torch.Tensor]:
        # Sums over the whole batch: across processes too when the batch is split (with autograd for num).
        num = sum_across(torch.stack([self.num[i] for i in self.blocks]))
        den = sum_across(torch.stack([self.den[i] for i in self.blocks]))
        return list(num / den)

    def relative(self) -> torch.Tensor:
        return torch.stack([g / g0 for g, g0 in zip(self.gaps(), self.initial)]).mean()


@torch.no_grad()
def identity_gaps(model, windows: torch.Tensor, batch_size: int, blocks: list[int] | None = None) -> list[float]:
    """||out - in||^2 / ||in||^2 of each block (all blocks by default) over the given windows."""
    blocks = list(range(len(get_layers(model)))) if blocks is None else blocks
    if len(windows) == 0:
        raise ValueError("measuring the blocks' identity gaps needs calibration windows")
    device = next(model.parameters()).device
    num, den = [0.0] * len(blocks), [0.0] * len(blocks)
    was_training = model.training
    model.eval()
    with IdentityGap(model, blocks) as gap:
        for s in range(0, len(windows), batch_size):
            model(input_ids=windows[s:s + batch_size].to(device), use_cache=False)
            for j, i in enumerate(blocks):
                num[j] += gap.num[i].item()
                den[j] += gap.den[i].item()
    model.train(was_training)
    return [n / d for n, d in zip(num, den)]


def learn_layer_weights(model, windows: torch.Tensor, cfg: TrspConfig, k: int, teacher=None):
    """Stage 1: train only the per-block alphas under LM loss + lam1 * sum|alpha|; the model is unchanged.

    Returns the final alphas, the history, and the alphas after every step (`k`: the selection size, for
    the progress numbers: largest |alpha| among the k smallest, smallest among the rest)."""
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)  # no weight gradients: stage 1 only ranks the blocks
    trajectory: list[list[float]] = []
    try:
        with LayerScales(model) as scales:
            def metrics() -> dict:
                a = scales.alpha.detach().abs()
                sel = scales.smallest(k)
                kept = [i for i in range(len(a)) if i not in sel]
                trajectory.append([round(v, 6) for v in scales.alpha.detach().tolist()])
                return {"alpha_l1": a.sum().item(), "alpha_selected_max": a[sel].max().item(),
                        "alpha_kept_min": a[kept].min().item()}

            history = train_loop(model, windows, cfg.stage1_train(), params=[scales.alpha], teacher=teacher,
                                 extra_loss=lambda: cfg.lam1 * scales.penalty(), metrics=metrics,
                                 desc=f"TRSP stage 1: layer weights (lam1={cfg.lam1:g})",
                                 resumable_state={"trajectory": trajectory})
            alphas = scales.alpha.detach().tolist()
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
    for row in history:
        row["stage"] = 1
    return alphas, history, trajectory


def make_near_identity(model, windows: torch.Tensor, cfg: TrspConfig, blocks: list[int],
                       initial: list[float], teacher=None) -> list[dict]:
    """Stage 2: train all weights under LM loss + lam2 * mean over `blocks` of gap / initial gap."""
    with IdentityGap(model, blocks, initial) as gap:
        def metrics() -> dict:
            with torch.no_grad():
                return {"gap_left": gap.relative().item(),
                        "identity_gap": sum(g.item() for g in gap.gaps()) / len(blocks)}

        history = train_loop(model, windows, cfg.train, teacher=teacher, extra_loss=lambda: cfg.lam2 * gap.relative(),
                             metrics=metrics, desc=f"TRSP stage 2: near-identity blocks {blocks} (lam2={cfg.lam2:g})")
    for row in history:
        row["stage"] = 2
    return history


def stage_windows(windows: torch.Tensor, cfg: TrspConfig) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Stage 1's and stage 2's windows: disjoint (the first stage-1 steps x batch for stage 1, the rest for
    stage 2) when both stages are given in steps and the windows suffice, so that no step of either stage
    sees a window an earlier step saw; else both stages walk all of them."""
    t = cfg.train
    per_step = t.batch_size * t.grad_accum
    if cfg.stage1_steps is None or t.steps is None:
        return windows, windows, False
    n1, n2 = cfg.stage1_steps * per_step, t.steps * per_step
    if len(windows) < n1 + n2:
        return windows, windows, False
    return windows[:n1], windows[n1:], True


@register_method
class TrspMethod(BlockRemovalMethod):
    name = "trsp"
    config_cls = TrspConfig

    def run(self, model, calib: CalibrationData, config: TrspConfig) -> MethodResult:
        n = len(get_layers(model))
        k = config.num_layers_removed(n)
        windows = calib.regularize
        if len(windows) == 0:
            raise ValueError("TRSP needs calibration windows to train on")
        gap_windows = windows[: config.num_windows]
        w1, w2, split = stage_windows(windows, config)
        # One teacher for both stages: the model before either (stage 1 does not change the weights); only
        # stage 2's windows need it when stage 1 runs on the LM loss (the default).
        stage1_kd = config.stage1_train().objective != "lm"
        if split and not stage1_kd:
            teacher, objective = prepare_teacher(model, w2, config.train, calib)
            t1, t2 = None, teacher
        else:
            teacher, objective = prepare_teacher(model, windows, config.train, calib,
                                                 uses=len(w1) + len(w2) if split else len(windows))
            t1 = t2 = teacher
            if teacher is not None and split:
                t1, t2 = teacher.subset(slice(0, len(w1))), teacher.subset(slice(len(w1), None))
            if not stage1_kd:
                t1 = None
        alphas, h1, trajectory = learn_layer_weights(model, w1, config, k, t1)
        removed = smallest_abs(alphas, k)
        log.info("TRSP stage 1: selected blocks %s (smallest |alpha|: %s)", removed,
                 ", ".join(f"{alphas[i]:.3f}" for i in removed))
        before = identity_gaps(model, gap_windows, config.batch_size)
        # Each selected block's penalty is relative to its own gap here: the gaps of one model span 1e-3
        # to 1e2 (SmolLM2-135M), so an unnormalized lam2 would depend on which blocks were selected. A block
        # that already is the identity (gap 0) gets the floor, which pins it there.
        h2 = make_near_identity(model, w2, config, removed, [max(before[i], 1e-12) for i in removed], t2)
        del teacher, t1, t2
        after = identity_gaps(model, gap_windows, config.batch_size)
        for row in h2:  # one step axis for both stages in the history
            row["step"] += len(h1)
        details = {
            "layers_before": n, "layers_after": n - k, "removed_layers": removed,
            "selection": "the blocks with the smallest |alpha| after stage 1",
            "layer_weights": alphas,
            "objective": objective,
            "stage1_objective": config.stage1_train().objective,
            "stage_windows": [len(w1), len(w2)] if split else "both stages on all windows",
            "stage1_steps": len(h1), "stage2_steps": len(h2),
            "stage1_alpha_trajectory": trajectory,
            "identity_gap_before": before, "identity_gap_after": after,
            "identity_gap_selected_before": sum(before[i] for i in removed) / k,
            "identity_gap_selected_after": sum(after[i] for i in removed) / k,
            "identity_gap_windows": len(gap_windows),
            "identity_gap_definition": "||block output - block input||^2 / ||block input||^2 over all tokens of "
                                       "the windows; stage 2 penalizes lam2 x the mean over the selected blocks of "
                                       "gap / gap before stage 2",
        }
        log.info("TRSP stage 2: identity gap of the selected blocks %.4g -> %.4g",
                 details["identity_gap_selected_before"], details["identity_gap_selected_after"])
        return MethodResult(remove_layers(model, removed, inplace=True), details, h1 + h2)
