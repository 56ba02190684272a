"""Multi-process training with torch.distributed and FSDP2 (`fully_shard`).

Launched with `torchrun --nproc-per-node N -m regprune prune ...` or `accelerate launch -m regprune prune
...` (both set WORLD_SIZE / RANK / LOCAL_RANK), every process runs the same pipeline on the same seeded
calibration windows; what differs is the training loop (train/loop.py), which runs inside `sharded()`:

- every decoder block, the decoder's own parameters (embeddings, final norm) and an untied LM head are
  `fully_shard`-ed over all processes (parameters become DTensors sharded along their first dimension; each
  process holds 1/N of the weights, gradients and AdamW state);
- each global batch is split across the processes (process r takes its r-th part), and each process's loss
  is weighted by its share of the batch's loss tokens, so the averaged gradient is the gradient of the
  global batch's mean loss: the same step as one process taking the whole batch;
- trainable tensors outside the sharded model (Compresso's masks and multipliers, TRSP's block weights)
  are replicated, and their gradients are averaged across processes explicitly;
- the DReSS proximal step and its diagnostics work on each process's shard, with the per-channel norms
  reduced across processes (`channel_sums`);
- when the loop ends, the parameters are gathered back into ordinary full tensors in place, and the model
  is a plain module again (no FSDP hooks), so slicing, evaluation and saving run as in one process. Only
  process 0 writes outputs.
"""
from __future__ import annotations

import contextlib
import logging
import os

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def launched() -> bool:
    """Started by torchrun / accelerate launch with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str = "cpu") -> str:
    """Join the process group torchrun / accelerate launch described in the environment (gloo on CPU, nccl
    on CUDA); return this process's device ("cuda" becomes cuda:LOCAL_RANK)."""
    from .models.load import resolve_device

    device = resolve_device(device)
    if not launched():
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = str(device).startswith("cuda")
    if cuda:
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
        log.info("process %d of %d (device %s)", rank(), world_size(), device)
    return device


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def gather_objects(obj) -> list:
    """Every process's `obj`, in rank order, on every process."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def sum_across(t: torch.Tensor) -> torch.Tensor:
    """Sum of `t` over the processes, differentiable (each process gets the gradient of the sum; FSDP's
    averaging of gradients then gives the gradient of a loss computed from it once); `t` in one process."""
    if world_size() == 1:
        return t
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(t)


class _SumForSharded(torch.autograd.Function):
    """Forward: the sum over processes. Backward: the gradient as it is, because each process then owns
    its own shard's part of the result (for penalties on sharded parameters computed outside FSDP's
    forward, whose gradients FSDP does not average)."""

    @staticmethod
    def forward(ctx, t):
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, grad):
        return grad


def channel_sums_with_grad(p: torch.Tensor, dim: int, idx: torch.Tensor, fn) -> torch.Tensor:
    """channel_sums with autograd to `p` (a parameter, sharded or not), for penalties added to the loss."""
    if not is_dtensor(p):
        sel = p.index_select(dim, idx)
        other = tuple(i for i in range(sel.dim()) if i != dim)
        return fn(sel).sum(dim=other) if other else fn(sel)
    local = p.to_local()
    _, off = local_part(p.detach())
    if dim == 0 and _row_sharded(p):
        own = (idx >= off) & (idx < off + local.shape[0])
        part = fn(local.index_select(0, idx[own] - off)).reshape(int(own.sum()), -1).sum(1)
        out = torch.zeros(len(idx), dtype=part.dtype, device=local.device).index_put((own.nonzero()[:, 0],), part)
    else:
        sel = local.index_select(dim, idx)
        other = tuple(i for i in range(sel.dim()) if i != dim)
        out = fn(sel).sum(dim=other) if other else fn(sel)
    return _SumForSharded.apply(out) if _row_sharded(p) else out


def is_dtensor(t) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover
        return False
    return isinstance(t, DTensor)


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a sharded DTensor (a collective: every process must call it); a plain tensor as is."""
    return t.full_tensor() if is_dtensor(t) else t


def local_part(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(this process's part of `t`, offset of that part along dim 0); a plain tensor is its own part at 0."""
    if not is_dtensor(t):
        return t, 0
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    _, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
    return t.to_local(), offset[0] if offset else 0


def _row_sharded(t) -> bool:
    if not is_dtensor(t):
        return False
    from torch.distributed.tensor import Shard

    if any(isinstance(p, Shard) and p.dim != 0 for p in t.placements):
        raise NotImplementedError("regprune's sharded channel operations expect FSDP's dim-0 sharding")
    return any(isinstance(p, Shard) for p in t.placements)


def channel_sums(p: torch.Tensor, dim: int, idx: torch.Tensor, fn) -> torch.Tensor:
    """For each channel c in `idx` along `dim`: sum over the channel's elements of fn(element), in fp32 and
    over the whole tensor (reduced across processes when `p` is sharded)."""
    local, off = local_part(p.detach())
    sharded = _row_sharded(p)
    out = torch.zeros(len(idx), dtype=torch.float32, device=local.device)
    if dim == 0 and sharded:  # each process owns some of the channels
        own = (idx >= off) & (idx < off + local.shape[0])
        if own.any():
            sel = local.index_select(0, idx[own] - off).float()
            out[own] = fn(sel).reshape(len(sel), -1).sum(1)
    else:
        sel = local.index_select(dim, idx).float()
        other = tuple(i for i in range(sel.dim()) if i != dim)
        out = fn(sel).sum(dim=other) if other else fn(sel)
    if sharded:
        dist.all_reduce(out)
    return out


def scale_channels(p: torch.Tensor, dim: int, idx: torch.Tensor, transform) -> None:
    """In place: replace the slices of `idx` along `dim` by transform(slices, positions in idx), on this
    process's part of `p` (every process transforms the slices it holds)."""
    local, off = local_part(p.data)
    positions = torch.arange(len(idx), device=idx.device)
    if dim == 0 and _row_sharded(p):
        own = (idx >= off) & (idx < off + local.shape[0])
        if not own.any():
            return
        rows, positions = idx[own] - off, positions[own]
    else:
        rows = idx
    local.index_copy_(dim, rows, transform(local.index_select(dim, rows), positions))


def _blocks(model):
    from .arch import get_arch
    from .arch.registry import _get

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return list(_get(base, get_arch(base).layers))


_HOOK_DICTS = ("_forward_pre_hooks", "_forward_hooks", "_backward_pre_hooks", "_backward_hooks", "_state_dict_hooks",
               "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")


def _from_fsdp(fn) -> bool:
    fn = getattr(fn, "hook", fn)  # torch wraps some hooks
    fn = getattr(fn, "func", fn)  # functools.partial
    fn = getattr(fn, "__func__", fn)
    code = getattr(fn, "__code__", None)
    return code is not None and "/distributed/fsdp/" in code.co_filename.replace("\\", "/")


def _unshard_in_place(model) -> None:
    """Gather every sharded parameter into a full tensor and remove FSDP from the modules, leaving an
    ordinary module (FSDP2 has no public inverse of fully_shard)."""
    from torch.distributed._composable_state import _module_state_mapping
    from torch.distributed.fsdp import FSDPModule

    fulls: dict[int, torch.nn.Parameter] = {}
    for mod in model.modules():
        for name, p in mod._parameters.items():
            if p is not None and is_dtensor(p) and id(p) not in fulls:
                fulls[id(p)] = torch.nn.Parameter(p.full_tensor(), requires_grad=p.requires_grad)
    for mod in model.modules():
        if isinstance(mod, FSDPModule):
            state = mod._get_fsdp_state()
            for h in {id(h): h for h in (state._pre_forward_hook_handle, state._post_forward_hook_handle)
                      if h is not None}.values():
                h.remove()
            mod.__class__ = next(b for b in type(mod).__bases__ if b is not FSDPModule)
            _module_state_mapping.pop(mod, None)
        for attr in _HOOK_DICTS:  # FSDP's state-dict hooks (and any other hook it left)
            hooks = getattr(mod, attr, None)
            for hid in [h for h, fn in (hooks or {}).items() if _from_fsdp(fn)]:
                del hooks[hid]
        for key in [k for k in mod.__dict__ if k.startswith("__composable")
                    or k in ("_is_fsdp_managed_module", "_fsdp_use_orig_params")]:
            del mod.__dict__[key]
        for name, p in list(mod._parameters.items()):
            if p is not None and id(p) in fulls:
                mod._parameters[name] = fulls[id(p)]


class _ObjectiveRoot(torch.nn.Module):
    """The root FSDP unit: its forward is the training objective on the wrapped model."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, *args, **kwargs):
        from .train.objective import objective_loss

        return objective_loss(self.model, *args, **kwargs)


class Sharding:
    """What the training loop needs to know inside `sharded()`: the world, this process's part of a batch,
    and the parameter objects after sharding."""

    def __init__(self, world: int, rank_: int, renamed: dict[int, torch.nn.Parameter], root=None):
        self.world, self.rank, self.renamed, self.root = world, rank_, renamed, root


    @property
    def active(self) -> bool:
        return self.world > 1

    def param(self, p):
        """The parameter that replaced `p` when the model was sharded (`p` itself if it was not)."""
        return self.renamed.get(id(p), p)

    def local(self, rows: torch.Tensor, batch: torch.Tensor):
        if not self.active:
            return rows, batch
        n = len(rows) // self.world
        part = slice(self.rank * n, (self.rank + 1) * n)
        return rows[part], batch[part]

    def token_weight(self, local_tokens: float) -> float:
        """Factor that makes this process's mean loss contribute its share of the global batch mean (FSDP
        averages gradients over processes)."""
        if not self.active:
            return 1.0
        t = torch.tensor([float(local_tokens)], dtype=torch.float64)
        dist.all_reduce(t)
        return self.world * float(local_tokens) / max(float(t), 1.0)

    def mean(self, values: list[float]) -> list[float]:
        """Mean over processes of a few per-process numbers (for the logged history)."""
        if not self.active:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return (t / self.world).tolist()

    def average_replicated_grads(self, params) -> None:
        """Average across processes the gradients of trainable tensors FSDP does not manage."""
        if not self.active:
            return
        for p in params:
            if p.grad is not None and not is_dtensor(p):
                dist.all_reduce(p.grad)
                p.grad /= self.world


@contextlib.contextmanager
def sharded(model, batch_size: int):
    """Shard `model` over the processes for the duration of a training loop (a no-op in one process)."""
    world = world_size()
    if world == 1:
        yield Sharding(1, 0, {})
        return
    if batch_size % world:
        from .errors import RegpruneError

        raise RegpruneError(f"--batch-size {batch_size} must be a multiple of the number of processes ({world}): "
                            "each process takes an equal part of every batch")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    device = next(model.parameters()).device
    mesh = init_device_mesh(device.type, (world,))
    before = {(id(m), n): p for m in model.modules() for n, p in m._parameters.items() if p is not None}
    # The units follow how the objective runs the model (train/objective.py): the decoder, then the LM head
    # by itself in chunks. Every block is a unit; the decoder (embeddings, final norm) is one, and an untied
    # head another; a head tied to the embeddings forms one unit with the decoder (one shared parameter).
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder, head = base.get_decoder(), base.get_output_embeddings()
    tied = head is not None and any(hp is dp for hp in head.parameters() for dp in decoder.parameters())
    for block in _blocks(model):
        fully_shard(block, mesh=mesh)
    if tied:  # one unit of two modules, so that both see the shared parameter gathered
        fully_shard([decoder, head], mesh=mesh)
    else:
        fully_shard(decoder, mesh=mesh)
        if head is not None:
            fully_shard(head, mesh=mesh)
    root = _ObjectiveRoot(model)  # FSDP wants one root whose forward runs first: the objective's own call
    fully_shard(root, mesh=mesh)
    renamed = {}
    for m in model.modules():
        for n, p in m._parameters.items():
            old = before.get((id(m), n))
            if old is not None and p is not old:
                renamed[id(old)] = p
    try:
        yield Sharding(world, rank(), renamed, root)
    finally:
        _unshard_in_place(root)
        root.model = None


__all__ = ["world_size", "rank", "is_main", "launched", "init_from_env", "barrier", "broadcast_object", "gather_objects", "full",
           "sum_across",
           "local_part", "channel_sums", "channel_sums_with_grad", "scale_channels", "sharded", "Sharding"]
