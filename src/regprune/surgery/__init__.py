from .hidden import kept_channels, mask_hidden_channels, slice_hidden_channels
from .layers import BlockTrace, get_layers, head_nll, layers_skipped, remove_layers

__all__ = ["kept_channels", "mask_hidden_channels", "slice_hidden_channels", "BlockTrace", "get_layers",
           "head_nll", "layers_skipped", "remove_layers"]
