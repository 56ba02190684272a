"""The DReSS penalty on the selected hidden channels: value, proximal step, and diagnostics."""
from __future__ import annotations

import torch

from ...arch import hidden_channel_slices
from ...distributed import channel_sums, channel_sums_with_grad, scale_channels


class ChannelRegularizer:
    def __init__(self, model, removed: list[int], norm: str, lam: float, mode: str, lr_budget: float = 1.0):
        """`lr_budget`: sum over the run's steps of lr_t / lr_max (prox mode spreads lam over it)."""
        self.norm, self.lam, self.mode, self.lr_budget = norm, lam, mode, lr_budget
        self.slices = hidden_channel_slices(model)
        d = model.config.hidden_size
        dev = next(model.parameters()).device
        self.idx = torch.as_tensor(sorted(removed), dtype=torch.long, device=dev)
        keep = sorted(set(range(d)) - set(removed))
        self.keep_idx = torch.as_tensor(keep, dtype=torch.long, device=dev)
        with torch.no_grad():
            self.scale = [s.param.detach().float().pow(2).mean().sqrt().clamp_min(1e-12).item() for s in self.slices]
            self.initial = [self._rms(s, self.idx) for s in self.slices]
            self.initial_kept = [self._rms(s, self.keep_idx) for s in self.slices]
            self.initial_energy = [self._energy(s) for s in self.slices]

    # Every number below goes through distributed.channel_sums, so it is the same on a model sharded over
    # processes (FSDP2, inside the training loop) as on a whole one.
    @staticmethod
    def _rms(s, idx) -> float:
        p = s.param
        per_channel = p.numel() // p.shape[s.dim]
        return (channel_sums(p, s.dim, idx, torch.square).sum() / (per_channel * len(idx))).sqrt().item()

    def _energy(self, s) -> float:
        return channel_sums(s.param, s.dim, self.idx, torch.square).sum().item()

    def loss(self) -> torch.Tensor:
        """Paper form: lam * sum over tensors and selected channels of the slice norm (with autograd)."""
        total = 0.0
        for s in self.slices:
            if self.norm == "l2":
                per = channel_sums_with_grad(s.param, s.dim, self.idx, torch.square).clamp_min(1e-30).sqrt()
            else:
                per = channel_sums_with_grad(s.param, s.dim, self.idx, torch.abs)
            total = total + per.sum()
        return self.lam * total

    @torch.no_grad()
    def value(self) -> float:
        """Normalized penalty: mean over (tensor, channel) of the slice's size in units of its tensor's
        initial RMS (1 at the start for a typical channel, 0 when all selected slices are zero)."""
        totals, count = [], 0
        for s, scale in zip(self.slices, self.scale):
            n = s.param.numel() // s.param.shape[s.dim]
            per = (channel_sums(s.param, s.dim, self.idx, torch.square).sqrt() if self.norm == "l2"
                   else channel_sums(s.param, s.dim, self.idx, torch.abs))
            totals.append((per / (scale * (n ** 0.5 if self.norm == "l2" else n))).sum())
            count += per.numel()
        return self.lam * torch.stack(totals).sum().item() / count  # one device sync per call

    @torch.no_grad()
    def prox(self, step: int, lr_ratio: float) -> None:
        """One proximal step with threshold tau = lam * lr_ratio / lr_budget (in units of tensor RMS)."""
        tau = self.lam * lr_ratio / self.lr_budget
        for s, scale in zip(self.slices, self.scale):
            p = s.param
            if self.norm == "l1":
                scale_channels(p, s.dim, self.idx, lambda sel, _: sel.sign() * (sel.abs() - tau * scale).clamp_min(0.0))
                continue
            n = p.numel() // p.shape[s.dim]
            norms = channel_sums(p, s.dim, self.idx, torch.square).sqrt()
            factor = (1.0 - tau * scale * n ** 0.5 / norms.clamp_min(1e-30)).clamp_min(0.0)

            def shrink(sel, positions, factor=factor, dim=s.dim):
                shape = [1] * sel.dim()
                shape[dim] = -1
                return sel * factor[positions].view(shape).to(sel.dtype)

            scale_channels(p, s.dim, self.idx, shrink)

    @torch.no_grad()
    def energy_left(self) -> float:
        """Mean over tensors of (energy now / energy at start) in the selected channels."""
        now = torch.stack([channel_sums(s.param, s.dim, self.idx, torch.square).sum() for s in self.slices]).tolist()
        fr = [e / e0 for e, e0 in zip(now, self.initial_energy) if e0 > 0]  # one device sync per call
        return sum(fr) / max(1, len(fr))

    @torch.no_grad()
    def exact_zero_fraction(self) -> float:
        zeros = torch.stack([channel_sums(s.param, s.dim, self.idx, lambda x: (x == 0).float()).sum()
                             for s in self.slices]).sum().item()
        n = sum(s.param.numel() // s.param.shape[s.dim] * len(self.idx) for s in self.slices)
        return zeros / max(1, n)

    @torch.no_grad()
    def magnitudes(self) -> list[dict]:
        """Per tensor: RMS of the regularized and of the kept slices, before and after (paper Fig. 3/6)."""
        rows = []
        for s, b, kb in zip(self.slices, self.initial, self.initial_kept):
            a, ka = self._rms(s, self.idx), self._rms(s, self.keep_idx)
            rows.append({"name": s.name, "layer": s.layer, "matrix": s.matrix, "role": s.role,
                         "selected_rms_before": b, "selected_rms_after": a,
                         "selected_ratio": a / b if b > 0 else None,
                         "kept_rms_before": kb, "kept_rms_after": ka, "kept_ratio": ka / kb if kb > 0 else None})
        return rows
