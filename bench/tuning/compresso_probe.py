"""Compresso probe on SmolLM2-135M: does the expected sparsity follow the target in a short run, and what
perplexity does the binarized model reach, for a few (mask_init, mask_lr, lambda_lr) settings.

    python bench/tuning/compresso_probe.py STEPS '{"mask_init": 1, "lambda_lr": 20}' ...

Each setting trains masks + LoRA (ratio 0.25, collaborative prompt on, batch 4 x 512, LoRA lr 3e-4) on the
first 96 calibration windows (wikitext2:validation, 128 x 512, seed 0), binarizes non-uniformly at the
target and measures perplexity on the first 16 windows x 512 of WikiText-2 test and C4 validation.
Prints one RESULT line (JSON) per setting, with the sparsity track every 4 steps and the share of
'undecided' masks at the end (sampled exactly 0 or 1 in fewer than 90% of draws).
"""
import copy
import json
import sys
import time

import torch

from _setup import DATA_DIR as D, smollm2_and_calibration
from regprune.api import evaluate
from regprune.methods.compresso import CompressoConfig, finalize, train_masks
from regprune.methods.compresso.masks import sample_hard_concrete
from regprune.record import count_parameters
from regprune.train.loop import TrainConfig

steps = int(sys.argv[1])
lm, cal = smollm2_and_calibration()
for v in map(json.loads, sys.argv[2:]):
    t = time.time()
    cfg = CompressoConfig(ratio=0.25, train=TrainConfig(objective="lm", lr=3e-4, steps=steps, batch_size=4, warmup_steps=2), **v)
    merged, masks, hist, info = train_masks(copy.deepcopy(lm.model), cal, cfg)
    pruned, final = finalize(merged, masks, cfg, uniform=False)
    r = evaluate(pruned, lm.tokenizer, ppl=["wikitext2", "c4"], seq_len=512, max_windows=16, data_dir=D)
    track = [{k: round(h[k], 4) for k in ("step", "lm_loss", "expected_sparsity", "target_sparsity", "lambda_1",
                                          "lambda_2")} for h in hist if h["step"] % 4 == 0 or h["step"] == 1]
    # How decided the masks are: the share of units whose sample is exactly 0 or exactly 1 in fewer than
    # 90% of draws (Monte Carlo, 256 draws), per structure.
    undecided = {}
    for name, la in masks.log_alpha.items():
        la = la.detach()
        z = torch.stack([sample_hard_concrete(la) for _ in range(256)])
        hard = ((z == 0) | (z == 1)).float().mean(0)
        undecided[name] = round(float((hard < 0.9).float().mean()), 4)
    print("RESULT", json.dumps({**v, "steps": steps, "seconds": round(time.time() - t), "undecided": undecided,
                                "parameters": count_parameters(pruned),
                                "ppl16": {k: round(x["ppl"], 2) for k, x in r["perplexity"].items()},
                                "kv_groups": final["kv_groups_per_layer"], "ffn": final["ffn_per_layer"],
                                "hidden": final["hidden_size_after"], "track": track}), flush=True)
