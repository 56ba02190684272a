from .config import ShortGptConfig, SlebConfig
from .method import ShortGptMethod, SlebMethod, block_influence, sleb_scores

__all__ = ["ShortGptConfig", "SlebConfig", "ShortGptMethod", "SlebMethod", "block_influence", "sleb_scores"]
