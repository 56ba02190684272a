"""TRSP stage-1 probe on SmolLM2-135M: which blocks the alphas select, for a few (lam1, stage1_lr) settings.

    python bench/tuning/trsp_stage1_probe.py STEPS '{"lam1": 0.05, "stage1_lr": 0.1}' ...

Each setting runs stage 1 only (alphas trained, weights frozen) on the first calibration windows
(wikitext2:validation, 128 x 512, seed 0; batch 4) and prints the final alphas and the 8 selected blocks.
"""
import json
import sys
import time

from _setup import smollm2_and_calibration
from regprune.methods.trsp import TrspConfig, learn_layer_weights
from regprune.train.loop import TrainConfig

steps = int(sys.argv[1])
lm, cal = smollm2_and_calibration()
for v in map(json.loads, sys.argv[2:]):
    t = time.time()
    cfg = TrspConfig(ratio=0.25, stage1_steps=steps, train=TrainConfig(objective="lm", lr=3e-4, epochs=1, batch_size=4,
                                                                        warmup_steps=2), **v)
    alphas, hist, traj = learn_layer_weights(lm.model, cal.regularize, cfg, 8)
    sel = sorted(sorted(range(30), key=lambda i: abs(alphas[i]))[:8])
    print("RESULT", json.dumps({**v, "steps": steps, "seconds": round(time.time() - t), "selected": sel,
                                "alphas": [round(a, 3) for a in alphas],
                                "lm_first_last": [hist[0]["lm_loss"], hist[-1]["lm_loss"]],
                                "margin": [hist[-1]["alpha_selected_max"], hist[-1]["alpha_kept_min"]]}), flush=True)
