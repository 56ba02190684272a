"""Benchmark of the evaluation suite: SmolLM2-135M dense vs DReSS-l2 at ratios 0.25 and 0.5 on the five
zero-shot tasks, with speed measured in the same run, and the report with plots.

The 0.25 model is the DReSS-l2 model of bench/dress_smollm2.py (its work directory); the 0.5 model is
pruned here with the same settings. Resumable: saved models and finished evaluations are reused.

    python bench/eval_suite_smollm2.py --data-dir ../shared/data --limit 200
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from dress_smollm2 import PROTOCOL as DRESS_PROTOCOL  # noqa: E402  (same DReSS settings)

WORK = HERE / "work" / "eval_suite"
R25 = HERE / "work" / "dress_smollm2_r25" / "models" / "dress-l2"


def prune_r50(data_dir: str) -> Path:
    out = WORK / "models" / "dress-l2-r50"
    if (out / "regprune.json").exists():
        return out
    import regprune

    d = DRESS_PROTOCOL["dress"]
    loaded = regprune.load_model("smollm2-135m")
    res = regprune.prune(loaded, method="dress", ratio=0.5, norm="l2", lam=d["lam"], lr=d["lr"], epochs=d["epochs"],
                         batch_size=4, warmup_steps=2, selection=d["selection"], calib="wikitext2:validation",
                         num_samples=128, seq_len=512, seed=0, data_dir=data_dir, inplace=True,
                         eval_sources=["wikitext2:test", "c4:validation"], sampling="random", objective="lm")
    res.save(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--limit", type=int, default=100, help="examples per task (None = full validation sets)")
    ap.add_argument("--gen-batch", type=int, default=8)
    args = ap.parse_args()
    import regprune
    from regprune.eval.suite import format_markdown, format_speed, run_eval
    from regprune.eval.speed import linear_flop_ratio, measure_speed
    from regprune.eval.zeroshot import PAPER_TASKS
    from regprune.models.builtin import builtin_model_dir
    from regprune.record import versions

    WORK.mkdir(parents=True, exist_ok=True)
    if not (R25 / "regprune.json").exists():
        sys.exit(f"run bench/dress_smollm2.py first: {R25} is missing")
    r50 = prune_r50(args.data_dir)
    dense_dir = builtin_model_dir("smollm2-135m")
    models = {"dense": dense_dir, "dress-l2-r0.25": R25, "dress-l2-r0.5": r50}
    # Perplexity of dense and of the 0.25 model: measured by bench/dress_smollm2.py with this protocol.
    known = json.loads((HERE / "results" / "dress_smollm2_r25.json").read_text())["results"]
    known_ppl = {"dense": known["dense"]["perplexity"], "dress-l2-r0.25": known["dress-l2"]["perplexity"]}
    quality = {}
    for name, path in models.items():
        f = WORK / f"{name}.eval.json"
        if not f.exists():
            t = time.perf_counter()
            lm = regprune.load_model(str(path))
            r = run_eval(lm.model, lm.tokenizer, ppl=[] if name in known_ppl else ["wikitext2", "c4"],
                         max_windows=64, data_dir=args.data_dir, tasks=list(PAPER_TASKS), limit=args.limit,
                         task_batch_size=8, name=name)
            if name in known_ppl:
                r["perplexity"] = known_ppl[name]
                r["perplexity_from"] = "bench/results/dress_smollm2_r25.json (same protocol)"
            r["seconds"] = time.perf_counter() - t
            f.write_text(json.dumps(r, indent=2) + "\n")
        quality[name] = json.loads(f.read_text())
    speed_file = WORK / "speed.json"
    if not speed_file.exists():
        loaded = {k: regprune.load_model(str(p)).model for k, p in models.items()}
        s = measure_speed(loaded, prompt_len=2048, gen_batch=args.gen_batch, new_tokens=128, repeats=3,
                          reference="dense", paths={k: str(p) for k, p in models.items()})
        s["linear_flop_ratio"] = {k: linear_flop_ratio(m, loaded["dense"]) for k, m in loaded.items()}
        speed_file.write_text(json.dumps(s, indent=2) + "\n")
    speed = json.loads(speed_file.read_text())
    # eval.json in each pruned run directory (with the dense model as compare_to) so `regprune report` reads them.
    for name in ("dress-l2-r0.25", "dress-l2-r0.5"):
        ev = dict(quality[name])
        ev["compare_to"] = {k: v for k, v in quality["dense"].items() if k != "versions"}
        ev["speed"] = speed
        (models[name] / "eval.json").write_text(json.dumps(ev, indent=2) + "\n")
    summary = {"protocol": {"models": {k: str(v.relative_to(HERE.parent)) if str(v).startswith(str(HERE.parent))
                                       else "built-in smollm2-135m (fp32)" for k, v in models.items()},
                            "dress": DRESS_PROTOCOL["dress"], "calibration": DRESS_PROTOCOL["calibration"],
                            "zero_shot_limit": args.limit, "perplexity": DRESS_PROTOCOL["perplexity"]},
               "quality": quality, "speed": speed, "versions": versions()}
    (HERE / "results" / "eval_suite_smollm2.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = ["# SmolLM2-135M: dense vs DReSS-l2 at 25% and 50% (zero-shot, perplexity, speed)", ""]
    for name in models:
        lines += [f"## {name}", "", format_markdown(quality[name])]
    lines += ["## Speed (same run, interleaved)", ""]
    lines += [format_speed(speed), ""]
    lines += ["Linear-layer FLOP ratio to dense (ideal speed-up = its inverse): " + ", ".join(
        f"{k} {v:.3f} ({1 / v:.2f}x)" for k, v in speed["linear_flop_ratio"].items())]
    (HERE / "results" / "eval_suite_smollm2.md").write_text("\n".join(lines) + "\n")
    from regprune.report import write_report

    rep = HERE / "results" / "report_smollm2"
    if rep.exists():
        shutil.rmtree(rep)
    write_report([models["dress-l2-r0.25"], models["dress-l2-r0.5"]], rep)
    print((HERE / "results" / "eval_suite_smollm2.md").read_text())


if __name__ == "__main__":
    main()
