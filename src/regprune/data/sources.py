"""Text sources: named corpora (hub or an offline data directory), local files, and a built-in text.

A source is written `NAME[:SPLIT]` (`wikitext2:validation`, `c4:train`, `builtin:calibration`) or is a
path to a `.txt` / `.jsonl` file (an Alpaca-style `.json` / `.jsonl` instruction file is calibrated on as
packed instruction examples: data/instructions.py). Each source turns into one string, built the way the
pruning papers build it (WikiText-2: rows joined by blank lines), so that windows and perplexities are comparable.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataUnavailable, RegpruneError

log = logging.getLogger(__name__)

DATA_DIR_ENV = "REGPRUNE_DATA_DIR"

# A general mixture by default: calibrating on one corpus fits the pruned model to it (measured in
# bench/results/generality_smollm2.md). The DReSS paper's setting is WikiText-2 alone (PAPER_CALIBRATION).
DEFAULT_CALIBRATION = "c4:train@0.5,wikitext2:validation@0.5"
PAPER_CALIBRATION = "wikitext2:validation"

# Splits that regprune evaluates on: calibrating on them is refused.
EVAL_SPLITS = {("wikitext2", "test"), ("c4", "validation"), ("ptb", "test"), ("builtin", "eval")}

# Offline layout (that of ../shared/data): split -> file relative to the data directory.
_OFFLINE_FILES = {
    ("wikitext2", "train"): "wikitext-2-raw/wiki.train.raw",
    ("wikitext2", "test"): "wikitext-2-raw/wiki.test.raw",
    ("wikitext2", "validation"): "wikitext-2-raw/wiki.valid.raw",
    ("c4", "train"): "c4/c4-train.00000-of-01024.head1041.jsonl",
    ("c4", "validation"): "c4/c4-validation.00000-of-00008.head1025.jsonl",
    ("ptb", "train"): "ptb/ptb.train.txt",
    ("ptb", "validation"): "ptb/ptb.valid.txt",
    ("ptb", "test"): "ptb/ptb.test.txt",
}
_SPLITS = {"wikitext2": ("train", "validation", "test"), "c4": ("train", "validation"),
           "ptb": ("train", "validation", "test"), "builtin": ("calibration", "eval")}
_ALIASES = {"valid": "validation", "val": "validation", "calib": "calibration"}


@dataclass(frozen=True)
class TextSource:
    name: str  # wikitext2 | c4 | builtin | file
    split: str | None = None
    path: str | None = None

    def __str__(self) -> str:
        return self.path if self.name == "file" else f"{self.name}:{self.split}"

    @property
    def is_eval_split(self) -> bool:
        return (self.name, self.split) in EVAL_SPLITS


def parse_source(text: str, default_split: str | None = None) -> TextSource:
    if text.endswith((".txt", ".json", ".jsonl", ".raw")) or os.sep in text:
        p = Path(text).expanduser()
        if not p.is_file():
            raise DataUnavailable(f"data file not found: {p}")
        return TextSource("file", path=str(p.resolve()))
    name, _, split = text.partition(":")
    name = {"wikitext": "wikitext2", "wikitext-2": "wikitext2"}.get(name, name)
    if name not in _SPLITS:
        raise DataUnavailable(
            f"unknown data source {text!r}: use wikitext2[:split], c4[:split], ptb[:split], builtin[:split] "
            "or a path to a .txt/.jsonl file"
        )
    split = _ALIASES.get(split, split) or default_split or _SPLITS[name][0]
    if split not in _SPLITS[name]:
        raise DataUnavailable(f"{name} has splits {', '.join(_SPLITS[name])}, not {split!r}")
    return TextSource(name, split)


def parse_mixture(text: str) -> list[tuple[TextSource, float]]:
    """`SOURCE[@WEIGHT],SOURCE[@WEIGHT],...` (e.g. `c4:train@0.5,wikitext2:validation@0.5`) as (source,
    weight) pairs with the weights normalized to sum to 1; a single source has weight 1."""
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or any(not p for p in parts):
        raise DataUnavailable(f"calibration {text!r}: expected SOURCE[@WEIGHT] items separated by commas, e.g. "
                              "c4:train@0.5,wikitext2:validation@0.5")
    out = []
    for p in parts:
        name, at, w = p.rpartition("@") if "@" in p else (p, "", "1")
        try:
            weight = float(w)
        except ValueError:
            if not Path(p).expanduser().is_file():  # a file whose name has an '@' and no weight
                raise DataUnavailable(f"calibration {text!r}: weight {w!r} of {name!r} is not a number") from None
            name, weight = p, 1.0
        if not (weight > 0 and weight < float("inf")):
            raise DataUnavailable(f"calibration {text!r}: weight of {name!r} must be a positive number, got {w}")
        out.append((parse_source(name), weight))
    names = [str(s) for s, _ in out]
    if len(set(names)) != len(names):
        raise DataUnavailable(f"calibration {text!r} names a source twice; give each source once with its weight")
    total = sum(w for _, w in out)
    return [(s, w / total) for s, w in out]


def parse_eval_source(text: str | TextSource) -> TextSource:
    """A source to evaluate on: a bare name means its evaluation split (wikitext2:test, c4:validation,
    builtin:eval)."""
    if isinstance(text, TextSource):
        return text
    name = {"wikitext": "wikitext2", "wikitext-2": "wikitext2"}.get(text, text)
    default = {"wikitext2": "test", "c4": "validation", "ptb": "test", "builtin": "eval"}.get(name)
    return parse_source(text, default_split=default)


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    d = data_dir or os.environ.get(DATA_DIR_ENV)
    if not d:
        return None
    p = Path(d).expanduser()
    if not p.is_dir():
        raise DataUnavailable(f"data directory not found: {p} (from {'--data-dir' if data_dir else DATA_DIR_ENV})")
    return p


def builtin_text(split: str) -> str:
    """English prose that ships with Python (pydoc's topic help), split into disjoint halves by topic.

    Every fifth topic (sorted by name) is the evaluation part, the rest the calibration part.
    """
    from pydoc_data.topics import topics

    keys = sorted(topics)
    chosen = [k for i, k in enumerate(keys) if (i % 5 == 4) == (split == "eval")]
    return "\n\n".join(topics[k] for k in chosen)


def _read_rows(path: Path) -> list[str]:
    try:
        return _read_rows_unchecked(path)
    except UnicodeDecodeError as e:
        raise DataUnavailable(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); convert it to UTF-8") from None
    except OSError as e:
        raise DataUnavailable(f"{path}: cannot read it ({e.strerror or e})") from None


def _read_rows_unchecked(path: Path) -> list[str]:
    if path.suffix == ".jsonl":
        rows = []
        with path.open(encoding="utf-8") as f:
            for i, line in enumerate(f):
                if line.strip():
                    try:
                        obj = json.loads(line)
                    except ValueError as e:
                        raise DataUnavailable(f"{path}:{i + 1}: not valid JSON ({e}); every line of a .jsonl "
                                              "file is one JSON object with a 'text' field") from None
                    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                        raise DataUnavailable(f"{path}:{i + 1}: JSONL rows need a string 'text' field")
                    rows.append(obj["text"])
        return rows
    with path.open(encoding="utf-8") as f:
        return [line if line.strip() else "" for line in f]


def _join(name: str, rows: list[str]) -> str:
    # WikiText-2 as in SparseGPT/Wanda; C4 documents as in their C4 evaluation and PTB sentences as in
    # SparseGPT's PTB evaluation (space-joined).
    return " ".join(rows) if name in ("c4", "ptb") else "\n\n".join(rows)


def _hub_rows(src: TextSource) -> list[str]:
    try:
        import datasets

        if src.name == "wikitext2":
            ds = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split=src.split)
        elif src.name == "ptb":
            ds = datasets.load_dataset("ptb_text_only", "penn_treebank", split=src.split)
            return [r.strip() for r in ds["sentence"]]
        else:
            files = {"train": "en/c4-train.00000-of-01024.json.gz",
                     "validation": "en/c4-validation.00000-of-00008.json.gz"}
            ds = datasets.load_dataset("allenai/c4", data_files={src.split: files[src.split]}, split=src.split)
        return list(ds["text"])
    except Exception as e:  # the datasets library raises many kinds of network errors
        raise DataUnavailable(
            f"{src} is not reachable on the Hugging Face hub ({e.__class__.__name__}: {str(e)[:200]}) and no "
            f"data directory was given. On a machine with the hub, `regprune data DIR` writes a data directory "
            f"once; then pass --data-dir DIR (or set {DATA_DIR_ENV}). Or use a local .txt/.jsonl file, or "
            "builtin:calibration / builtin:eval."
        ) from e


# C4 in a data directory: the first documents of one shard per split (the file names say how many), so that
# the quick protocol's C4 numbers are the same on every machine.
_C4_HEAD = {"train": 1041, "validation": 1025}


def write_data_dir(root: str | os.PathLike, names=("wikitext2", "c4", "ptb")) -> list[Path]:
    """Fetch the named corpora from the Hugging Face hub once and write them in the data-directory layout
    (`regprune data DIR`), so that later runs work offline with `--data-dir DIR`. Each file is written
    atomically; existing files are kept. Returns the files written."""
    from ..io import atomic_write_text, check_writable

    root = Path(root).expanduser()
    check_writable(root / "x", "data directory")
    written = []
    for (name, split), rel in _OFFLINE_FILES.items():
        path = root / rel
        if name not in names or path.exists():
            continue
        rows = _hub_rows(TextSource(name, split))
        if name == "c4":
            text = "".join(json.dumps({"text": r}) + "\n" for r in rows[: _C4_HEAD[split]])
        else:  # one row per line, as in the raw files (WikiText rows keep their newline; blank rows are '')
            text = "".join(r if r.endswith("\n") else r + "\n" for r in rows)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
        log.info("wrote %s (%d rows)", path, len(rows) if name != "c4" else _C4_HEAD[split])
        written.append(path)
    return written


def load_text(src: TextSource | str, data_dir: str | os.PathLike | None = None) -> str:
    if isinstance(src, str):
        src = parse_source(src)
    if src.name == "file":
        path = Path(src.path)
        return _join("c4" if path.suffix == ".jsonl" else "wikitext2", _read_rows(path))
    if src.name == "builtin":
        return builtin_text(src.split)
    root = resolve_data_dir(data_dir)
    if root is not None:
        path = root / _OFFLINE_FILES[(src.name, src.split)]  # every named split has its file in the layout
        if not path.is_file():
            raise DataUnavailable(f"{src}: expected {path} in the data directory (`regprune data {root}` writes "
                                  "it from the Hugging Face hub)")
        rows = _read_rows(path)
        if src.name == "ptb":  # one sentence per line
            rows = [r.strip() for r in rows if r.strip()]
        return _join(src.name, rows)
    return _join(src.name, _hub_rows(src))


def source_file(src: TextSource, data_dir: str | os.PathLike | None = None) -> Path | None:
    """The file a source is read from (a file source, or a named split in the data directory); None for the
    hub and the built-in text."""
    if src.name == "file":
        return Path(src.path)
    rel = _OFFLINE_FILES.get((src.name, src.split))
    try:
        root = resolve_data_dir(data_dir)
    except DataUnavailable:
        return None
    return root / rel if root is not None and rel is not None else None


def _same_file(a: Path, b: Path) -> bool:
    if not (a.is_file() and b.is_file()):
        return False
    if os.path.samefile(a, b):
        return True
    if a.stat().st_size != b.stat().st_size:
        return False
    import hashlib

    return hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()


def check_calibration_source(calib: TextSource, eval_sources: list[TextSource] = (), data_dir=None) -> None:
    """Refuse calibration text that is (or is a copy of) an evaluation split or one of `eval_sources`,
    compared by split and by resolved file (same file, or the same bytes)."""
    why = None
    if calib.is_eval_split or any(calib == e for e in eval_sources):
        why = "it is an evaluation split"
    else:
        c_file = source_file(calib, data_dir)
        if c_file is not None:
            if c_file.name in {Path(rel).name for key, rel in _OFFLINE_FILES.items() if key in EVAL_SPLITS}:
                why = f"{c_file.name} is the file of an evaluation split"
            others = [(e, source_file(e, data_dir)) for e in eval_sources] + [
                (TextSource(n, s), source_file(TextSource(n, s), data_dir)) for n, s in sorted(EVAL_SPLITS)]
            for e, f in others:
                if why is None and f is not None and _same_file(c_file, f):
                    why = f"it is the text of {e} ({f})"
    if why:
        raise RegpruneError(
            f"refusing to calibrate on {calib}: {why}, so the perplexity measured on it would be contaminated. "
            "Calibrate on wikitext2:validation, c4:train, builtin:calibration or your own file (not a copy of "
            "an evaluation text)."
        )
