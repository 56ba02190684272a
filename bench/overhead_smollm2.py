"""Benchmark (issue 13, item 7): the per-step overhead of regprune's own work in a training step.

A DReSS run on SmolLM2-135M with the default objective (KD, cached top-256 teacher) and the benchmark's
usual batch (4 x 512 tokens). The training loop times, per optimizer step (train/loop.py): the batch
(`t_data`: drawing the windows, moving them to the device), the method's after-step hook (`t_after_step`:
DReSS's proximal step on every regularized slice), the diagnostics (`t_metrics`: energy left and penalty
value), and the whole step (`t_step`: these plus forward, backward, clipping and the optimizer). The
target: data + prox + diagnostics under 5% of the step. Measured with diagnostics every step (the
default) and every 8 steps (`--metrics-every 8`).

    python bench/overhead_smollm2.py --data-dir DATA
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "overhead_smollm2"
STEPS = 6
PARTS = ("t_data", "t_after_step", "t_metrics")


def run(data_dir: str, metrics_every: int) -> dict:
    import regprune

    loaded = regprune.load_model("smollm2-135m")
    t0 = time.perf_counter()
    res = regprune.prune(loaded, method="dress", ratio=0.25, steps=STEPS, batch_size=4, lr=3e-4, warmup_steps=2,
                         calib="c4:train@0.5,wikitext2:validation@0.5", num_samples="auto", seq_len=512,
                         data_dir=data_dir, inplace=True, metrics_every=metrics_every)
    hist = res.record["history"][1:]  # the first step carries one-time allocations
    step = statistics.mean(h["t_step"] for h in hist)
    parts = {k: statistics.mean(h[k] for h in hist) for k in PARTS}
    return {"metrics_every": metrics_every, "steps_measured": len(hist), "mean_step_seconds": step,
            "mean_part_seconds": parts, "overhead_fraction": sum(parts.values()) / step,
            "fractions": {k: v / step for k, v in parts.items()},
            "wall_seconds": time.perf_counter() - t0, "per_step": [{k: h[k] for k in ("step", "t_step", *PARTS)}
                                                                   for h in res.record["history"]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(HERE.parent.parent / "shared" / "data"))
    ap.add_argument("--note", default="", help="what else ran on the machine meanwhile")
    args = ap.parse_args()
    from regprune.formatting import table_with_notes
    from regprune.io import atomic_write_text
    from regprune.record import versions

    rows = [run(args.data_dir, n) for n in (1, 8)]
    protocol = {
        "model": "smollm2-135m (fp32, CPU)", "method": "dress, ratio 0.25, l2 prox, lam 4",
        "training": f"{STEPS} AdamW steps x 4 x 512 tokens, objective kd with the cached top-256 teacher; the "
                    "first step is left out of the means",
        "timers": "train/loop.py per step: t_data (batch), t_after_step (DReSS proximal step), t_metrics "
                  "(diagnostics), t_step (the whole step)",
        "hardware": "2 CPU cores, torch CPU build" + (f"; {args.note}" if args.note else ""),
    }
    head = ["diagnostics every", "step (s)", "data", "prox", "diagnostics", "overhead (sum)", "target"]
    body = [[f"{r['metrics_every']} step(s)", f"{r['mean_step_seconds']:.2f}",
             *(f"{100 * r['fractions'][k]:.2f}%" for k in PARTS), f"{100 * r['overhead_fraction']:.2f}%",
             "< 5%: " + ("met" if r["overhead_fraction"] < 0.05 else "NOT met")] for r in rows]
    md = ["# Per-step overhead of regprune's own work (SmolLM2-135M, DReSS)", "",
          table_with_notes(head, body, [f"{k}: {v}" for k, v in protocol.items()])]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(f"{RESULTS}.json", json.dumps({"protocol": protocol, "rows": rows, "versions": versions()},
                                                    indent=1) + "\n")
    atomic_write_text(f"{RESULTS}.md", "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
