"""TRSP: two-stage regularization-based layer pruning (arXiv 2505.18232)."""
from .config import TrspConfig
from .method import IdentityGap, LayerScales, TrspMethod, identity_gaps, learn_layer_weights, make_near_identity

__all__ = ["TrspConfig", "TrspMethod", "LayerScales", "IdentityGap", "identity_gaps", "learn_layer_weights",
           "make_near_identity"]
