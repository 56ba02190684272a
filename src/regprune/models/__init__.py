from .builtin import BUILTIN_MODELS, builtin_model_dir
from .load import LoadedModel, load_model
from .save import check_output_dir, save_model

__all__ = ["BUILTIN_MODELS", "builtin_model_dir", "LoadedModel", "load_model", "check_output_dir", "save_model"]
