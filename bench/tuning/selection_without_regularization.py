import time, torch, copy, json
import regprune
from regprune.api import build_calibration
from regprune.methods import get_method
from regprune.methods.dress import SliceConfig
from regprune.eval.perplexity import evaluate_perplexity
import os
D = os.environ.get("REGPRUNE_DATA_DIR", "../shared/data")
lm = regprune.load_model("smollm2-135m")
cal = build_calibration(lm.tokenizer, "wikitext2:validation", num_samples=128, seq_len=512, seed=0, sampling="random", data_dir=D)
res={}
for sel in ["activation","weight","last","random"]:
    m = copy.deepcopy(lm.model)
    out = get_method("slice").run(m, cal, SliceConfig(ratio=0.25, selection=sel))
    r = evaluate_perplexity(out.model, lm.tokenizer, "wikitext2:test", max_windows=16, data_dir=D)
    res[sel]=r["ppl"]; print(sel, r["ppl"], r["seconds"], flush=True)
r = evaluate_perplexity(lm.model, lm.tokenizer, "wikitext2:test", max_windows=64, data_dir=D)
print("dense64", r["ppl"], r["seconds"], flush=True)
