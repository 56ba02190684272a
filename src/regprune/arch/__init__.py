from .registry import ArchSpec, ChannelSlice, get_arch, hidden_channel_slices, register_arch, supported_model_types

__all__ = ["ArchSpec", "ChannelSlice", "get_arch", "hidden_channel_slices", "register_arch", "supported_model_types"]
