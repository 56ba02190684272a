"""The validation pass that `regprune prune` and `regprune eval` run before any weight is loaded.

One function per command. Each checks, in this order, and stops at the first problem with a RegpruneError
that names the option or file and says what to do:

1. every numeric option's range (and the method's options, by building its config);
2. the device and dtype;
3. the output: not an existing non-empty directory, creatable (a probe file is written and removed next to
   it), and not being written by another regprune run (an exclusive lock is taken and held until the
   result is in place; partial directories that killed runs left are removed);
4. the calibration source against the evaluation sources, by split and by resolved file (same file or
   same bytes);
5. the model's files and config (safetensors headers complete; the method x architecture combination,
   e.g. enough blocks to remove, from the config alone);
6. with the tokenizer (loaded without the weights): the calibration text and every evaluation text long
   enough for their windows.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import RegpruneError
from .io import OutputLock, check_writable, clean_stale_partials, stale_partials
from .validate import check_number


def _numbers(checks: list[tuple]) -> None:
    """[(flag, value, check_number kwargs)]: RegpruneError naming the flag for the first value out of range."""
    for flag, value, kw in checks:
        try:
            check_number(flag, value, **kw)
        except ValueError as e:
            raise RegpruneError(str(e)) from None


def eval_number_checks(args) -> list[tuple]:
    return [("--seq-len-eval", args.eval_seq_len, dict(integer=True, minimum=2)),
            ("--max-windows", args.max_windows, dict(integer=True, minimum=0, hint=" (0 = all windows)")),
            ("--max-tokens", args.max_tokens, dict(integer=True, minimum=1, optional=True))]


@dataclass
class PrunePlan:
    """What the validation pass established for `regprune prune`."""

    output: Path
    lock: OutputLock | None
    options: dict
    eval_sources: list
    num_samples: int
    recovery: object = None
    model_config: object = None
    notes: list = field(default_factory=list)
    checkpoint_dir: Path | None = None  # --checkpoint-every / --resume: next to the output


def check_prune(args, options: dict, *, take_lock: bool = True) -> PrunePlan:
    """Validate a `regprune prune` command line (see the module docstring). On success the output lock is
    held: release it with `plan.lock.release()` when done. `take_lock=False` (the other processes of a
    multi-process run, which do not write): every check but the lock; `plan.lock` is then None."""
    from .api import auto_num_samples, check_calibration_sizes, check_method_options, check_model_for_method
    from .cli import objective_options
    from .api import SAMPLINGS
    from .data.sources import check_calibration_source, load_text, parse_eval_source, parse_mixture
    from .data.instructions import is_instruction_file
    from .models.load import _dtype, check_device, inspect_model
    from .models.save import check_output_dir
    from .train.lora import RecoveryConfig
    from .train.loop import TrainConfig

    # 1. numbers
    _numbers(eval_number_checks(args) + [("--seed", args.seed, dict(integer=True)),
                                         ("--checkpoint-every", getattr(args, "checkpoint_every", None),
                                          dict(integer=True, minimum=1, optional=True))])
    recovery = None
    if args.recover:
        try:
            recovery = RecoveryConfig(
                r=args.lora_r, alpha=args.lora_alpha, patience=args.patience,
                train=TrainConfig(lr=args.recovery_lr, steps=args.recovery_steps,
                                  epochs=None if args.recovery_steps else args.recovery_epochs,
                                  batch_size=args.batch_size or 4, seed=args.seed, **objective_options(args)))
        except ValueError as e:
            raise RegpruneError(f"recovery: {e} (--recovery-lr, --recovery-steps/--recovery-epochs, --lora-r, "
                                "--lora-alpha, --patience, --batch-size, --objective ...)") from None
    method_cfg = check_method_options(args.method, options)
    num_samples = auto_num_samples(method_cfg, recovery) if args.num_samples == "auto" else args.num_samples
    check_calibration_sizes(num_samples, args.seq_len, recovery=args.recover)
    # 2. device, dtype
    check_device(args.device)
    _dtype(args.dtype)
    # 3. output
    out = check_output_dir(args.output)
    # 4. calibration against evaluation (by split and by file), files readable
    eval_sources = [parse_eval_source(s) for s in args.eval_ppl]
    mixture = parse_mixture(args.calib)
    if args.sampling not in SAMPLINGS:
        raise RegpruneError(f"--sampling must be one of {', '.join(SAMPLINGS)}")
    calibs = [s for s, _ in mixture]
    for calib in calibs:
        check_calibration_source(calib, eval_sources, args.data_dir)
    texts = {c: load_text(c, args.data_dir) for c in calibs if not (c.name == "file" and is_instruction_file(c.path))}
    for e in eval_sources:
        texts.setdefault(e, load_text(e, args.data_dir))
    # 5. model files and config, method x architecture
    model_config, _ = inspect_model(args.model)
    check_model_for_method(args.method, model_config, method_cfg)
    if getattr(args, "onload", False):
        from .api import check_onload

        check_onload(args.method, method_cfg, recovery)
    # 6. lengths, in tokens
    _check_lengths(args.model, texts, [c for c in calibs if c in texts], args.seq_len, eval_sources,
                   args.eval_seq_len)
    lock = OutputLock(out, "output directory").acquire() if take_lock else None
    try:
        if lock is not None:
            clean_stale_partials(out)
        check_output_dir(out)  # may have appeared while we checked
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    notes = [f"left as found: {p}" for p in stale_partials(out)]
    ckdir = None
    if getattr(args, "checkpoint_every", None) is not None or getattr(args, "resume", False):
        from .train.checkpoint import checkpoint_dir_for

        ckdir = checkpoint_dir_for(out)
    elif checkpoint_dir_for_exists(out):
        if lock is not None:
            lock.release()
        raise RegpruneError(f"an interrupted run left checkpoints for {out} in {checkpoint_dir_for_exists(out)}: add "
                            "--resume (with the same settings) to continue it, or delete that directory")
    return PrunePlan(out, lock, options, eval_sources, num_samples, recovery, model_config, notes, ckdir)


def checkpoint_dir_for_exists(out: Path) -> Path | None:
    from .train.checkpoint import checkpoint_dir_for

    d = checkpoint_dir_for(out)
    return d if d.exists() else None


def _check_lengths(model: str, texts: dict, calibs: list, seq_len: int, eval_sources: list, eval_seq_len: int) -> None:
    from .data.windows import tokenize
    from .errors import DataUnavailable
    from .models.load import load_tokenizer

    tokenizer = load_tokenizer(model)
    for calib in calibs:
        n = len(tokenize(tokenizer, texts[calib]))
        if n <= seq_len + 1:
            raise DataUnavailable(f"calibration source {calib} has {n} tokens, too few for windows of {seq_len} "
                                  "(--seq-len): use a longer text or a smaller --seq-len")
    for e in eval_sources:
        n = len(tokenize(tokenizer, texts[e]))
        if n < eval_seq_len:
            raise DataUnavailable(f"evaluation source {e} has {n} tokens, fewer than one window of {eval_seq_len} "
                                  "(--seq-len-eval): use a longer text or a smaller --seq-len-eval")


def check_eval(args) -> list:
    """Validate a `regprune eval` command line before loading the model; returns the parsed sources."""
    from .data.sources import load_text, parse_eval_source
    from .models.load import _dtype, check_device, inspect_model

    _numbers(eval_number_checks(args) + [
        ("--prompt-len", args.prompt_len, dict(integer=True, minimum=1)),
        ("--new-tokens", args.new_tokens, dict(integer=True, minimum=1)),
        ("--repeats", args.repeats, dict(integer=True, minimum=1)),
        ("--gen-batch", args.gen_batch, dict(integer=True, minimum=1, optional=True)),
        ("--task-batch-size", args.task_batch_size, dict(integer=True, minimum=1)),
        ("--limit", args.limit, dict(minimum=0.0, strict=True, optional=True,
                                     hint=" (a fraction of each task below 1, else a number of examples)"))])
    if args.limit is not None and args.limit > 1 and args.limit != int(args.limit):
        raise RegpruneError(f"--limit {args.limit}: give a fraction below 1 or a whole number of examples")
    check_device(args.device)
    _dtype(args.dtype)
    sources = [parse_eval_source(s) for s in args.ppl if s != "none"]
    if args.json_out:
        out = Path(args.json_out)
        if out.is_dir():
            raise RegpruneError(f"--json {out} is a directory; give a file name such as {out / 'eval.json'}")
        check_writable(out, "--json output")
        check_writable(out.with_suffix(".md"), "--json output's table")
    for spec in [args.model] + ([args.compare_to] if args.compare_to else []):
        inspect_model(spec)
    texts = {s: load_text(s, args.data_dir) for s in sources}
    if texts:
        _check_lengths(args.model, texts, [], 0, sources, args.eval_seq_len)
    return sources


__all__ = ["PrunePlan", "check_prune", "check_eval"]
