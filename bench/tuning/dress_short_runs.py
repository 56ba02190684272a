import sys, time, torch, copy, json
import regprune
from regprune.api import build_calibration
from regprune.methods import get_method
from regprune.methods.dress import DressConfig
from regprune.train import TrainConfig
from regprune.eval.perplexity import evaluate_perplexity
import os
D = os.environ.get("REGPRUNE_DATA_DIR", "../shared/data")
lm = regprune.load_model("smollm2-135m")
cal = build_calibration(lm.tokenizer, "wikitext2:validation", num_samples=128, seq_len=512, seed=0, sampling="random", data_dir=D)
variants = [json.loads(v) for v in sys.argv[1:]]
for v in variants:
    steps = v.pop("steps", 12); lr = v.pop("lr", 1e-4)
    cfg = DressConfig(ratio=0.25, train=TrainConfig(objective="lm", lr=lr, steps=steps, batch_size=4, warmup_steps=2), **v)
    m = copy.deepcopy(lm.model); t=time.time()
    out = get_method("dress").run(m, cal, cfg)
    r = evaluate_perplexity(out.model, lm.tokenizer, "wikitext2:test", max_windows=16, data_dir=D)
    h = out.history
    print("RESULT", json.dumps({**v, "steps": steps, "lr": lr, "ppl16": r["ppl"], "sec": time.time()-t,
          "lm_first": h[0]["lm_loss"], "lm_last": h[-1]["lm_loss"], "energy_last": h[-1]["energy_left"]}), flush=True)
