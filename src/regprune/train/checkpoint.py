"""Resumable training: checkpoints every N optimizer steps, and `--resume` from the last one.

A pruning run may call the training loop more than once (TRSP: stage 1 then stage 2; any method, then the
LoRA recovery). `RunCheckpoints` owns one directory for the whole run and numbers those calls in the order
they happen (`00/`, `01/`, ...). Each call's checkpoint holds what the step needs to continue exactly:

- the values of every trained parameter (the optimizer's param groups, by position): the whole model for
  full fine-tuning, only the adapters for LoRA, only the block weights for TRSP stage 1; parameters that
  are not trained do not change in the loop and are rebuilt by the (deterministic) code before it;
- the optimizer and lr-scheduler state, the step, the history so far, the RNG states (torch, CUDA,
  Python, NumPy) and the method's own small state (`resumable_state`: Compresso's step counter, the LoRA
  recovery's early-stopping record and best adapter, the mask sampler's generator, ...);
- the data position is the step: the windows come from a seeded permutation that is replayed.

In a multi-process run (regprune/distributed.py) every process writes its own file with its shards of
the parameters and of the optimizer state (`state-stepK-rankRofN.pt`), and a resume needs as many
processes.

A finished call keeps its final checkpoint, so that a resumed run rebuilds the model it produced without
training again; the code between calls (slicing, block removal) then runs exactly as before. Every file
is written to a temporary name and renamed, so a kill during a save leaves the previous checkpoint intact.
The directory starts with `run.json`, the identity of the run (model, method, every setting): a resume
with other settings is refused, with the settings that differ.
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import random
import shutil
from pathlib import Path

import torch

from .. import distributed
from ..errors import RegpruneError
from ..io import atomic_write_json

log = logging.getLogger(__name__)

_ACTIVE: contextvars.ContextVar["RunCheckpoints | None"] = contextvars.ContextVar("regprune_checkpoints",
                                                                                  default=None)
RUN_FILE = "run.json"


def checkpoint_dir_for(out: str | os.PathLike) -> Path:
    """Where a run writing `out` keeps its checkpoints: `.NAME.checkpoints` next to it (removed once `out`
    is complete)."""
    out = Path(out).expanduser().absolute()
    return out.parent / f".{out.name}.checkpoints"


def _canonical(obj):
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} then, {vb!r} now")
    return out


class RunCheckpoints:
    """The checkpoints of one pruning run (see the module docstring). `every`: optimizer steps between
    checkpoints (None: only when a training call finishes). `resume`: continue from what the directory holds;
    without it an existing checkpoint directory is refused (it belongs to an interrupted run)."""

    def __init__(self, directory: str | os.PathLike, identity: dict, *, every: int | None = None,
                 resume: bool = False):
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise RegpruneError(f"checkpoint_every must be a whole number >= 1, got {every!r}")
        self.dir = Path(directory)
        self.every = every
        self.identity = _canonical(identity)
        self.calls = 0
        run_file = self.dir / RUN_FILE
        exists = self.dir.exists()
        distributed.barrier()  # every process has looked before process 0 creates it
        if exists:
            if not run_file.is_file():
                raise RegpruneError(f"{self.dir} exists but holds no regprune checkpoint ({RUN_FILE} is missing); "
                                    "move it away or choose another output path")
            if not resume:
                raise RegpruneError(
                    f"an interrupted run left checkpoints in {self.dir} ({self.describe()}): add --resume "
                    "(resume=True) to continue it, or delete that directory to start over")
            saved = json.loads(run_file.read_text())
            diff = _differences(saved.get("identity", {}), self.identity)
            if diff:
                raise RegpruneError(f"--resume: the checkpoints in {self.dir} are of a run with other settings ("
                                    + "; ".join(diff[:6]) + (" ..." if len(diff) > 6 else "")
                                    + "): resume with the same settings, or delete that directory to start over")
            log.info("resuming from %s (%s)", self.dir, self.describe())
        else:
            if resume:
                log.warning("--resume: no checkpoints in %s, starting from the beginning", self.dir)
            if distributed.is_main():
                self.dir.mkdir(parents=True)
                atomic_write_json(run_file, {"format": "regprune-checkpoints/1", "identity": self.identity,
                                             "processes": distributed.world_size()})
            distributed.barrier()

    def describe(self) -> str:
        parts = []
        for d in sorted(p for p in self.dir.iterdir() if p.is_dir() and p.name.isdigit()):
            meta = d / "meta.json"
            if meta.is_file():
                m = json.loads(meta.read_text())
                parts.append(f"{m['desc']}: step {m['step']} of {m['steps']}")
        return "; ".join(parts) or "no training step saved yet"

    def next_call(self, desc: str) -> "LoopCheckpoint":
        call = LoopCheckpoint(self.dir / f"{self.calls:02d}", desc, self.every)
        self.calls += 1
        return call

    def remove(self) -> None:
        """Delete the checkpoints (the run's output is complete; process 0 of a multi-process run)."""
        if distributed.is_main():
            shutil.rmtree(self.dir, ignore_errors=True)

    @contextlib.contextmanager
    def active(self):
        """Make these the checkpoints of every training loop run inside the block."""
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)


def active_checkpoints() -> RunCheckpoints | None:
    return _ACTIVE.get()


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np

        state["numpy"] = np.random.get_state()
    except ImportError:  # pragma: no cover - numpy comes with torch's usual installs
        pass
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])


def _snapshot(value):
    return {"generator_state": value.get_state()} if isinstance(value, torch.Generator) else value


def _restore_in_place(target, saved) -> None:
    if isinstance(target, torch.Generator):
        target.set_state(saved["generator_state"])
    elif isinstance(target, dict):
        target.clear()
        target.update(saved)
    elif isinstance(target, list):
        target[:] = saved
    else:
        raise TypeError(f"resumable state must be dicts, lists or torch generators, got {type(target).__name__}")


class LoopCheckpoint:
    """The checkpoint of one training-loop call."""

    def __init__(self, directory: Path, desc: str, every: int | None):
        self.dir, self.desc, self.every = directory, desc, every

    def due(self, step: int, steps: int) -> bool:
        """Save after optimizer step `step` (1-based)?"""
        return step == steps or (self.every is not None and step % self.every == 0)

    def _state_file(self, step: int) -> Path:
        return self.dir / f"state-step{step}-rank{distributed.rank()}of{distributed.world_size()}.pt"

    def save(self, *, step: int, steps: int, finished: bool, groups: list[dict], optimizer, scheduler,
             history: list, state: dict) -> None:
        """Each process writes its own part (its shards when the model is sharded), then process 0 names
        the step in meta.json; only then are older steps' files removed, so a kill at any point leaves one
        complete step."""
        if distributed.is_main():
            self.dir.mkdir(parents=True, exist_ok=True)
        distributed.barrier()
        payload = {
            "step": step,
            "params": [[distributed.local_part(p.detach())[0].cpu().clone() for p in g["params"]] for g in groups],
            "optimizer": _localize(optimizer.state_dict()),
            "scheduler": scheduler.state_dict(),
            "history": history,
            "rng": _rng_state(),
            "state": {k: _snapshot(v) for k, v in state.items()},
            "finished": finished,
        }
        target = self._state_file(step)
        tmp = target.with_suffix(".tmp")
        torch.save(payload, tmp)
        os.replace(tmp, target)
        distributed.barrier()
        if distributed.is_main():
            atomic_write_json(self.dir / "meta.json", {"desc": self.desc, "step": step, "steps": steps,
                                                       "finished": finished, "processes": distributed.world_size()})
        distributed.barrier()
        for old in self.dir.glob(f"state-step*-rank{distributed.rank()}of{distributed.world_size()}.pt"):
            if old != target:
                old.unlink(missing_ok=True)
        log.info("checkpoint: %s, step %d of %d -> %s", self.desc, step, steps, self.dir)

    def load(self, *, steps: int, groups: list[dict], optimizer, scheduler,
             state: dict) -> tuple[int, list, bool] | None:
        """Restore the saved step into the loop's objects; return (step, history, finished), or None when
        nothing is saved."""
        meta_file = self.dir / "meta.json"
        if not meta_file.is_file():
            return None
        meta = json.loads(meta_file.read_text())
        if meta["desc"] != self.desc or meta["steps"] != steps:
            raise RegpruneError(f"--resume: checkpoint {self.dir} is of {meta['desc']!r} ({meta['steps']} steps), "
                                f"but this run's training call {self.dir.name} is {self.desc!r} ({steps} steps); "
                                "delete the checkpoint directory to start over")
        if meta.get("processes", 1) != distributed.world_size():
            raise RegpruneError(f"--resume: checkpoint {self.dir} was written by {meta.get('processes', 1)} process(es); "
                                f"resume it with as many (this run has {distributed.world_size()})")
        f = self._state_file(meta["step"])
        if not f.is_file():
            raise RegpruneError(f"--resume: {f} is missing (the checkpoint is incomplete); delete {self.dir.parent} "
                                "to start over")
        payload = torch.load(f, map_location="cpu", weights_only=False)
        shapes = [[tuple(distributed.local_part(p)[0].shape) for p in g["params"]] for g in groups]
        if [[tuple(t.shape) for t in g] for g in payload["params"]] != shapes:
            raise RegpruneError(f"--resume: the parameters saved in {self.dir} do not match this run's model; "
                                "delete the checkpoint directory to start over")
        with torch.no_grad():
            for g, saved in zip(groups, payload["params"]):
                for p, t in zip(g["params"], saved):
                    local = distributed.local_part(p.data)[0]
                    local.copy_(t.to(local.device, local.dtype))
        optimizer.load_state_dict(payload["optimizer"])
        _shard_optimizer_state(optimizer)
        scheduler.load_state_dict(payload["scheduler"])
        _set_rng_state(payload["rng"])
        for k, v in payload["state"].items():
            if k not in state:
                raise RegpruneError(f"--resume: checkpoint {self.dir} holds state {k!r} that this run does not have")
            _restore_in_place(state[k], v)
        log.info("resumed %s at step %d of %d", self.desc, payload["step"], steps)
        return payload["step"], payload["history"], payload["finished"]


def _localize(obj):
    """An optimizer state dict with every sharded tensor replaced by this process's part."""
    if distributed.is_dtensor(obj):
        return obj.to_local().detach().clone()
    if isinstance(obj, dict):
        return {k: _localize(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_localize(v) for v in obj]
    return obj


def _shard_optimizer_state(optimizer) -> None:
    """After loading local parts: make the state of sharded parameters DTensors like their parameters."""
    if distributed.world_size() == 1:
        return
    from torch.distributed.tensor import DTensor

    for group in optimizer.param_groups:
        for p in group["params"]:
            if not distributed.is_dtensor(p):
                continue
            local_shape = p.to_local().shape
            st = optimizer.state.get(p, {})
            for k, v in list(st.items()):
                if isinstance(v, torch.Tensor) and not distributed.is_dtensor(v) and v.dim() > 0 \
                        and v.shape == local_shape:
                    st[k] = DTensor.from_local(v.to(p.to_local().device), p.device_mesh, p.placements,
                                               shape=p.shape, stride=p.stride(), run_check=False)


__all__ = ["RunCheckpoints", "LoopCheckpoint", "active_checkpoints", "checkpoint_dir_for"]
