"""Pruning methods. Each registers itself by name; `get_method(name)` finds it."""
from .base import CalibrationData, MethodResult, PruningMethod, get_method, list_methods, register_method
from . import selection  # noqa: F401
from .dress import DressConfig, DressMethod, SliceConfig, SliceMethod  # noqa: F401  (registers)
from . import blocks  # noqa: F401  (registers sleb, shortgpt)
from . import trsp  # noqa: F401  (registers trsp)
from . import slicegpt  # noqa: F401  (registers slicegpt)
from . import unstructured  # noqa: F401  (registers magnitude, wanda, sparsegpt)
from . import compresso  # noqa: F401  (registers compresso)

__all__ = ["CalibrationData", "MethodResult", "PruningMethod", "get_method", "list_methods", "register_method",
           "DressConfig", "DressMethod", "SliceConfig", "SliceMethod"]
