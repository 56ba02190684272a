from .config import UnstructuredConfig
from .method import MagnitudeMethod, SparseGptMethod, WandaMethod, block_linears

__all__ = ["UnstructuredConfig", "MagnitudeMethod", "SparseGptMethod", "WandaMethod", "block_linears"]
