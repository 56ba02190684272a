"""SliceGPT (Ashkboos et al., 2024), in our own code.

1. Fuse every RMSNorm's weight into the linear layers that read its output (and the final norm into the
   LM head); the norms are then pure x/rms(x), which commutes with an orthogonal rotation of x.
2. Collect calibration covariances of the residual stream at the input of every attention and MLP and
   at the final norm (one forward pass of the dense model), and take their eigenvectors (PCA).
3. Rotate: embeddings and writers produce the residual in the next basis, readers and the LM head read
   it in that basis, and each residual connection gets a shortcut Q_inᵀ·Q_out. Keep the d' components
   with the largest variance.

Deviation from the paper, stated in the record: the bases come from the dense model's activations in
one pass, not layer by layer from the already-sliced model's activations. A model with tied input and
output embeddings is untied (the final norm's weight is fused into the LM head only).
"""
from __future__ import annotations

import logging
import math

import torch
from torch import nn
from tqdm.auto import tqdm

from ...arch import get_arch
from ...arch import head_dim as arch_head_dim
from ...models.rotated import add_shortcuts, shortcut_classes
from ...surgery.layers import get_layers
from ..base import CalibrationData, MethodResult, PruningMethod, register_method
from ..selection import num_removed
from .config import SliceGptConfig

log = logging.getLogger(__name__)


def _groups(spec) -> tuple[list[str], list[str], str, str]:
    """Readers after the attention norm, readers after the MLP norm, and the two writers."""
    attn_r = [r for r in spec.readers if r.startswith("self_attn.")]
    mlp_r = [r for r in spec.readers if r.startswith("mlp.")]
    attn_w = [w for w in spec.writers if w.startswith("self_attn.")]
    mlp_w = [w for w in spec.writers if w.startswith("mlp.")]
    if len(spec.layer_norms) != 2 or len(attn_w) != 1 or len(mlp_w) != 1 or len(attn_r) + len(mlp_r) != len(spec.readers):
        raise ValueError(f"SliceGPT needs a pre-norm attention + MLP block; {spec.model_types} does not fit")
    return attn_r, mlp_r, attn_w[0], mlp_w[0]


@torch.no_grad()
def residual_covariances(model, windows: torch.Tensor, batch_size: int = 4, onload: str | None = None
                         ) -> list[torch.Tensor]:
    """Uncentered covariances (float64, d×d, per token) of the residual stream at every norm's input:
    [attn_0, mlp_0, attn_1, mlp_1, ..., final]. `onload`: run the model on this device one block at a time
    (pipelines/sequential.py); the covariances are accumulated in host memory either way."""
    spec = get_arch(model)
    norms = []
    for block in get_layers(model):
        norms += [block.get_submodule(n) for n in spec.layer_norms]
    norms.append(model.get_submodule(spec.final_norm))
    d = model.config.hidden_size
    cov = [torch.zeros(d, d, dtype=torch.float64) for _ in norms]
    count = [0]

    def hook(i):
        def f(module, args):
            x = args[0].detach().reshape(-1, d).double().cpu()
            cov[i].add_(x.T @ x)
        return f

    hooks = [n.register_forward_pre_hook(hook(i)) for i, n in enumerate(norms)]
    device = next(model.parameters()).device
    batches = [windows[i:i + batch_size] for i in range(0, len(windows), batch_size)]
    try:
        if onload is not None:  # the norms' hooks fire as each block runs on the device
            from ...pipelines.sequential import SequentialForward

            SequentialForward(model, onload).run(batches, on_final=lambda h, ids: None)
            count[0] = sum(b.numel() for b in batches)
        else:
            for b in tqdm(batches, desc="SliceGPT covariances"):
                model(input_ids=b.to(device), use_cache=False)
                count[0] += b.numel()
    finally:
        for h in hooks:
            h.remove()
    return [c / count[0] for c in cov]


def _pca(cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvectors by descending eigenvalue (columns), and the eigenvalues."""
    vals, vecs = torch.linalg.eigh(cov)
    order = torch.argsort(vals, descending=True)
    return vecs[:, order], vals[order]


@torch.no_grad()
def rotate_and_slice(model, covs: list[torch.Tensor], d_new: int, rotation: str) -> tuple[nn.Module, dict]:
    """Rotate and slice `model` in place; returns it (class changed for per-layer rotation) and details."""
    spec = get_arch(model)
    attn_r, mlp_r, attn_w, mlp_w = _groups(spec)
    layers = get_layers(model)
    d = model.config.hidden_size
    n_layers = len(layers)
    if rotation == "shared":
        q, vals = _pca(sum(c / c.trace() for c in covs))
        bases = [q] * len(covs)
        kept_var = [float(vals[:d_new].sum() / vals.sum())]
    else:
        bases, kept_var = [], []
        for c in covs:
            q, vals = _pca(c)
            bases.append(q)
            kept_var.append(float(vals[:d_new].sum() / vals.sum()))
    sliced = [q[:, :d_new] for q in bases]  # d × d'

    def read(lin: nn.Linear, gamma: torch.Tensor, q: torch.Tensor) -> None:
        w = lin.weight.double() * gamma.double()[None, :]
        lin.weight = nn.Parameter((w @ q).to(lin.weight.dtype), requires_grad=lin.weight.requires_grad)
        lin.in_features = q.shape[1]

    def write(lin: nn.Linear, q: torch.Tensor) -> None:
        lin.weight = nn.Parameter((q.T @ lin.weight.double()).to(lin.weight.dtype))
        if lin.bias is not None:
            lin.bias = nn.Parameter((q.T @ lin.bias.double()).to(lin.bias.dtype))
        lin.out_features = q.shape[1]

    emb = model.get_input_embeddings()
    head = model.get_submodule(spec.lm_head)
    tied = head.weight is emb.weight
    final_norm = model.get_submodule(spec.final_norm)
    head_w = head.weight.detach().double().clone()
    emb.weight = nn.Parameter((emb.weight.double() @ sliced[0]).to(emb.weight.dtype))
    emb.embedding_dim = d_new
    shortcuts = []
    for i, block in enumerate(layers):
        q_attn, q_mlp, q_out = sliced[2 * i], sliced[2 * i + 1], sliced[2 * i + 2]
        ln_attn, ln_mlp = (block.get_submodule(n) for n in spec.layer_norms)
        for r in attn_r:
            read(block.get_submodule(r), ln_attn.weight, q_attn)
        for r in mlp_r:
            read(block.get_submodule(r), ln_mlp.weight, q_mlp)
        write(block.get_submodule(attn_w), q_mlp)
        write(block.get_submodule(mlp_w), q_out)
        shortcuts.append((q_mlp.T @ q_attn, q_out.T @ q_mlp))  # nn.Linear weights: y = x @ (Q_inᵀ Q_out)
    # The LM head reads the final norm's output; the norm's weight is fused into it.
    head.weight = nn.Parameter((head_w * final_norm.weight.double()[None, :] @ sliced[-1]).to(emb.weight.dtype))
    head.in_features = d_new
    # Pure RMS norms over d' channels: weight sqrt(d/d') and eps*d/d' normalize by the d-channel RMS, as the
    # dense model did (exact when the dropped components are zero).
    scale = math.sqrt(d / d_new)
    norms = [block.get_submodule(n) for block in layers for n in spec.layer_norms] + [final_norm]
    for norm in norms:
        norm.weight = nn.Parameter(torch.full((d_new,), scale, dtype=norm.weight.dtype))
    config = model.config
    if spec.eps_attr and getattr(config, spec.eps_attr, None) is not None:
        # Every norm built from this config value gets it scaled (as a reload would build them), including
        # norms over other axes such as Qwen3's q_norm/k_norm, which then see a slightly larger eps.
        old_eps = getattr(config, spec.eps_attr)
        setattr(config, spec.eps_attr, old_eps * d / d_new)
        for module in model.modules():
            if getattr(module, "variance_epsilon", None) == old_eps:
                module.variance_epsilon = old_eps * d / d_new
    fields = spec.config
    if getattr(config, fields.head_dim, None) is None:
        setattr(config, fields.head_dim, arch_head_dim(config))
    setattr(config, fields.hidden, d_new)
    config.tie_word_embeddings = False
    if tied or getattr(model, "_tied_weights_keys", None):
        model._tied_weights_keys = {} if isinstance(getattr(model, "_tied_weights_keys", None), dict) else []
    extra = 0
    if rotation == "per-layer":
        base = config.model_type
        cfg_cls, model_cls = shortcut_classes(base)
        config.__class__ = cfg_cls
        model.__class__ = model_cls
        add_shortcuts(model)
        for block, (s_attn, s_mlp) in zip(layers, shortcuts):
            block.attn_shortcut.weight.copy_(s_attn.to(block.attn_shortcut.weight.dtype))
            block.mlp_shortcut.weight.copy_(s_mlp.to(block.mlp_shortcut.weight.dtype))
        extra = 2 * n_layers * d_new * d_new
    details = {"hidden_size_before": d, "hidden_size_after": d_new, "rotation": rotation,
               "model_type": config.model_type, "untied_embeddings": tied,
               "shortcut_parameters": extra, "kept_variance": kept_var,
               "pca": "uncentered covariance of the dense model's residual stream at each norm input, one pass"}
    return model, details


@register_method
class SliceGptMethod(PruningMethod):
    name = "slicegpt"
    config_cls = SliceGptConfig

    def check_model(self, model_config, config) -> None:
        super().check_model(model_config, config)
        _groups(get_arch(model_config))
        num_removed(model_config.hidden_size, config.ratio, config.multiple_of, model_config)

    def run(self, model, calib: CalibrationData, config: SliceGptConfig) -> MethodResult:
        model.eval()
        d = model.config.hidden_size
        d_new = d - num_removed(d, config.ratio, config.multiple_of, model.config)
        windows = calib.regularize if config.num_windows is None else calib.regularize[: config.num_windows]
        covs = residual_covariances(model, windows, onload=calib.onload)
        model, details = rotate_and_slice(model, covs, d_new, config.rotation)
        details["calibration_windows"] = len(windows)
        log.info("SliceGPT (%s): hidden %d -> %d; kept variance min %.3f", config.rotation, d, d_new,
                 min(details["kept_variance"]))
        return MethodResult(model, details)
