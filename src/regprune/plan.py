"""`regprune plan MODEL --method M`: peak memory per device for each phase of a run, from the config alone.

Nothing is downloaded but the config, and no weight is allocated: the model is built on PyTorch's meta
device (shapes without storage). The estimate per process (one per device) adds up:

- **weights**: the parameter count from the meta model x the bytes of the storage dtype (`--dtype`); a
  training run holds fp32 master weights (regprune upcasts a bf16/fp16 model for training);
- **gradients and AdamW state** of what is trained (4 + 8 bytes per trained parameter: every weight for
  DReSS, `slice --finetune` and TRSP, the adapters for Compresso and `--recover`); with N processes the
  FSDP2-sharded weights, gradients and optimizer state are divided by N, plus two gathered blocks (the one
  running and the one prefetched);
- **activations saved for the backward pass**, measured, not modelled: one and two decoder blocks run
  forward on the meta device at the run's batch (per process) and window length under
  `saved_tensors_hooks`, which see every tensor autograd keeps; their difference is the per-block cost
  (attention counted as a fused kernel keeps it: q, k, v, output and the log-sum-exp, no L x L
  matrix). With `--gradient-checkpointing` only each block's input is kept, plus one block's activations
  while it is recomputed;
- **the loss**: regprune's chunked, checkpointed LM head and loss keep a few [chunk, vocab] fp32 tensors
  at a time (chunk = 2^26 / vocabulary tokens): four (logits, log-probabilities, probabilities, gradient),
  five with distillation (the teacher's);
- **the teacher**: cached (default), its top-k log-probabilities, indices and tail mass for the training
  windows, in host memory (up to 2 GiB, then a memory-mapped file); live: one more copy of the weights on
  the device;
- **the runtime**: on the CPU the memory this process holds with torch and transformers loaded (what a
  `regprune prune` process holds before it loads a model); on CUDA, 0.5 GiB for the CUDA context (assumed);
- **the calibration text**: tokenized at once, which peaks at about 137 bytes per character with a fast
  tokenizer and leaves about 61 in the process (measured; counted when the text is local: `--data-dir` or
  files).

Multi-process runs also hold the whole fp32 model in each process before the training loop shards it
(regprune/distributed.py); that is its own phase (`before sharding`). The estimate is checked against
peaks measured on this project's CPU machine (bench/plan_smollm2.py, tests/test_plan.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .arch import config_fields
from .errors import RegpruneError

GiB = 1 << 30
CUDA_CONTEXT_BYTES = GiB // 2
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
TRAINING_METHODS = ("dress", "slice+finetune", "trsp", "compresso")


@dataclass
class Phase:
    name: str
    device_bytes: int
    parts: dict = field(default_factory=dict)
    host_bytes: int = 0  # beyond the device (the cached teacher, the gathered checkpoint on process 0)


def _meta_model(config, num_layers: int | None = None, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    cfg = config
    if num_layers is not None:
        import copy

        from .surgery.layers import _config_updates

        cfg = copy.deepcopy(config)  # the first num_layers blocks, per-layer config entries as block removal sets them
        n = getattr(cfg, config_fields(cfg).layers)
        for k, v in _config_updates(cfg, n, list(range(num_layers))).items():
            setattr(cfg, k, v)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(cfg, dtype=dtype)


class _FusedAttention(torch.autograd.Function):
    """What a fused attention kernel (flash / memory-efficient, CPU or CUDA) keeps for backward."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = q.new_empty(q.shape[:-1] + (v.shape[-1],))
        lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):  # pragma: no cover - never run (shapes only)
        q, k, v, _, _ = ctx.saved_tensors
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)


def _fused_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False, **_):
    if enable_gqa and k.shape[-3] != q.shape[-3]:
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], -3)
        v = v.repeat_interleave(q.shape[-3] // v.shape[-3], -3)
    return _FusedAttention.apply(q, k, v)


def _with_lora(r: int, alpha: float):
    def wrap(model):
        from .train.lora import add_lora

        return add_lora(model, r, alpha).get_base_model()
    return wrap


def _with_compresso(model):
    from .methods.compresso.masks import CompressoMasks

    base = _with_lora(8, 16.0)(model)
    masks = CompressoMasks(base)
    masks.attach(base)
    for p in masks.parameters():
        p.requires_grad_(True)
    masks.sample()  # as before every training step
    return base


def saved_activation_bytes(config, batch: int, seq_len: int, dtype=torch.float32, wrap=None) -> tuple[int, int]:
    """(bytes kept for backward per decoder block, bytes outside the blocks) for a [batch, seq_len] forward,
    measured on the meta device with one and two blocks; `wrap(model)` first adds what the run adds (LoRA
    adapters, Compresso's masks) and returns the model to run."""
    import torch.nn.functional as F

    hidden = getattr(config, config_fields(config).hidden)

    def measure(n: int) -> int:
        model = _meta_model(config, n, dtype)
        model.train()
        if wrap is None:
            for p in model.parameters():
                p.requires_grad_(True)
        else:
            model = wrap(model)
        seen: dict[int, int] = {}

        def pack(t):
            s = t.untyped_storage()
            seen[s._cdata] = s.nbytes()
            return t

        decoder = model.get_decoder()
        x = torch.empty((batch, seq_len, hidden), dtype=dtype, device="meta", requires_grad=True)
        pos = torch.arange(seq_len, device="meta").unsqueeze(0).expand(batch, -1)
        real = F.scaled_dot_product_attention
        F.scaled_dot_product_attention = _fused_sdpa
        try:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                pe = decoder.rotary_emb(x, pos) if hasattr(decoder, "rotary_emb") else None
                for layer in decoder.layers:  # the blocks as the decoder runs them (causal, no mask tensor)
                    out = layer(x, attention_mask=None, position_ids=pos, position_embeddings=pe, use_cache=False)
                    x = out[0] if isinstance(out, tuple) else out
                decoder.norm(x)
        finally:
            F.scaled_dot_product_attention = real
        return sum(seen.values())

    one, two = measure(1), measure(2)
    # outside the blocks: the final norm and rotary tables (measured), the embedding output (one [b, L, d])
    emb = batch * seq_len * hidden * torch.empty((), dtype=dtype).element_size()
    return two - one, one - (two - one) + emb


def _params(model) -> tuple[int, int, int]:
    """(all parameters, the largest block's, the embeddings')."""
    from .arch import get_arch
    from .arch.registry import _get

    total = sum(p.numel() for p in model.parameters())
    blocks = _get(model, get_arch(model).layers)
    largest = max(sum(p.numel() for p in b.parameters()) for b in blocks)
    emb = model.get_input_embeddings().weight.numel()
    return total, largest, emb


def _lora_params(model, r: int) -> int:
    """Adapter parameters of LoRA rank r on every linear layer of the blocks (regprune's recovery targets)."""
    from .arch import get_arch
    from .arch.registry import _get

    n = 0
    for block in _get(model, get_arch(model).layers):
        for m in block.modules():
            if isinstance(m, torch.nn.Linear):
                n += r * (m.in_features + m.out_features)
    return n


TOKENIZE_PEAK, TOKENIZE_KEPT = 137, 61


def _calibration_chars(calib: str | None, data_dir) -> int:
    """Characters of the calibration text when it is local (a data directory or files), else 0."""
    if calib is None:
        return 0
    from .data.sources import load_text, parse_mixture
    from .errors import DataUnavailable

    n = 0
    for source, _ in parse_mixture(calib):
        if data_dir is None and source.name != "file":
            return 0
        try:
            n += len(load_text(source, data_dir))
        except (DataUnavailable, OSError):
            return 0
    return n


def _runtime_bytes(device: str) -> int:
    if device.startswith("cuda"):
        return CUDA_CONTEXT_BYTES
    from .record import current_rss_bytes

    return current_rss_bytes()


def plan(model_spec: str, method: str = "dress", *, processes: int = 1, dtype: str = "float32", device: str = "cpu",
         batch_size: int = 4, seq_len: int = 512, ratio: float = 0.25, windows: int | None = None,
         objective: str = "kd", teacher: str = "cached", top_k: int = 256, gradient_checkpointing: bool = False,
         mixed_precision: str = "auto", recover: bool = False, lora_r: int = 32, steps: int = 48,
         device_memory_gib: float | None = None, calib: str | None = None, data_dir=None) -> dict:
    """Phases of a `regprune prune` run and their estimated peak memory per process (see the module docstring)."""
    from .models.load import inspect_model

    if dtype not in DTYPE_BYTES:
        raise RegpruneError(f"--dtype must be one of {', '.join(DTYPE_BYTES)}, got {dtype!r}")
    for name, v in (("--gpus", processes), ("--batch-size", batch_size), ("--seq-len", seq_len), ("--steps", steps)):
        if not isinstance(v, int) or v < 1:
            raise RegpruneError(f"{name} must be a whole number >= 1, got {v!r}")
    if batch_size % processes:
        raise RegpruneError(f"--batch-size {batch_size} must be a multiple of the number of processes ({processes})")
    config, source = inspect_model(model_spec)
    model = _meta_model(config)
    P, block_p, emb_p = _params(model)
    s = DTYPE_BYTES[dtype]
    vocab = model.get_output_embeddings().weight.shape[0]
    chunk = min(batch_size // processes * seq_len, max(1, (1 << 26) // vocab))
    bf16 = mixed_precision == "bf16" or (mixed_precision == "auto" and device.startswith("cuda"))
    act_dtype = torch.bfloat16 if bf16 else torch.float32
    per_proc_batch = batch_size // processes
    fields = config_fields(config)
    n_layers = getattr(config, fields.layers)
    tokens = per_proc_batch * seq_len

    def activations_of(wrap=None) -> tuple[int, int]:
        per_block, outside = saved_activation_bytes(config, per_proc_batch, seq_len, act_dtype, wrap)
        if gradient_checkpointing:
            return n_layers * tokens * getattr(config, fields.hidden) * (2 if bf16 else 4) + per_block + outside, per_block
        return n_layers * per_block + outside, per_block

    activations, per_block = activations_of(_with_compresso if method == "compresso" else None)
    kd = objective in ("kd", "mix")
    loss_bytes = (5 if kd else 4) * chunk * vocab * 4
    runtime = _runtime_bytes(device)
    n_windows = windows if windows is not None else steps * batch_size
    teacher_host = n_windows * seq_len * (top_k * 12 + 4) if kd and teacher == "cached" else 0
    if teacher_host > 2 * GiB:
        teacher_host = 0  # memory-mapped file instead (disk)
    teacher_device = P * s if kd and teacher == "live" else 0

    # Tokenizing the calibration text at once (the windows are cut from the whole token stream) peaks at
    # about TOKENIZE_PEAK bytes per character of text with a fast tokenizer and leaves TOKENIZE_KEPT in the
    # process (measured with SmolLM2's on WikiText-2 + C4: 137 and 61); known when the text is local.
    chars = _calibration_chars(calib, data_dir)
    data_peak = TOKENIZE_PEAK * chars if chars else 0
    kept = TOKENIZE_KEPT * chars if chars and not device.startswith("cuda") else 0
    phases = [Phase("calibration data (tokenizing the text)", runtime + data_peak,
                    {"runtime": runtime, "tokenizer peak": data_peak} if chars else
                    {"runtime": runtime, "tokenizer peak (text not local: not counted)": 0})]
    runtime += kept  # on the CPU, what tokenizing leaves stays in the process
    phases.append(Phase("load", runtime + P * s, {"runtime": runtime, "weights": P * s}))
    forward_transient = per_proc_batch * seq_len * (3 * getattr(config, fields.ffn) + 4 * getattr(config, fields.hidden)) * 4 \
        + 2 * chunk * vocab * 4
    phases.append(Phase("forward-only scoring (selection, block scores, teacher cache)",
                        runtime + P * s + forward_transient,
                        {"runtime": runtime, "weights": P * s, "one batch's transient": forward_transient}))
    trains = method in TRAINING_METHODS
    if trains:
        if method == "slice+finetune":  # trains the sliced model: fewer hidden channels
            kept = 1 - ratio
            trained = int(P * kept)
            acts = int(activations * kept)
        else:
            trained, acts = P, activations
        if method == "compresso":
            lora = _lora_params(model, 8)
            master = 4 * P
            opt = 12 * lora
            trained_label = f"LoRA r=8 adapters ({lora:,}) and masks"
        else:
            master = 4 * trained
            opt = 12 * trained  # gradients (4) + AdamW (8)
            trained_label = f"every weight ({trained:,})"
        if processes > 1:
            master_shard = master // processes + 2 * 4 * block_p  # own shard + two gathered blocks
            opt = opt // processes if method != "compresso" else opt
            phases.append(Phase("before sharding (every process holds the whole fp32 model)",
                                runtime + 4 * P, {"runtime": runtime, "fp32 weights": 4 * P}))
        else:
            master_shard = master
        parts = {"runtime": runtime, "fp32 master weights" + (" (shard + 2 gathered blocks)" if processes > 1 else ""):
                 master_shard, f"gradients + AdamW of {trained_label}": opt,
                 "activations kept for backward": acts, "loss chunk tensors": loss_bytes}
        if teacher_device:
            parts["live teacher"] = teacher_device
        host = teacher_host
        if teacher_host and not device.startswith("cuda"):  # on the CPU the host is the device
            parts["cached teacher"], host = teacher_host, 0
        phases.append(Phase(f"training ({method}, {objective}" + (", cached teacher" if kd and teacher == "cached" else "")
                            + ")", sum(parts.values()), parts, host_bytes=host))
    if recover:
        lora = _lora_params(model, lora_r)
        kept = 1 - ratio if method in ("dress", "slice", "slice+finetune", "slicegpt") else 1.0
        lora_acts, _ = activations_of(_with_lora(lora_r, 10.0))
        parts = {"runtime": runtime, "fp32 weights (frozen)": int(4 * P * kept), f"LoRA r={lora_r} + grads + AdamW":
                 16 * lora, "activations kept for backward": int(lora_acts * kept), "loss chunk tensors": loss_bytes}
        phases.append(Phase("recovery (LoRA)", sum(parts.values()), parts))
    phases.append(Phase("save (process 0)", runtime + P * s, {"runtime": runtime, "weights": P * s}))
    peak = max(phases, key=lambda ph: ph.device_bytes)
    out = {
        "model": model_spec, "source": source, "model_type": config.model_type, "parameters": P, "method": method,
        "processes": processes, "device": device, "dtype": dtype, "batch_size": batch_size, "seq_len": seq_len,
        "mixed_precision": "bf16" if bf16 else "no", "gradient_checkpointing": gradient_checkpointing,
        "objective": objective, "teacher": teacher,
        "activations_per_block_bytes": per_block, "phases": [ph.__dict__ for ph in phases],
        "peak_phase": peak.name, "peak_device_bytes": peak.device_bytes,
        "peak_host_bytes": max(ph.host_bytes for ph in phases),
    }
    if device_memory_gib is not None:
        out["fits"] = peak.device_bytes <= device_memory_gib * GiB
        out["device_memory_bytes"] = int(device_memory_gib * GiB)
    return out


def format_plan(p: dict) -> str:
    from .formatting import md_table

    def g(b: int) -> str:
        return f"{b / GiB:.2f}"

    lines = [f"# Memory plan: {p['model']} ({p['model_type']}, {p['parameters'] / 1e6:,.1f}M parameters), "
             f"method {p['method']}, {p['processes']} process(es) on {p['device']}", ""]
    rows = [[ph["name"], g(ph["device_bytes"]), "; ".join(f"{k} {g(v)}" for k, v in ph["parts"].items()),
             g(ph["host_bytes"]) if ph["host_bytes"] else "—"] for ph in p["phases"]]
    lines += md_table(["phase", "GiB per device", "of which (GiB)", "host GiB besides"], rows)
    lines.append("")
    lines.append(f"Peak: {g(p['peak_device_bytes'])} GiB per device ({p['peak_phase']}); batch {p['batch_size']} x "
                 f"{p['seq_len']} tokens, dtype {p['dtype']}, mixed precision {p['mixed_precision']}, gradient "
                 f"checkpointing {'on' if p['gradient_checkpointing'] else 'off'}, objective {p['objective']}.")
    if "fits" in p:
        lines.append(("Fits" if p["fits"] else "Does NOT fit") + f" in {g(p['device_memory_bytes'])} GiB per device"
                     + ("." if p["fits"] else ": try --gpus N (sharding), --gradient-checkpointing, a smaller "
                        "--batch-size, or --mixed-precision bf16."))
    return "\n".join(lines)


__all__ = ["plan", "format_plan", "saved_activation_bytes"]
