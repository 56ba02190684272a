from .builtin import BUILTIN_MODELS, builtin_model_dir
from .load import LoadedModel, load_model
from .save import check_output_dir, save_model
from .rotated import register_all as _register_rotated

_register_rotated()  # SliceGPT's shortcut model types load with AutoModelForCausalLM after `import regprune`
from . import nonuniform  # noqa: F401,E402  (registers the non-uniform model types with the Auto classes)

__all__ = ["BUILTIN_MODELS", "builtin_model_dir", "LoadedModel", "load_model", "check_output_dir", "save_model"]
