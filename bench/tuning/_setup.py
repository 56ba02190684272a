"""What every probe here starts from: SmolLM2-135M and the benchmarks' calibration windows
(wikitext2:validation, 128 x 512 at random offsets, seed 0). Data directory: $REGPRUNE_DATA_DIR."""
import os

import regprune
from regprune.api import build_calibration

DATA_DIR = os.environ.get("REGPRUNE_DATA_DIR", "../shared/data")


def smollm2_and_calibration():
    lm = regprune.load_model("smollm2-135m")
    cal = build_calibration(lm.tokenizer, "wikitext2:validation", num_samples=128, seq_len=512, seed=0, sampling="random",
                            data_dir=DATA_DIR)
    return lm, cal
