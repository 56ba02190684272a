"""Perplexity with an explicit protocol (DESIGN.md §5)."""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data.sources import TextSource, load_text, parse_source
from ..data.windows import eval_windows, tokenize


@torch.no_grad()
def perplexity_on_windows(model, windows: torch.Tensor, batch_size: int = 1, desc: str = "ppl") -> dict:
    """Each window is an independent sequence; loss on tokens 1..L-1; ppl = exp(total NLL / tokens)."""
    model.eval()
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    for start in tqdm(range(0, len(windows), batch_size), desc=desc, leave=False):
        batch = windows[start:start + batch_size].to(device)
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum")
        total_nll += nll.item()
        total_tokens += batch[:, 1:].numel()
    return {"ppl": math.exp(total_nll / total_tokens), "nll": total_nll / total_tokens,
            "predicted_tokens": total_tokens}


def evaluate_perplexity(model, tokenizer, source: TextSource | str, *, seq_len: int = 512,
                        max_windows: int | None = 64, max_tokens: int | None = None, batch_size: int = 1,
                        data_dir=None) -> dict:
    """Perplexity on the first windows of a source, with the protocol spelled out in the result."""
    src = parse_source(source) if isinstance(source, str) else source
    ids = tokenize(tokenizer, load_text(src, data_dir))
    if max_tokens is not None:
        cap = max(1, max_tokens // seq_len)
        max_windows = cap if max_windows is None else min(max_windows, cap)
    windows = eval_windows(ids, seq_len, max_windows)
    t0 = time.perf_counter()
    res = perplexity_on_windows(model, windows, batch_size, desc=f"ppl {src}")
    res["seconds"] = round(time.perf_counter() - t0, 2)
    res["protocol"] = {
        "source": str(src),
        "text": "rows joined by '\\n\\n' (c4: documents joined by ' ')",
        "tokenization": "add_special_tokens=False, no BOS",
        "seq_len": seq_len,
        "windows": len(windows),
        "windows_available": len(ids) // seq_len,
        "window_placement": "non-overlapping, from the start of the text",
        "loss": "tokens 1..L-1 of each window; ppl = exp(total NLL / predicted tokens)",
        "dataset_tokens": len(ids),
    }
    return res
