from .config import SliceGptConfig
from .method import SliceGptMethod, residual_covariances, rotate_and_slice

__all__ = ["SliceGptConfig", "SliceGptMethod", "residual_covariances", "rotate_and_slice"]
