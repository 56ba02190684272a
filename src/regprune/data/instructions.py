"""Instruction data (Alpaca-style JSON / JSONL: instruction, input, output) and Compresso's collaborative prompt.

Examples are formatted with the Alpaca template and packed one after the other into fixed-length windows.
Windows for training carry a loss mask: 1 on response tokens (the output and the end-of-sequence token),
0 on the prompt, so the model learns to answer, not to reproduce instructions or the collaborative prompt.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from ..errors import DataUnavailable

# Our own wording of Compresso's idea: tell the model it is being pruned and ask it to keep its answers right.
COLLABORATIVE_PROMPT = (
    "Note to the model: you are being compressed. Some of your attention heads and channels are being removed "
    "to make you smaller and faster. Make the most of what remains and keep every answer correct and complete."
)

_TEMPLATE_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                   "context. Write a response that appropriately completes the request.\n\n"
                   "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
_TEMPLATE = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
             "request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")


def _rows(path: Path) -> list:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            rows = json.loads(text)
        except ValueError as e:
            raise DataUnavailable(f"{path}: not valid JSON ({e})") from None
        if not isinstance(rows, list):
            raise DataUnavailable(f"{path}: an instruction file holds a JSON list of objects")
        return rows
    rows = []
    for i, line in enumerate(text.splitlines()):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as e:
                raise DataUnavailable(f"{path}:{i + 1}: not valid JSON ({e})") from None
    return rows


def is_instruction_file(path) -> bool:
    """A .json file, or a .jsonl file whose first row has an 'instruction' field."""
    path = Path(path)
    if path.suffix == ".json":
        return True
    if path.suffix != ".jsonl":
        return False
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    return isinstance(row := json.loads(line), dict) and "instruction" in row
                except ValueError:
                    return False
    return False


def load_instructions(path) -> list[dict]:
    """Rows with string fields `instruction`, `output` and optionally `input`."""
    path = Path(path)
    rows = _rows(path)
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("instruction"), str) \
                or not isinstance(row.get("output"), str) or not isinstance(row.get("input", ""), str):
            raise DataUnavailable(f"{path}: row {i + 1} needs string fields 'instruction' and 'output' "
                                  "(and optionally 'input'), like the Alpaca data")
        out.append({"instruction": row["instruction"], "input": row.get("input", ""), "output": row["output"]})
    if not out:
        raise DataUnavailable(f"{path}: no instruction rows")
    return out


def split_examples(examples: list[dict], seed: int, fraction: float) -> tuple[list[dict], list[dict]]:
    """Shuffle (seeded) and split into a training part and a recovery part."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n = max(1, round(len(order) * fraction))
    return [examples[i] for i in order[:n]], [examples[i] for i in order[n:]]


def format_example(ex: dict, prompt: str | None = None) -> tuple[str, str]:
    """(prompt part, response part) of one example; `prompt` (the collaborative prompt) goes first."""
    head = (_TEMPLATE_INPUT if ex["input"].strip() else _TEMPLATE).format(**ex)
    if prompt:
        head = prompt + "\n\n" + head
    return head, ex["output"]


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def pack_examples(tokenizer, examples: list[dict], n: int, seq_len: int,
                  prompt: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack formatted examples (in the given order) into up to `n` windows: (ids [k, L], loss mask [k, L])."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids, mask = [], []
    for ex in examples:
        head, answer = format_example(ex, prompt)
        h, a = _encode(tokenizer, head), _encode(tokenizer, answer) + eos
        ids += h + a
        mask += [0] * len(h) + [1] * len(a)
        if len(ids) >= n * seq_len:
            break
    k = min(n, len(ids) // seq_len)
    if k == 0:
        raise DataUnavailable(f"the instruction data has {len(ids)} tokens, fewer than one window of {seq_len}")
    return (torch.tensor(ids[:k * seq_len]).view(k, seq_len),
            torch.tensor(mask[:k * seq_len], dtype=torch.bool).view(k, seq_len))


def prefix_windows(tokenizer, windows: torch.Tensor, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain-text windows with `prompt` in front, same length (the text's tail is cut); mask 0 on the prompt."""
    p = torch.tensor(_encode(tokenizer, prompt + "\n\n"), dtype=windows.dtype)
    if len(p) >= windows.shape[1] - 1:
        raise DataUnavailable(f"windows of {windows.shape[1]} tokens are too short for the {len(p)}-token "
                              "collaborative prompt; use a larger --seq-len or turn the prompt off")
    ids = torch.cat([p.expand(len(windows), -1), windows[:, :windows.shape[1] - len(p)]], dim=1)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[:, :len(p)] = False
    return ids, mask


def instruction_windows(tokenizer, path, *, num_samples: int, seq_len: int, seed: int,
                        regularize_fraction: float) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Windows for any method from an instruction file (no collaborative prompt): the shuffled examples are
    split into a training and a recovery part, each packed into windows; returns (train, recovery, protocol)."""
    examples = load_instructions(path)
    train_ex, rec_ex = split_examples(examples, seed, regularize_fraction)
    n_train = max(1, round(num_samples * regularize_fraction))
    train, _ = pack_examples(tokenizer, train_ex, n_train, seq_len)
    rec = pack_examples(tokenizer, rec_ex, num_samples - n_train, seq_len)[0] if rec_ex and num_samples > n_train \
        else torch.empty(0, seq_len, dtype=torch.long)
    protocol = {"kind": "instructions", "source": str(path), "examples": len(examples), "seq_len": seq_len,
                "seed": seed, "regularize_fraction": regularize_fraction, "num_samples": num_samples,
                "format": "Alpaca template, examples shuffled (random.Random(seed)) and split, then packed "
                          "back to back into windows (end-of-sequence token after each output)",
                "regularize_windows": len(train), "recovery_windows": len(rec),
                "regularize_examples": len(train_ex), "recovery_examples": len(rec_ex)}
    return train, rec, protocol


def training_examples(protocol: dict) -> list[dict]:
    """The training part of the examples behind calibration windows made by `instruction_windows`."""
    examples = load_instructions(protocol["source"])
    return split_examples(examples, protocol["seed"], protocol["regularize_fraction"])[0]
