"""regprune: structured pruning of causal LMs by regularize -> prune -> recover."""
__version__ = "0.1.0"

from .api import PruneResult, build_calibration, evaluate, prune  # noqa: E402
from .models import load_model, save_model  # noqa: E402
from .train.lora import RecoveryConfig  # noqa: E402
from .train.loop import TrainConfig  # noqa: E402

__all__ = ["PruneResult", "build_calibration", "evaluate", "prune", "load_model", "save_model",
           "RecoveryConfig", "TrainConfig", "__version__"]
