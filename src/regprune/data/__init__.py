from .sources import EVAL_SPLITS, TextSource, load_text, parse_eval_source, parse_source, resolve_data_dir
from .windows import TokenWindows, eval_windows, sample_windows, split_windows

__all__ = ["EVAL_SPLITS", "TextSource", "load_text", "parse_eval_source", "parse_source", "resolve_data_dir", "TokenWindows",
           "eval_windows", "sample_windows", "split_windows"]
