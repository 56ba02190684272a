from .config import DressConfig, SliceConfig
from .method import DressMethod, SliceMethod
from .regularizer import ChannelRegularizer

__all__ = ["DressConfig", "SliceConfig", "DressMethod", "SliceMethod", "ChannelRegularizer"]
