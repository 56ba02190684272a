"""How close is the cached teacher's top-k KL (with its tail bucket) to the exact KL, on SmolLM2-135M?

Student: the dense model with 25% of hidden channels sliced out (no training), i.e. a realistic
early-training student. For 8 WikiText-2 validation windows of 512 tokens (seed 0) it reports, per k, the
teacher's tail mass (mean, p99) and the coarsened KL against the exact KL, and the time per forward.

    python bench/tuning/teacher_topk_probe.py [--data-dir ../shared/data]
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import regprune
from regprune.train.objective import CachedTeacher, LiveTeacher, objective_loss

ap = argparse.ArgumentParser()
ap.add_argument("--data-dir", default="../shared/data")
ap.add_argument("--windows", type=int, default=8)
args = ap.parse_args()
torch.manual_seed(0)
loaded = regprune.load_model("smollm2-135m")
cal = regprune.build_calibration(loaded.tokenizer, "wikitext2:validation", num_samples=args.windows, seq_len=512,
                                 data_dir=args.data_dir, regularize_fraction=1.0)
w = cal.regularize
student = regprune.prune(loaded, method="slice", ratio=0.25, calib="wikitext2:validation", num_samples=16,
                         seq_len=512, data_dir=args.data_dir).model
live = LiveTeacher(loaded.model)
rows = torch.arange(len(w))
out = {"windows": len(w), "seq_len": 512, "student": "slice 25% (activation), untrained", "rows": []}
with torch.no_grad():
    t0 = time.perf_counter()
    exact = sum(objective_loss(student, w[i:i + 1], None, alpha=1.0, teacher=live)[0].item() for i in rows) / len(w)
    out["exact_kl"] = exact
    out["live_seconds"] = time.perf_counter() - t0
    for k in (16, 64, 256, 1024, 4096):
        t0 = time.perf_counter()
        cached = CachedTeacher.build(loaded.model, w, top_k=k, batch_size=2)
        build = time.perf_counter() - t0
        kl = sum(objective_loss(student, w[i:i + 1], None, alpha=1.0, teacher=cached, rows=rows[i:i + 1])[0].item()
                 for i in rows) / len(w)
        d = cached.describe()
        row = {"k": k, "kl": kl, "kl_over_exact": kl / exact, "tail_mass_mean": d["tail_mass_mean"],
               "tail_mass_p99": d["tail_mass_p99"], "build_seconds": build,
               "cache_mib": (cached.idx.numel() * 8 + cached.logp.numel() * 4 + cached.tail.numel() * 4) / 2**20}
        out["rows"].append(row)
        print(json.dumps(row), flush=True)
print(json.dumps(out, indent=2))
