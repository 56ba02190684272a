"""TRSP probe: the LM-loss gradient of each block's scale alpha_i at alpha = 1 (SmolLM2-135M).

lam1 is in the same units (nats per token per unit of alpha): a block whose |dLM/dalpha| is below lam1
is pulled toward 0 by the l1 penalty. Also prints each block's identity gap ||out - in||^2 / ||in||^2,
the quantity stage 2 penalizes (lam2's scale).

    python bench/tuning/trsp_alpha_gradients.py [N_WINDOWS]
"""
import json
import os
import sys
import time

import torch

import regprune
from regprune.api import build_calibration
from regprune.methods.trsp import LayerScales, identity_gaps
from regprune.train.loop import lm_loss

D = os.environ.get("REGPRUNE_DATA_DIR", "../shared/data")
n = int(sys.argv[1]) if len(sys.argv) > 1 else 8
t = time.time()
lm = regprune.load_model("smollm2-135m")
cal = build_calibration(lm.tokenizer, "wikitext2:validation", num_samples=128, seq_len=512, seed=0, sampling="random", data_dir=D)
windows = cal.regularize[:n]
model = lm.model.requires_grad_(False)
with LayerScales(model) as scales:
    for s in range(0, n, 4):
        (lm_loss(model, windows[s:s + 4]) * len(windows[s:s + 4]) / n).backward()
    grad = scales.alpha.grad.tolist()
gaps = identity_gaps(model, windows, 4)
order = sorted(range(len(grad)), key=lambda i: abs(grad[i]))
print("RESULT", json.dumps({"windows": n, "seconds": time.time() - t, "dLM_dalpha": [round(g, 5) for g in grad],
                            "identity_gap": [round(g, 5) for g in gaps], "abs_grad_sorted_blocks": order,
                            "abs_grad_sorted": [round(abs(grad[i]), 5) for i in order]}), flush=True)
