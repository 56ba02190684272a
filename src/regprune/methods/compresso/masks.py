"""Hard-concrete (L0) masks over key-value groups, FFN channels and hidden channels, and the model size they imply.

Hard concrete (Louizos et al. 2018, as in CoFi and Compresso): with u ~ U(0, 1),
    s = sigmoid((log u - log(1 - u) + log_alpha) / beta),   z = clamp(s * (r - l) + l, 0, 1)
with beta = 2/3, l = -0.1, r = 1.1, so z is exactly 0 or 1 with positive probability and
    P(z != 0) = sigmoid(log_alpha - beta * log(-l / r))
is the expected L0 norm of one mask, differentiable in log_alpha.

Where the masks act (forward hooks, so they also see LoRA's contribution):
- a key-value group's mask multiplies the inputs of o_proj that come from its query heads;
- an FFN channel's mask multiplies that input of down_proj;
- a hidden channel's mask multiplies the embedding output and the outputs of o_proj and down_proj, so a
  masked channel is exactly zero in the residual stream, which is what exact hidden slicing needs.

Model size: every parameter tensor has at most one axis per structure (hidden, the heads of its layer,
the FFN of its layer), so its kept size is numel times the product of the kept fractions of its axes.
With independent masks the expected kept size is the same product of expected fractions.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from ...arch import get_arch, hidden_channel_slices
from ...errors import RegpruneError
from ...surgery.heads_ffn import attention_ffn_modules, layer_shapes

BETA, LIMIT_L, LIMIT_R, EPS = 2.0 / 3.0, -0.1, 1.1, 1e-6


def sample_hard_concrete(log_alpha: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    u = torch.rand(log_alpha.shape, generator=generator, device=log_alpha.device).clamp(EPS, 1 - EPS)
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / BETA)
    return (s * (LIMIT_R - LIMIT_L) + LIMIT_L).clamp(0.0, 1.0)


def prob_nonzero(log_alpha: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(log_alpha - BETA * math.log(-LIMIT_L / LIMIT_R))


@dataclass
class KeptStructure:
    """What a binarized mask set keeps: per layer the key-value groups and FFN channels, and the hidden
    channels removed everywhere."""

    groups: list[list[int]]
    ffn: list[list[int]]
    removed_hidden: list[int]
    parameters: int

    def summary(self) -> dict:
        return {"kv_groups_per_layer": [len(g) for g in self.groups], "ffn_per_layer": [len(f) for f in self.ffn],
                "hidden_removed": len(self.removed_hidden), "parameters": self.parameters}


class SizeModel:
    """Parameter count of the model as a function of the kept fraction of every mask group."""

    def __init__(self, model: nn.Module):
        spec = get_arch(model)
        axes: dict[int, set] = {}
        for s in hidden_channel_slices(model, spec):
            axes.setdefault(id(s.param), set()).add("hidden")
        for i, block in enumerate(model.get_submodule(spec.layers)):
            q, k, v, o, gate, up, down = attention_ffn_modules(model, block)
            for lin in (q, k, v):
                for p in (lin.weight, lin.bias):
                    if p is not None:
                        axes.setdefault(id(p), set()).add(("heads", i))
            axes.setdefault(id(o.weight), set()).add(("heads", i))
            for lin in (gate, up):
                for p in (lin.weight, lin.bias):
                    if p is not None:
                        axes.setdefault(id(p), set()).add(("ffn", i))
            axes.setdefault(id(down.weight), set()).add(("ffn", i))
        self.terms: dict[frozenset, int] = {}
        for p in {id(p): p for p in model.parameters()}.values():
            key = frozenset(axes.get(id(p), ()))
            self.terms[key] = self.terms.get(key, 0) + p.numel()
        self.total = sum(self.terms.values())

    def count(self, fractions: dict):
        """sum over tensors of numel * prod of the kept fractions of its axes (missing groups: 1)."""
        total = 0
        for key, n in self.terms.items():
            term = n
            for g in key:
                if g in fractions:
                    term = term * fractions[g]
            total = total + term
        return total


class CompressoMasks(nn.Module):
    def __init__(self, model: nn.Module, structures=("heads", "ffn", "hidden"), init: float = 3.0, seed: int = 0):
        super().__init__()
        self.spec = get_arch(model)
        shapes = layer_shapes(model)
        if len({(s["kv_groups"], s["n_rep"], s["ffn"]) for s in shapes}) != 1:
            raise RegpruneError("Compresso needs a model with the same sizes in every layer; this one "
                                f"({model.config.model_type}) has per-layer sizes")
        self.n_layers = len(shapes)
        self.groups, self.n_rep, self.head_dim, self.ffn = (shapes[0][k] for k in ("kv_groups", "n_rep", "head_dim",
                                                                                     "ffn"))
        self.hidden = model.config.hidden_size
        self.structures = tuple(structures)
        dev = next(model.parameters()).device
        sizes = {"heads": (self.n_layers, self.groups), "ffn": (self.n_layers, self.ffn), "hidden": (self.hidden,)}
        self.log_alpha = nn.ParameterDict({s: nn.Parameter(torch.full(sizes[s], float(init), device=dev))
                                           for s in self.structures})
        self.size = SizeModel(model)
        # (none on the meta device, where regprune plan measures shapes only)
        self.generator = torch.Generator(device=dev).manual_seed(seed) if dev.type != "meta" else None
        self.sampling = True
        self.z: dict[str, torch.Tensor] = {}
        self._hooks: list = []

    # ---- masks and size ----

    def sample(self) -> None:
        self.z = {s: sample_hard_concrete(a, self.generator) for s, a in self.log_alpha.items()}

    def set_fixed(self, kept: KeptStructure) -> None:
        """Use the binary masks of `kept` (no sampling) from now on."""
        dev = next(self.parameters()).device
        z = {"heads": torch.zeros(self.n_layers, self.groups, device=dev),
             "ffn": torch.zeros(self.n_layers, self.ffn, device=dev), "hidden": torch.ones(self.hidden, device=dev)}
        for i, (g, f) in enumerate(zip(kept.groups, kept.ffn)):
            z["heads"][i, g] = 1.0
            z["ffn"][i, f] = 1.0
        z["hidden"][kept.removed_hidden] = 0.0
        self.z = {s: z[s] for s in self.structures}
        self.sampling = False

    def _fractions(self, kept: dict) -> dict:
        """{group key: kept fraction} from per-structure kept counts (hidden: scalar, heads/ffn: [L])."""
        out = {}
        if "hidden" in kept:
            out["hidden"] = kept["hidden"] / self.hidden
        for s, n in (("heads", self.groups), ("ffn", self.ffn)):
            if s in kept:
                out.update({(s, i): kept[s][i] / n for i in range(self.n_layers)})
        return out

    def expected_kept(self) -> dict:
        """Expected L0 per mask group: hidden scalar, heads and ffn per layer."""
        return {s: prob_nonzero(a).sum(-1) for s, a in self.log_alpha.items()}

    def expected_parameters(self) -> torch.Tensor:
        return self.size.count(self._fractions(self.expected_kept()))

    def expected_sparsity(self) -> torch.Tensor:
        return 1.0 - self.expected_parameters() / self.size.total

    # ---- hooks ----

    def attach(self, model: nn.Module) -> None:
        """Register the mask hooks on `model` (after LoRA wrapping, so the adapters are masked too)."""
        self.detach()
        spec = self.spec
        emb = model.get_input_embeddings()
        self._hooks.append(emb.register_forward_hook(self._embedding_hook))
        for i, block in enumerate(model.get_submodule(spec.layers)):
            o = block.get_submodule(spec.attention[3])
            down = block.get_submodule(spec.ffn[2])
            if "heads" in self.structures:
                hook = self._input_hook("heads", i, self.n_rep * self.head_dim)
                self._hooks.append(o.register_forward_pre_hook(hook))
            if "ffn" in self.structures:
                self._hooks.append(down.register_forward_pre_hook(self._input_hook("ffn", i, 1)))
            if "hidden" in self.structures:
                for lin in (o, down):
                    self._hooks.append(lin.register_forward_hook(self._hidden_hook))

    def detach(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def _embedding_hook(self, module, args, out):
        # The embedding runs first in every forward pass: one mask sample per forward.
        if self.sampling:
            self.sample()
        return out * self.z["hidden"].to(out.dtype) if "hidden" in self.z else out

    def _hidden_hook(self, module, args, out):
        return out * self.z["hidden"].to(out.dtype)

    def _input_hook(self, structure: str, layer: int, repeat: int):
        def hook(module, args):
            z = self.z[structure][layer]
            if repeat > 1:
                z = z.repeat_interleave(repeat)
            return (args[0] * z.to(args[0].dtype),) + tuple(args[1:])
        return hook

    # ---- binarization ----

    def _ranking(self) -> dict[str, torch.Tensor]:
        """Every unit's rank in one global order by log-alpha (0 = removed first). Ties (common after short
        runs, where many masks moved alike) are broken by a seeded random order, so that removal goes one
        unit at a time instead of a whole tied block at once, and no structure is favoured by position."""
        flat = torch.cat([a.detach().flatten().float().cpu() for a in self.log_alpha.values()])
        jitter = torch.randperm(len(flat), generator=torch.Generator().manual_seed(0)).float()
        # Stable sort by (log-alpha, random tie-break): sort by the tie-break first, then stably by score.
        by_tie = torch.argsort(jitter)
        order = by_tie[torch.sort(flat[by_tie], stable=True).indices]
        rank = torch.empty_like(order)
        rank[order] = torch.arange(len(order))
        out, i = {}, 0
        for s, a in self.log_alpha.items():
            out[s] = rank[i:i + a.numel()].view(a.shape)
            i += a.numel()
        return out

    def _counts(self, rank: dict, removed: int, multiple_of: int) -> dict:
        """Kept counts when the `removed` lowest-ranked units go (rounded up; one kv group per layer)."""
        out = {}
        if "hidden" in rank:
            out["hidden"] = _round_up(int((rank["hidden"] >= removed).sum()), multiple_of, self.hidden)
        if "heads" in rank:
            out["heads"] = (rank["heads"] >= removed).sum(-1).clamp_min(1).tolist()
        if "ffn" in rank:
            out["ffn"] = [_round_up(int(n), multiple_of, self.ffn) for n in (rank["ffn"] >= removed).sum(-1)]
        return out

    def _params(self, counts: dict) -> int:
        return int(round(float(self.size.count(self._fractions(counts)))))

    def binarize(self, ratio: float, multiple_of: int = 8, uniform: bool = False, config=None) -> KeptStructure:
        """Binary masks with at most (1 - ratio) of the parameters: units are removed in one global order
        of increasing log-alpha (a global threshold), as few as the size allows (kept sizes rounded up to
        `multiple_of`; at least one key-value group per layer). `uniform`: the same numbers in every
        layer (the rounded mean of the non-uniform counts), each layer keeping its highest-scoring units;
        `config` (the model's) is then checked to accept the sizes (LlamaConfig wants hidden_size
        divisible by num_attention_heads)."""
        target = (1.0 - ratio) * self.size.total
        rank = self._ranking()
        n = sum(r.numel() for r in rank.values())
        if self._params(self._counts(rank, n, multiple_of)) > target:
            raise RegpruneError(f"ratio {ratio} removes more than these structures can (each layer keeps at least "
                                "one key-value group and one multiple of FFN channels); lower the ratio")
        lo, hi = 0, n  # the fewest removed units (in rank order) that bring the size to the target
        while lo < hi:
            mid = (lo + hi) // 2
            if self._params(self._counts(rank, mid, multiple_of)) <= target:
                hi = mid
            else:
                lo = mid + 1
        counts = self._counts(rank, hi, multiple_of)
        if uniform:
            counts = self._uniform_counts(counts, target, multiple_of, config)
        return self._kept(counts)

    def _uniform_counts(self, counts: dict, target: float, multiple_of: int, config) -> dict:
        L = self.n_layers
        heads = range(max(1, round(sum(counts["heads"]) / L)), 0, -1) if "heads" in counts else [self.groups]
        hidden = range(counts["hidden"], 0, -multiple_of) if "hidden" in counts else [self.hidden]
        widths = sorted({_round_up(f, multiple_of, self.ffn) for f in range(1, self.ffn + 1)})
        for h in heads:
            for d in hidden:
                if config is not None and not _config_accepts(config, hidden_size=d,
                                                              num_attention_heads=h * self.n_rep,
                                                              num_key_value_heads=h):
                    continue

                def layout(f: int) -> dict:
                    c = {"heads": [h] * L, "ffn": [f] * L, "hidden": d}
                    return {s: v for s, v in c.items() if s in self.structures}

                if self._params(layout(widths[0])) > target:
                    continue
                # The largest FFN width that fits (the size grows with it): bisection over its multiples.
                lo, hi = 0, len(widths) - 1
                while lo < hi:
                    mid = (lo + hi + 1) // 2
                    lo, hi = (mid, hi) if self._params(layout(widths[mid])) <= target else (lo, mid - 1)
                return layout(widths[lo])
        raise RegpruneError("no uniform layout reaches the target size; lower the ratio or use the non-uniform one")

    def _kept(self, counts: dict) -> KeptStructure:
        la = self._ranking()  # kept: the highest-ranked units of each group

        def top(scores: torch.Tensor, k: int) -> list[int]:
            return sorted(scores.topk(k).indices.tolist())

        L = self.n_layers
        groups = [top(la["heads"][i], counts["heads"][i]) if "heads" in la else list(range(self.groups))
                  for i in range(L)]
        ffn = [top(la["ffn"][i], counts["ffn"][i]) if "ffn" in la else list(range(self.ffn)) for i in range(L)]
        removed = sorted(set(range(self.hidden)) - set(top(la["hidden"], counts["hidden"]))) if "hidden" in la \
            else []
        full = {"heads": [len(g) for g in groups], "ffn": [len(f) for f in ffn], "hidden": self.hidden - len(removed)}
        return KeptStructure(groups, ffn, removed, self._params(full))


def _round_up(n: int, multiple: int, cap: int) -> int:
    return min(cap, max(multiple, -(-n // multiple) * multiple))


def _config_accepts(config, **changes) -> bool:
    c = copy.deepcopy(config)
    for k, v in changes.items():
        setattr(c, k, v)
    try:
        c.validate() if hasattr(c, "validate") else None
    except Exception:  # the config classes raise their own validation error types
        return False
    return True
