"""Benchmark (issue 13, item 4): `regprune plan` against peaks measured on this machine (SmolLM2-135M).

The measured peaks are the peak resident memory (ru_maxrss) of the generality benchmark's pipelines
(bench/results/generality_smollm2.json: one process per pipeline, CPU, fp32, 48 steps x 4 x 512 tokens on
the calibration mixture, evaluation afterwards); the plan is computed for the same settings from the
model's config alone (device cpu, so its runtime term is this process's memory with the libraries loaded).

    python bench/plan_smollm2.py --data-dir DATA
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "results" / "generality_smollm2.json"
RESULTS = HERE / "results" / "plan_smollm2"
# pipeline -> (plan method, objective)
PIPELINES = {"slice+kd": ("slice+finetune", "kd"), "dress-kd": ("dress", "kd"), "slice+lm": ("slice+finetune", "lm"),
             "dress-lm": ("dress", "lm"), "trsp-kd": ("trsp", "kd"), "compresso-kd": ("compresso", "kd"),
             "slice+kd@r50": ("slice+finetune", "kd"), "dress-kd@r50": ("dress", "kd")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(HERE.parent.parent / "shared" / "data"))
    args = ap.parse_args()
    from regprune.formatting import table_with_notes
    from regprune.io import atomic_write_text
    from regprune.plan import GiB, plan

    rows = json.loads(SOURCE.read_text())["rows"]
    out, body = [], []
    for name, (method, objective) in PIPELINES.items():
        r = rows.get(name)
        if r is None or not r.get("peak_rss_bytes"):
            continue
        t = r["config"]["train"]
        p = plan("smollm2-135m", method, device="cpu", dtype="float32", batch_size=t["batch_size"], seq_len=512,
                 ratio=r.get("ratio") or 0.25, objective=objective, steps=t["steps"] or 48,
                 windows=r["calibration_record"]["regularize_windows"], calib=r["calibration"], data_dir=args.data_dir)
        measured = r["peak_rss_bytes"]
        err = p["peak_device_bytes"] / measured - 1
        out.append({"pipeline": name, "plan_method": method, "objective": objective, "measured_bytes": measured,
                    "plan_bytes": p["peak_device_bytes"], "relative_error": err, "plan": p})
        body.append([name, method, f"{measured / GiB:.2f}", f"{p['peak_device_bytes'] / GiB:.2f}",
                     f"{100 * err:+.1f}%", "yes" if abs(err) <= 0.15 else "NO"])
    notes = ["measured: peak resident memory of each pipeline's process (bench/results/generality_smollm2.json; "
             "2-core CPU, fp32, batch 4 x 512, KD with the cached top-256 teacher where named)",
             "plan: regprune.plan.plan for the same settings, from the config alone, device cpu",
             "compresso-kd: the plan misses about a third of the measured peak. The activations autograd keeps for "
             "its masked LoRA model match a real forward (tests/test_plan.py), and a 6-block SmolLM2-shaped model "
             "shows the same gap per block (plan 2.90 GiB, measured 3.67; DReSS on it: 3.34 and 3.39), so "
             "Compresso holds about one more block's activations per block somewhere outside the autograd graph "
             "the plan measures: not explained yet"]
    md = ["# `regprune plan` against measured peaks (SmolLM2-135M, CPU)", "",
          table_with_notes(["pipeline", "plan method", "measured (GiB)", "plan (GiB)", "error", "within 15%"], body,
                           notes)]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(f"{RESULTS}.json", json.dumps({"rows": out}, indent=1, default=str) + "\n")
    atomic_write_text(f"{RESULTS}.md", "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
