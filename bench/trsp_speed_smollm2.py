"""Speed of the TRSP model (bench/trsp_smollm2.py, 8 of 30 blocks) against dense with the protocol of
bench/compare_smollm2.toml, so it sits next to SLEB / ShortGPT / DReSS in that table.

    python bench/trsp_speed_smollm2.py      # needs bench/work/trsp_smollm2/models/trsp (from trsp_smollm2.py)
"""
import json
from pathlib import Path

import regprune
from regprune.eval.speed import linear_flop_ratio, measure_speed
from regprune.record import versions

HERE = Path(__file__).resolve().parent
model_dir = HERE / "work" / "trsp_smollm2" / "models" / "trsp"
models = {"dense": regprune.load_model("smollm2-135m").model, "trsp": regprune.load_model(str(model_dir)).model}
result = measure_speed(models, prompt_len=512, gen_batch=4, new_tokens=32, repeats=3, warmup=1, reference="dense")
result["linear_flop_ratio"] = linear_flop_ratio(models["trsp"], models["dense"])
result["versions"] = versions()
out = HERE / "results" / "trsp_speed_smollm2.json"
out.write_text(json.dumps(result, indent=2) + "\n")
m = result["models"]["trsp"]
print(f"TRSP vs dense: prompt {m['speedup_prompt']:.2f}x, generation {m['speedup_generation']:.2f}x, "
      f"linear ideal {1 / result['linear_flop_ratio']:.2f}x -> {out}")
