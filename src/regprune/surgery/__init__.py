from .hidden import kept_channels, mask_hidden_channels, slice_hidden_channels

__all__ = ["kept_channels", "mask_hidden_channels", "slice_hidden_channels"]
