from .registry import (ArchSpec, ChannelSlice, ConfigFields, config_fields, get_arch, has_sliding_layers, head_dim,
                       hidden_channel_slices, register_arch, supported_model_types)

__all__ = ["ArchSpec", "ChannelSlice", "ConfigFields", "config_fields", "get_arch", "has_sliding_layers", "head_dim",
           "hidden_channel_slices", "register_arch", "supported_model_types"]
