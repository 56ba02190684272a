"""Run by tests/test_distributed.py under `torchrun --nproc-per-node N`: one regprune.prune call on the
tiny model; process 0 writes the pruned weights and the record for the test to compare."""
import json
import sys
from pathlib import Path

import torch

import regprune
from regprune import distributed


def main() -> None:
    model_dir, data_dir, out, spec = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    distributed.init_from_env("cpu")
    recovery = spec.pop("recovery", None)
    if recovery is not None:
        from regprune.train.loop import TrainConfig
        from regprune.train.lora import RecoveryConfig

        recovery = RecoveryConfig(train=TrainConfig(**recovery.pop("train")), **recovery)
    kill = spec.pop("kill_after", None)
    if kill is not None:  # die in the step after checkpoint `step` of training call `call` (as test_resume does)
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        import pytest

        from test_resume import _kill_after

        with pytest.MonkeyPatch.context() as m:
            _kill_after(m, *kill)
            regprune.prune(model_dir, data_dir=data_dir, recovery=recovery, **spec)
        return
    res = regprune.prune(model_dir, data_dir=data_dir, recovery=recovery, **spec)
    from torch.distributed.fsdp import FSDPModule

    # after the loop the model is a plain module again: no FSDP class, hook or DTensor left
    left = [n for n, m in res.model.named_modules() if isinstance(m, FSDPModule)
            or any(distributed._from_fsdp(f) for a in distributed._HOOK_DICTS for f in getattr(m, a, {}).values())]
    left += [n for n, p in res.model.named_parameters() if distributed.is_dtensor(p)]
    assert not left, left
    if distributed.is_main():
        torch.save({k: v.detach().clone() for k, v in res.model.state_dict().items()}, f"{out}/state.pt")
        rec = {k: res.record.get(k) for k in ("history", "method_details", "recovery", "distributed")}
        with open(f"{out}/record.json", "w") as f:
            json.dump(rec, f, default=str)
    distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
