"""How numbers and tables are written in every Markdown output (sweep table, compare table, report).

One place for: perplexities, accuracies (stored as fractions, shown in percent), parameter counts and other
numbers, speed-up ratios, the perplexity protocol in words, `key=value` lists, and Markdown tables.
"""
from __future__ import annotations

import math

from .validate import is_int, is_number  # noqa: F401  (is_int: re-exported for the tables)

MISSING = "—"  # a value that was not measured


def is_num(x) -> bool:
    """A finite int or float (not a bool)."""
    return is_number(x) and math.isfinite(x)


def fmt_ppl(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.2f}"


def fmt_acc(v: float) -> str:  # accuracies are stored as fractions, shown in percent
    return f"{100 * v:.2f}"


def fmt_pct(v: float) -> str:
    """A fraction in percent with one decimal (0.75 -> 75.0)."""
    return f"{100 * v:.1f}"


def fmt_count(v: float) -> str:
    """A count, rounded, with thousands separators (1234.4 -> 1,234)."""
    return f"{v:,.0f}"


def fmt_num(v) -> str:
    if isinstance(v, bool) or not is_num(v):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if v == 0:
        return "0"
    return f"{v:.4g}" if abs(v) < 1e5 else f"{v:,.0f}"


def fmt_params(n: int | None, before: int | None = None) -> str:
    """A parameter count (0.13M, or 12,345 below a million), with its share of `before` when given."""
    if n is None:
        return MISSING
    s = f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n:,}"
    return s + (f" ({100 * n / before:.1f}%)" if before else "")


def fmt_millions(n: float | None) -> str:
    return MISSING if n is None else f"{n / 1e6:.1f}"


def fmt_speedup(v: float | None) -> str:
    return MISSING if v is None else f"{v:.2f}×"


def or_missing(v, fmt) -> str:
    """`fmt(v)`, or the missing mark when `v` is None."""
    return MISSING if v is None else fmt(v)


def kv_text(d: dict, sep: str = "; ", value=str, sort: bool = True) -> str:
    """`k=v` pairs of a dict (sorted by key unless `sort` is false), values written by `value`."""
    items = sorted(d.items()) if sort else d.items()
    return sep.join(f"{k}={value(v)}" for k, v in items)


def ppl_protocol_text(p: dict | None, *, brief: bool = False) -> str:
    """A perplexity protocol (eval.json's `protocol`) in words.

    brief: the one-line form of the sweep and compare notes ("64 windows × 512 tokens of 564 available,
    <placement>, <tokenization>"); otherwise the report's form, with every recorded key."""
    if not p:
        return "protocol not recorded"
    if brief:
        s = f"{p.get('windows', '?')} windows × {p.get('seq_len', '?')} tokens"
        if p.get("windows_available") is not None:
            s += f" of {p['windows_available']} available"
        extra = [str(p[k]) for k in ("window_placement", "tokenization") if p.get(k)]
        return s + (", " + ", ".join(extra) if extra else "")
    parts = []
    if "windows" in p and "seq_len" in p:
        s = f"{fmt_num(p['windows'])} windows × {fmt_num(p['seq_len'])} tokens"
        if "windows_available" in p:
            s += f" (of {fmt_num(p['windows_available'])} available)"
        parts.append(s)
    for k in ("window_placement", "tokenization", "text", "loss"):
        if k in p:
            parts.append(str(p[k]))
    if "dataset_tokens" in p:
        parts.append(f"{fmt_num(p['dataset_tokens'])} tokens in the text")
    known = {"source", "windows", "seq_len", "windows_available", "window_placement", "tokenization", "text",
             "loss", "dataset_tokens"}
    rest = {k: v for k, v in p.items() if k not in known}
    if rest:
        parts.append(kv_text(rest, value=lambda v: fmt_num(v) if is_num(v) else v))
    return "; ".join(parts)


def _cell(s) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def md_table(header: list[str], rows: list[list], align: list[str] | None = None) -> list[str]:
    """The lines of a Markdown table; `align`: "l" or "r" per column (default: first left, others right)."""
    align = align or ["l"] + ["r"] * (len(header) - 1)
    sep = ["---:" if a == "r" else ":---" for a in align]
    out = ["| " + " | ".join(_cell(h) for h in header) + " |", "| " + " | ".join(sep) + " |"]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return out


def bullets(notes: list[str]) -> str:
    return "\n".join(f"- {n}" for n in notes)


def table_with_notes(header: list[str], rows: list[list], notes: list[str]) -> str:
    """A Markdown table followed by a bulleted list of notes (the sweep and compare tables)."""
    return "\n".join(md_table(header, rows)) + "\n\n" + bullets(notes) + "\n"


__all__ = ["MISSING", "is_int", "is_num", "fmt_ppl", "fmt_acc", "fmt_pct", "fmt_count", "fmt_num", "fmt_params",
           "fmt_millions", "fmt_speedup", "or_missing", "kv_text", "ppl_protocol_text", "md_table", "bullets",
           "table_with_notes"]
