"""One evaluation run: perplexity, zero-shot accuracy and speed of a model, optionally against a reference
(the dense model) measured in the same run. Produces the JSON result and its human-readable table."""
from __future__ import annotations

from ..data.sources import parse_eval_source
from ..record import count_parameters, versions
from .perplexity import evaluate_perplexity

def perplexities(model, tokenizer, sources, *, seq_len: int = 512, max_windows: int | None = 64,
                 max_tokens: int | None = None, batch_size: int = 1, data_dir=None) -> dict:
    """{source: perplexity result} for each evaluation source (bare names: their evaluation split)."""
    out = {}
    for name in sources or ():
        src = parse_eval_source(name)
        out[str(src)] = evaluate_perplexity(model, tokenizer, src, seq_len=seq_len, max_windows=max_windows,
                                            max_tokens=max_tokens, batch_size=batch_size, data_dir=data_dir)
    return out


def _quality(model, tokenizer, *, ppl, seq_len, max_windows, max_tokens, batch_size, data_dir, tasks, limit,
             task_batch_size, offline_tasks) -> dict:
    out = {"parameters": count_parameters(model),
           "perplexity": perplexities(model, tokenizer, ppl, seq_len=seq_len, max_windows=max_windows,
                                      max_tokens=max_tokens, batch_size=batch_size, data_dir=data_dir)}
    if tasks:
        from .zeroshot import evaluate_zeroshot

        out["zeroshot"] = evaluate_zeroshot(model, tokenizer, tasks, limit=limit, batch_size=task_batch_size,
                                            offline=offline_tasks)
    return out


def run_eval(model, tokenizer, *, ppl=("wikitext2",), seq_len: int = 512, max_windows: int | None = 64,
             max_tokens: int | None = None, batch_size: int = 1, data_dir=None, tasks=None, limit=None,
             task_batch_size: int = 8, offline_tasks: bool = True, speed: bool = False, speed_options=None,
             reference=None, reference_tokenizer=None, name: str = "model", reference_name: str = "dense",
             paths: dict | None = None, speed_reference=None) -> dict:
    """Evaluate `model` (and `reference`, if given, with the same protocol).

    `speed_reference`: a model timed with `model` (interleaved) for speed ratios, without evaluating its
    quality again (a sweep has evaluated the dense model once already)."""
    q = dict(ppl=ppl, seq_len=seq_len, max_windows=max_windows, max_tokens=max_tokens, batch_size=batch_size,
             data_dir=data_dir, tasks=tasks, limit=limit, task_batch_size=task_batch_size,
             offline_tasks=offline_tasks)
    result = {"model": name, **_quality(model, tokenizer, **q)}
    if reference is not None:
        result["compare_to"] = {"model": reference_name,
                                **_quality(reference, reference_tokenizer or tokenizer, **q)}
    if speed:
        from .speed import linear_flop_ratio, measure_speed

        if reference is None and speed_reference is not None:
            reference = speed_reference
        models = {name: model} if reference is None else {reference_name: reference, name: model}
        result["speed"] = measure_speed(models, reference=reference_name if reference is not None else None,
                                        paths=paths, **(speed_options or {}))
        if reference is not None:
            fr = linear_flop_ratio(model, reference)
            result["speed"]["linear_flop_ratio"] = fr
            result["speed"]["ideal_linear_speedup"] = 1.0 / fr
    result["versions"] = versions()
    return result


def format_markdown(result: dict) -> str:
    """The human-readable table of a run_eval result, with its protocol."""
    rows = [("model", result)]
    if "compare_to" in result:
        rows.insert(0, ("reference", result["compare_to"]))
    lines = []
    ppl_keys = list(result.get("perplexity", {}))
    task_keys = list(result.get("zeroshot", {}).get("headline", {}))
    head = ["", "parameters"] + [f"ppl {k}" for k in ppl_keys] + task_keys + (["mean"] if task_keys else [])
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for label, r in rows:
        cells = [f"{label}: {r['model']}", f"{r['parameters']:,}"]
        cells += [f"{r['perplexity'][k]['ppl']:.3f}" for k in ppl_keys]
        if task_keys:
            zs = r.get("zeroshot", {})
            cells += [f"{100 * zs['headline'][k]:.2f}" for k in task_keys]
            cells.append(f"{100 * zs['mean_headline']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for k in ppl_keys:
        p = result["perplexity"][k]["protocol"]
        lines.append(f"- perplexity {k}: {p['windows']} windows x {p['seq_len']} tokens ({p['windows_available']} "
                     f"available), {p['window_placement']}, {p['tokenization']}, loss {p['loss']}")
    if task_keys:
        zs = result["zeroshot"]
        p = zs["protocol"]
        for k, v in zs["tasks"].items():
            lines.append(f"- {k}: {v['n']} of {v['n_available']} examples, split {v['split']} ({v['source']}); "
                         f"acc {v['acc']:.4f}" + (f", acc_norm {v['acc_norm']:.4f}" if "acc_norm" in v else ""))
        lines.append(f"- zero-shot: {p['harness']}, lm-eval {p['lm_eval']}, transformers {p['transformers']}, "
                     f"{p['num_fewshot']}-shot, limit {p['limit']}; headline metric {p['headline_metric']}")
    if "speed" in result:
        lines += ["", format_speed(result["speed"])]
    v = result.get("versions", {})
    lines.append(f"- versions: torch {v.get('torch')}, transformers {v.get('transformers')}, "
                 f"regprune {v.get('regprune')}")
    return "\n".join(lines) + "\n"


def format_speed(s: dict) -> str:
    """Table of a measure_speed result (ratios to its reference), with the protocol."""
    lines = ["| speed | parameters | checkpoint (MB) | prompt latency (s) | prompt speed-up | "
             "generation (tok/s) | generation speed-up |", "|---|---:|---:|---:|---:|---:|---:|"]
    for k, v in s["models"].items():
        ck = f"{v['checkpoint_bytes'] / 1e6:.1f}" if v.get("checkpoint_bytes") else "-"
        lines.append(f"| {k} | {v['parameters']:,} | {ck} | {v['prompt_latency_s']:.3f} | "
                     f"{v.get('speedup_prompt', 1.0):.2f}x | {v['generation_tokens_per_s']:.1f} | "
                     f"{v.get('speedup_generation', 1.0):.2f}x |")
    p = s["protocol"]
    lines.append("")
    lines.append(f"- speed: {p['device']}, {p['dtype']}, {p['torch_threads']} threads; prompt {p['prompt_tokens']} "
                 f"tokens; generation {p['generation']}; {p['warmup']} warm-up, {p['repeats']} repeats, "
                 f"{p['statistic']}")
    if isinstance(s.get("ideal_linear_speedup"), float):
        lines.append(f"- ideal speed-up of the linear layers (FLOP ratio): {s['ideal_linear_speedup']:.2f}x")
    return "\n".join(lines)
