"""Python API: the same pipeline as the CLI in a few lines.

    import regprune
    res = regprune.prune("smollm2-135m", method="dress", ratio=0.25, calib="wikitext2:validation",
                         data_dir="../shared/data")
    res.save("out/smollm2-dress25")
    print(regprune.evaluate(res.model, res.tokenizer, ppl=["wikitext2"], data_dir="../shared/data"))
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field

import torch

from .data.sources import (DEFAULT_CALIBRATION, PAPER_CALIBRATION, TextSource, check_calibration_source,  # noqa: F401
                           load_text, parse_mixture, parse_source)
from .data.instructions import instruction_windows, is_instruction_file
from .data.windows import sample_distinct_windows, sample_windows, split_windows, tokenize
from . import distributed
from .errors import RegpruneError
from .methods import CalibrationData, get_method
from .models.load import LoadedModel, load_model
from .models.save import check_output_dir, save_model
from .validate import check_config_types, check_number, check_value_type, field_types
from .record import count_parameters, peak_rss_bytes, versions
from .train.checkpoint import RunCheckpoints
from .train.lora import RecoveryConfig, recover_with_lora
from .train.objective import LiveTeacher, build_teacher

log = logging.getLogger(__name__)


@dataclass
class PruneResult:
    model: object
    tokenizer: object
    record: dict = field(default_factory=dict)
    checkpoints: RunCheckpoints | None = None  # the run's training checkpoints, removed once the result is saved

    def save(self, out_dir) -> str:
        path = str(save_model(self.model, self.tokenizer, out_dir, self.record))
        self.discard_checkpoints()
        return path

    def discard_checkpoints(self) -> None:
        if self.checkpoints is not None:
            self.checkpoints.remove()
            self.checkpoints = None


SAMPLINGS = ("distinct", "random")


def _largest_remainder(weights: list[float], n: int) -> list[int]:
    raw = [w * n for w in weights]
    counts = [int(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - counts[i], reverse=True)[: n - sum(counts)]:
        counts[i] += 1
    return counts


def build_calibration(tokenizer, source: str | TextSource = DEFAULT_CALIBRATION, *, num_samples: int = 128,
                      seq_len: int = 512, seed: int = 0, regularize_fraction: float = 0.75, data_dir=None,
                      eval_sources: list[str | TextSource] = (), sampling: str = "distinct") -> CalibrationData:
    """Calibration windows from one source or a weighted mixture (`c4:train@0.5,wikitext2:validation@0.5`).

    sampling "distinct" (default): windows that do not overlap, drawn without replacement from each source
    (repeats only when a source holds fewer windows than asked, and then the record says so); "random":
    independent random offsets (overlapping windows), as SparseGPT / Wanda and the earlier regprune
    benchmarks draw them. Each source gets a share of `num_samples` in proportion to its weight; the
    windows of a mixture are shuffled together (seeded), so both the regularization and the recovery part,
    and every batch, mix the sources. The first `regularize_fraction` of the windows regularize, the rest
    are held for recovery."""
    check_calibration_sizes(num_samples, seq_len, regularize_fraction)
    if sampling not in SAMPLINGS:
        raise RegpruneError(f"sampling must be one of {', '.join(SAMPLINGS)}, got {sampling!r}")
    mixture = [(source, 1.0)] if isinstance(source, TextSource) else parse_mixture(source)
    evals = [parse_source(e) if isinstance(e, str) else e for e in eval_sources]
    for src, _ in mixture:
        check_calibration_source(src, evals, data_dir)
    instr = [s for s, _ in mixture if s.name == "file" and is_instruction_file(s.path)]
    if instr and len(mixture) > 1:
        raise RegpruneError(f"an instruction file ({instr[0]}) cannot be part of a calibration mixture; give it alone")
    if instr:
        reg, rec, protocol = instruction_windows(tokenizer, instr[0].path, num_samples=num_samples, seq_len=seq_len,
                                                 seed=seed, regularize_fraction=regularize_fraction)
        return CalibrationData(reg, rec, protocol, tokenizer)
    counts = _largest_remainder([w for _, w in mixture], num_samples)
    parts, per_source = [], []
    for i, ((src, weight), n) in enumerate(zip(mixture, counts)):
        if n == 0:
            per_source.append({"source": str(src), "weight": weight, "windows": 0})
            continue
        ids = tokenize(tokenizer, load_text(src, data_dir))
        # Source i gets its own stream of the seed, so adding a source does not move the others' windows.
        src_seed = seed if len(mixture) == 1 else seed * 1000 + i
        if sampling == "distinct":
            w, info = sample_distinct_windows(ids, n, seq_len, src_seed)
        else:
            w, info = sample_windows(ids, n, seq_len, src_seed), {"windows": n}
        if info.get("repeated"):
            log.warning("calibration source %s holds %d distinct windows of %d tokens but %d were asked for: %d "
                        "repeat; give a larger source, a smaller --num-samples or another source in the mixture",
                        src, info["distinct_available"], seq_len, n, info["repeated"])
        parts.append(w)
        per_source.append({"source": str(src), "weight": weight, "text_tokens": len(ids), **info})
    windows = torch.cat(parts)
    if len(parts) > 1:
        windows = windows[torch.randperm(len(windows), generator=torch.Generator().manual_seed(seed))]
    reg, rec = split_windows(windows, regularize_fraction)
    text = source if isinstance(source, str) else str(source)
    protocol = {"source": str(mixture[0][0]) if len(mixture) == 1 else text, "num_samples": num_samples,
                "seq_len": seq_len, "seed": seed, "sampling": sampling, "sampling_rule": (
                    "non-overlapping windows from a seeded offset, drawn without replacement per source"
                    if sampling == "distinct" else
                    "random offsets: random.Random(seed).randint(0, len(ids) - seq_len - 1) per sample"),
                "sources": per_source, "text_tokens": sum(p.get("text_tokens", 0) for p in per_source),
                "regularize_windows": len(reg), "recovery_windows": len(rec),
                "split": f"first {len(reg)} samples regularize, last {len(rec)} recover"
                + (" (the sources' windows shuffled together first)" if len(parts) > 1 else "")}
    return CalibrationData(reg, rec, protocol, tokenizer)


def config_trains(config) -> bool:
    """Whether a method config runs a training loop (slice only with finetune=true)."""
    return getattr(config, "train", None) is not None and getattr(config, "finetune", True)


def auto_num_samples(config, recovery: RecoveryConfig | None = None, regularize_fraction: float = 0.75) -> int:
    """As many windows as the training asks for, so that no step sees a window twice: steps x batch x
    accumulation for the method's run (TRSP: both of its stages; methods that do not train, or
    runs given in epochs: 96), and, with recovery given in steps, enough recovery windows for its steps
    plus the held-out tenth; split 3:1 as always."""
    train = getattr(config, "train", None)
    n_reg = 96
    if config_trains(config) and train.steps is not None:
        # TRSP's two stages take disjoint windows when both are given in steps (trsp.method.stage_windows).
        n_reg = (train.steps + (getattr(config, "stage1_steps", None) or 0)) * train.batch_size * train.grad_accum
    n = math.ceil(n_reg / regularize_fraction)
    if recovery is not None and recovery.train.steps is not None:
        need = math.ceil(recovery.train.steps * recovery.train.batch_size * recovery.train.grad_accum
                         / (1 - recovery.eval_fraction)) + 1
        n = max(n, math.ceil(need / (1 - regularize_fraction)))
    return n


def check_calibration_sizes(num_samples, seq_len, regularize_fraction: float = 0.75,
                            recovery: bool = False) -> None:
    """Window counts and lengths that the pipeline can use (RegpruneError naming the option otherwise)."""
    try:
        check_number("--num-samples", num_samples, integer=True, minimum=1)
        check_number("--seq-len", seq_len, integer=True, minimum=2, hint=" (a window needs 2 tokens to predict one)")
    except ValueError as e:
        raise RegpruneError(f"calibration: {e}") from None
    n_reg = max(1, round(num_samples * regularize_fraction))
    if recovery and num_samples - n_reg < 2:
        raise RegpruneError(
            f"--recover needs at least 2 recovery windows (one is held out for early stopping), but "
            f"--num-samples {num_samples} leaves {num_samples - n_reg} after the {n_reg} regularization windows; "
            f"use --num-samples {max(8, num_samples * 2)} or more")


def _make_config(method, config, overrides: dict):
    cls = method.config_cls
    if config is None:
        config = cls()
    if overrides:
        own_fields = {f.name for f in dataclasses.fields(cls)}
        train_fields = {f.name for f in dataclasses.fields(config.train)} if hasattr(config, "train") else set()
        unknown = set(overrides) - own_fields - train_fields
        if unknown:
            raise RegpruneError(f"unknown option(s) for method {method.name!r}: {', '.join(sorted(unknown))}")
        # A name both levels have (seed) goes to both: the channel choice and the training run.
        own = {k: v for k, v in overrides.items() if k in own_fields and k != "train"}
        train = {k: v for k, v in overrides.items() if k in train_fields}
        # Types first, so that a string where a number belongs is named, not a TypeError from __post_init__.
        own_types = field_types(cls)
        for k, v in own.items():
            check_value_type(k, v, own_types.get(k))
        if train:
            train_types = field_types(type(config.train))
            for k, v in train.items():
                check_value_type(k, v, train_types.get(k))
        config = dataclasses.replace(config, **own)
        if train:
            config = dataclasses.replace(config, train=dataclasses.replace(config.train, **train))
    check_config_types(config)
    return config


def check_model_for_method(method: str, model_config, config) -> None:
    """The method x architecture check, from the model's config alone (RegpruneError with the reason)."""
    try:
        get_method(method).check_model(model_config, config)
    except RegpruneError:
        raise
    except (TypeError, ValueError) as e:
        raise RegpruneError(f"method {method!r} on this model ({getattr(model_config, 'model_type', '?')}, "
                            f"{getattr(model_config, 'num_hidden_layers', '?')} layers, hidden "
                            f"{getattr(model_config, 'hidden_size', '?')}): {e}") from None


# slice / shortgpt / slicegpt / sleb: regprune's own sequential pipeline (pipelines/sequential.py); wanda / sparsegpt: already
# layer by layer in llm-compressor's sequential pipeline, which onloads each block to its main device (the
# first CUDA device when there is one); magnitude needs no forward pass.
ONLOAD_METHODS = ("slice", "shortgpt", "slicegpt", "sleb", "wanda", "sparsegpt", "magnitude")


def check_onload(method: str, cfg, recovery=None) -> None:
    """Layer-by-layer onloading serves methods whose only model passes are forward passes."""
    if method not in ONLOAD_METHODS:
        raise RegpruneError(f"--onload (scoring one block at a time) supports {', '.join(ONLOAD_METHODS)}; method "
                            f"{method!r} needs whole-model passes on the device")
    if config_trains(cfg) or recovery is not None:
        raise RegpruneError(f"--onload: {method} with training (--finetune) or --recover needs the whole model on the "
                            "device (or sharded over several: torchrun); drop --onload or the training")


def check_method_options(method: str, options: dict):
    """Build the method's config from `options` now, so a bad option fails before any model is loaded."""
    m = get_method(method)
    try:
        return _make_config(m, None, {"seed": 0, **options})
    except (TypeError, ValueError) as e:
        raise RegpruneError(f"method {method!r}: {e}") from None


def prune(model, tokenizer=None, *, method: str = "dress", config=None, calib: str = DEFAULT_CALIBRATION,
          num_samples: int | str = "auto", seq_len: int = 512, seed: int = 0, data_dir=None,
          sampling: str = "distinct",
          recovery: RecoveryConfig | None = None, eval_sources: list[str] = (), dtype: str = "float32",
          device: str = "cpu", inplace: bool = False, checkpoint_dir=None, checkpoint_every: int | None = None,
          resume: bool = False, onload: str | None = None, **options) -> PruneResult:
    """Prune `model` (a loaded model, or anything `load_model` accepts) and return the smaller model.

    The input model is not modified: a model object passed in is copied first, unless `inplace=True`
    (no second copy in memory; the object passed in is then consumed). Extra keyword options go to the
    method's config (e.g. ratio=0.25, norm="l1", lam=2.0, steps=40, lr=1e-4). `num_samples="auto"`:
    as many calibration windows as the run needs to see a new window at every step (auto_num_samples).

    `onload` (a device): the weights stay in host memory and the method's forward passes run on that device
    one block at a time (pipelines/sequential.py), for a model larger than the device; methods that do not
    train and score with forward passes only (ONLOAD_METHODS).

    `checkpoint_dir`: keep resumable training checkpoints there (train/checkpoint.py), every
    `checkpoint_every` optimizer steps and at the end of each training call; `resume=True` continues the run
    that left them (same settings required). They are removed when the result is saved (PruneResult.save).
    """
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    source = {}
    if isinstance(model, str):
        loaded = load_model(model, dtype=dtype, device=device)
        model, tokenizer, source = loaded.model, loaded.tokenizer, loaded.source
    elif isinstance(model, LoadedModel):
        model, tokenizer, source = (model.model if inplace else copy.deepcopy(model.model)), model.tokenizer, \
            model.source
    elif not inplace:
        model = copy.deepcopy(model)
    if tokenizer is None:
        raise RegpruneError("a tokenizer is needed to build calibration windows")
    m = get_method(method)
    options.setdefault("seed", seed)
    try:
        cfg = _make_config(m, config, options)
    except (TypeError, ValueError) as e:
        raise RegpruneError(f"method {method!r}: {e}") from None
    check_model_for_method(method, model.config, cfg)
    if onload is not None:
        check_onload(method, cfg, recovery)
    if num_samples == "auto":
        num_samples = auto_num_samples(cfg, recovery)
    if recovery is not None:
        check_calibration_sizes(num_samples, seq_len, recovery=True)
    calib_data = build_calibration(tokenizer, calib, num_samples=num_samples, seq_len=seq_len, seed=seed,
                                   data_dir=data_dir, eval_sources=eval_sources, sampling=sampling)
    calib_data.onload = onload
    log.info("calibration: %s, %d windows x %d tokens (%d regularize, %d recovery)", calib_data.protocol["source"],
             num_samples, seq_len, len(calib_data.regularize), len(calib_data.recovery))
    if recovery is not None and len(calib_data.recovery) < 2:  # instruction files split by examples
        raise RegpruneError(f"--recover needs at least 2 recovery windows; the calibration data gave "
                            f"{len(calib_data.recovery)}: give more samples or a larger file")
    params_before = count_parameters(model)
    model.config.use_cache = True
    log.info("method %s: %s", method, cfg)
    # Training keeps fp32 master weights (optimizer state, proximal steps and regularizers on them); a model
    # stored in bf16 / fp16 is upcast for the run and the result cast back to its storage dtype.
    storage = next(model.parameters()).dtype
    trains = recovery is not None or config_trains(cfg)
    if trains and storage != torch.float32:
        log.info("training with fp32 master weights (the model is stored in %s; the result is cast back)", storage)
        model = model.float()
    rec_teacher = None
    if recovery is not None:  # the recovery distils the unpruned model: its teacher is made now
        rec_teacher = build_teacher(model, calib_data.recovery, recovery.train)
        if isinstance(rec_teacher, LiveTeacher):
            calib_data.shared_teacher = rec_teacher  # the method's live teacher is the same model: one copy
    ckpts = None
    if checkpoint_dir is not None:
        identity = {"model": source or getattr(model.config, "_name_or_path", None), "method": method,
                    "config": dataclasses.asdict(cfg), "calibration": calib, "num_samples": num_samples,
                    "seq_len": seq_len, "seed": seed, "sampling": sampling, "storage_dtype": str(storage),
                    "recovery": None if recovery is None else dataclasses.asdict(recovery)}
        ckpts = RunCheckpoints(checkpoint_dir, identity, every=checkpoint_every, resume=resume)
    elif resume or checkpoint_every is not None:
        raise RegpruneError("resume and checkpoint_every need a checkpoint_dir (the CLI keeps it next to the output)")
    with ckpts.active() if ckpts is not None else contextlib.nullcontext():
        t_method = time.perf_counter()
        result = m.run(model, calib_data, cfg)
        method_seconds = time.perf_counter() - t_method
        pruned = result.model
        rec_info = None
        log.info("pruned in %.0fs: %d -> %d parameters", method_seconds, params_before, count_parameters(pruned))
        if recovery is not None:
            log.info("recovery: LoRA r=%d on %d windows", recovery.r, len(calib_data.recovery))
            t_rec = time.perf_counter()
            pruned, rec_info = recover_with_lora(pruned, calib_data.recovery, recovery, rec_teacher)
            del rec_teacher
            rec_info["seconds"] = time.perf_counter() - t_rec
    if next(pruned.parameters()).dtype != storage:
        pruned = pruned.to(storage)
    pruned.eval()
    record = {
        "format": "regprune/1",
        "method": method,
        "config": dataclasses.asdict(cfg),
        "model_source": source,
        "data": calib_data.protocol,
        "parameters_before": params_before,
        "parameters_after": count_parameters(pruned),
        "method_details": result.details,
        "history": result.history,
        "recovery": None if recovery is None else {"config": dataclasses.asdict(recovery), **rec_info},
        "timing": {"method_seconds": method_seconds, "total_seconds": time.perf_counter() - t0},
        "precision": {"storage": str(storage).removeprefix("torch."),
                      "training": "fp32 master weights" if trains else None},
        "peak_rss_bytes": peak_rss_bytes(),
        "versions": versions(),
        "metrics": {},
    }
    record["parameter_ratio"] = record["parameters_after"] / params_before
    if ckpts is not None:
        record["resumed"] = resume
    record["distributed"] = None if distributed.world_size() == 1 else {
        "processes": distributed.world_size(), "backend": torch.distributed.get_backend(),
        "sharding": "FSDP2 fully_shard"}
    return PruneResult(pruned, tokenizer, record, ckpts)


def evaluate(model, tokenizer=None, *, ppl=("wikitext2",), seq_len: int = 512, max_windows: int | None = 64,
             max_tokens: int | None = None, batch_size: int = 1, data_dir=None, tasks=None, limit=None,
             task_batch_size: int = 8, offline_tasks: bool = True, speed: bool = False, speed_options=None,
             reference=None, speed_reference=None) -> dict:
    """Perplexity on each source (default split: test / validation), zero-shot accuracy on lm-eval `tasks`
    and, with `speed`, latency/throughput; against `reference` (e.g. the dense model) when given."""
    if isinstance(model, str):
        loaded = load_model(model)
        model, tokenizer = loaded.model, loaded.tokenizer
    if isinstance(reference, str):
        reference = load_model(reference).model
    from .eval.suite import run_eval

    return run_eval(model, tokenizer, ppl=ppl, seq_len=seq_len, max_windows=max_windows, max_tokens=max_tokens,
                    batch_size=batch_size, data_dir=data_dir, tasks=tasks, limit=limit,
                    task_batch_size=task_batch_size, offline_tasks=offline_tasks, speed=speed,
                    speed_options=speed_options, reference=reference, speed_reference=speed_reference)


__all__ = ["PruneResult", "build_calibration", "prune", "evaluate", "load_model", "check_output_dir"]
