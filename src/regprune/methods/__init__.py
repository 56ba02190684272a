"""Pruning methods. Each registers itself by name; `get_method(name)` finds it."""
from .base import CalibrationData, MethodResult, PruningMethod, get_method, list_methods, register_method
from . import selection  # noqa: F401
from .dress import DressConfig, DressMethod, SliceConfig, SliceMethod  # noqa: F401  (registers)

__all__ = ["CalibrationData", "MethodResult", "PruningMethod", "get_method", "list_methods", "register_method",
           "DressConfig", "DressMethod", "SliceConfig", "SliceMethod"]
