"""Speed as the pruning papers measure it: prompt-processing latency and generation throughput.

Dense and pruned models are measured in the same process, their repeats interleaved so that drift of the
machine (other load, clocks) hits both alike; medians are reported, with ratios to the reference.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from ..record import count_parameters


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def _prompt_latency(model, ids: torch.Tensor) -> float:
    device = ids.device
    _sync(device)
    t = time.perf_counter()
    model(input_ids=ids, use_cache=False)
    _sync(device)
    return time.perf_counter() - t


@torch.no_grad()
def _generation_seconds(model, ids: torch.Tensor, new_tokens: int) -> float:
    device = ids.device
    _sync(device)
    t = time.perf_counter()
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    _sync(device)
    assert out.shape[1] == ids.shape[1] + new_tokens
    return time.perf_counter() - t


def checkpoint_bytes(path) -> int | None:
    if path is None or not Path(path).is_dir():
        return None
    return sum(p.stat().st_size for p in Path(path).glob("*.safetensors")) or None


def measure_speed(models: dict, *, prompt_len: int = 2048, gen_batch: int | None = None, gen_prompt_len: int = 64,
                  new_tokens: int = 128, repeats: int = 3, warmup: int = 1, reference: str | None = None,
                  paths: dict | None = None, seed: int = 0) -> dict:
    """`models`: name -> model. Returns per model medians and, if `reference` names one, ratios to it."""
    first = next(iter(models.values()))
    device = next(first.parameters()).device
    if gen_batch is None:
        gen_batch = 64 if device.type == "cuda" else 8
    vocab = min(m.config.vocab_size for m in models.values())
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(10, vocab, (1, prompt_len), generator=g).to(device)
    gen_ids = torch.randint(10, vocab, (gen_batch, gen_prompt_len), generator=g).to(device)
    for m in models.values():
        m.eval()
        for _ in range(warmup):
            _prompt_latency(m, prompt)
            _generation_seconds(m, gen_ids, min(8, new_tokens))
    lat = {k: [] for k in models}
    gen = {k: [] for k in models}
    for _ in range(repeats):  # interleaved
        for k, m in models.items():
            lat[k].append(_prompt_latency(m, prompt))
            gen[k].append(_generation_seconds(m, gen_ids, new_tokens))
    out = {"protocol": {"device": str(device), "dtype": str(next(first.parameters()).dtype),
                        "torch_threads": torch.get_num_threads(), "prompt_tokens": prompt_len,
                        "generation": f"batch {gen_batch} x {new_tokens} new tokens after a {gen_prompt_len}-token "
                                      "prompt, greedy, KV cache", "warmup": warmup, "repeats": repeats,
                        "statistic": "median over repeats, models interleaved"},
           "models": {}}
    for k, m in models.items():
        lat_med = statistics.median(lat[k])
        gen_med = statistics.median(gen[k])
        out["models"][k] = {
            "parameters": count_parameters(m),
            "checkpoint_bytes": checkpoint_bytes((paths or {}).get(k)),
            "prompt_latency_s": lat_med, "prompt_latency_all_s": lat[k],
            "prompt_tokens_per_s": prompt_len / lat_med,
            "generation_tokens_per_s": gen_batch * new_tokens / gen_med, "generation_all_s": gen[k],
        }
    if reference is not None and reference in out["models"]:
        ref = out["models"][reference]
        for k, v in out["models"].items():
            v["speedup_prompt"] = ref["prompt_latency_s"] / v["prompt_latency_s"]
            v["speedup_generation"] = v["generation_tokens_per_s"] / ref["generation_tokens_per_s"]
            v["parameter_ratio"] = v["parameters"] / ref["parameters"]
    return out


def linear_flop_ratio(model, reference) -> float:
    """FLOPs of the linear layers per token (2 x their weights), pruned over reference: the ideal speed-up
    of the linear part is its inverse. Attention score FLOPs (prompt length x heads x head_dim) are not in
    it and are unchanged by hidden-channel slicing."""
    def linear_params(m):
        return sum(mod.weight.numel() for mod in m.modules() if isinstance(mod, torch.nn.Linear))

    return linear_params(model) / linear_params(reference)
