"""The demo: prune the built-in model 25% with DReSS and compare it with the dense model.

Data: a data directory (--data-dir or $REGPRUNE_DATA_DIR) gives WikiText-2 (calibrate on validation,
evaluate on test); else the Hugging Face hub if reachable; else English prose that ships with Python
(pydoc's topic help), split into disjoint calibration and evaluation parts.
"""
from __future__ import annotations

import copy
import json
import os
import socket
import time
from datetime import datetime
from pathlib import Path

from .data.sources import DATA_DIR_ENV, DEFAULT_CALIBRATION, resolve_data_dir


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def choose_demo_data(data_dir) -> tuple[str, str, str | None, str]:
    """(calibration source, evaluation source, data_dir, explanation)."""
    root = resolve_data_dir(data_dir)
    if root is not None:
        return (DEFAULT_CALIBRATION, "wikitext2:test", str(root),
                f"C4 train + WikiText-2 validation (the default mixture) from the data directory {root}")
    if _hub_reachable():
        return DEFAULT_CALIBRATION, "wikitext2:test", None, "C4 + WikiText-2 from the Hugging Face hub"
    return ("builtin:calibration", "builtin:eval", None,
            f"no data directory (--data-dir / ${DATA_DIR_ENV}) and the Hugging Face hub is not reachable: using "
            "the English prose that ships with Python (pydoc_data topics), 4/5 of the topics for calibration "
            "and the other 1/5 for evaluation (disjoint)")


def run_demo(output: str, *, model: str = "smollm2-135m", steps: int = 24, data_dir=None,
             eval_windows: int = 16) -> dict:
    from . import api
    from .eval.perplexity import evaluate_perplexity
    from .models.load import load_model
    from .io import atomic_write_json, atomic_write_text
    from .models.save import check_output_dir
    from .record import count_parameters, versions

    run_dir = Path(output) / datetime.now().strftime("%Y%m%d-%H%M%S")
    check_output_dir(run_dir)
    calib, evalsrc, data_dir, why = choose_demo_data(data_dir)
    print(f"[demo] data: {why}")
    print(f"[demo] model: {model} (first use downloads and converts it once)")
    t0 = time.perf_counter()
    loaded = load_model(model)
    # Enough distinct windows that no regularization step sees a window twice (steps x batch 4), a third
    # more held for recovery (not run here).
    n_samples = -(-steps * 4 * 4 // 3)
    common = dict(calib=calib, num_samples=n_samples, seq_len=512, seed=0, data_dir=data_dir,
                  eval_sources=[evalsrc])

    def ppl(m) -> dict:
        return evaluate_perplexity(m, loaded.tokenizer, evalsrc, seq_len=512, max_windows=eval_windows,
                                   data_dir=data_dir)

    rows = {}
    print(f"[demo] dense perplexity on {evalsrc} ({eval_windows} windows of 512 tokens)")
    rows["dense"] = {"params": count_parameters(loaded.model), "eval": ppl(loaded.model)}
    print("[demo] slicing 25% of hidden channels without regularization (same channels as DReSS)")
    sliced = api.prune(loaded, method="slice", ratio=0.25, **common)
    rows["slice (no regularization)"] = {"params": sliced.record["parameters_after"], "eval": ppl(sliced.model)}
    del sliced
    print(f"[demo] DReSS: l2 regularization for {steps} steps of 4 x 512 tokens, distilling the dense model "
          "(its top-256 next-token log-probs, cached first), then slicing")
    res = api.prune(loaded, method="dress", ratio=0.25, norm="l2", lam=4.0, steps=steps, epochs=None,
                    lr=3e-4, batch_size=4, **common)
    rows["DReSS-l2"] = {"params": res.record["parameters_after"], "eval": ppl(res.model)}
    res.record["metrics"] = {k: v["eval"] for k, v in rows.items()}
    model_dir = res.save(run_dir / "model")
    summary = {
        "model": model, "data": why, "calibration": calib, "evaluation": evalsrc,
        "protocol": rows["dense"]["eval"]["protocol"], "dress": {"steps": steps, "lr": 3e-4, "lam": 4.0,
                                                                  "norm": "l2", "selection": "activation",
                                                                  "objective": res.record["config"]["train"]["objective"]},
        "results": {k: {"parameters": v["params"], "ppl": v["eval"]["ppl"]} for k, v in rows.items()},
        "seconds": round(time.perf_counter() - t0, 1), "versions": versions(), "pruned_model": model_dir,
    }
    atomic_write_json(run_dir / "results.json", summary)
    dense_ppl = rows["dense"]["eval"]["ppl"]
    lines = [f"| model | parameters | perplexity ({evalsrc}) | vs dense |", "|---|---:|---:|---:|"]
    for k, v in rows.items():
        lines.append(f"| {k} | {v['params']:,} | {v['eval']['ppl']:.2f} | {v['eval']['ppl'] / dense_ppl:.2f}x |")
    p = rows["dense"]["eval"]["protocol"]
    lines.append("")
    lines.append(f"Protocol: {p['windows']} non-overlapping windows of {p['seq_len']} tokens from the start of "
                 f"{evalsrc}, no BOS, loss on tokens 1..{p['seq_len'] - 1}. Calibration: {n_samples} distinct "
                 f"windows of 512 tokens of {calib} (seed 0), {steps * 4} used for regularization; DReSS trains "
                 f"by distillation from the dense model (the default objective). Data: {why}. "
                 f"Total time {summary['seconds']:.0f}s.")
    table = "\n".join(lines)
    atomic_write_text(run_dir / "results.md", table + "\n")
    print()
    print(table)
    print(f"\n[demo] pruned model: {model_dir} (plain AutoModelForCausalLM.from_pretrained loads it)")
    print(f"[demo] results: {run_dir / 'results.json'}, {run_dir / 'results.md'}")
    return summary
