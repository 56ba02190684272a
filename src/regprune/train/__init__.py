from .loop import TrainConfig, lm_loss, train_loop
from .lora import RecoveryConfig, recover_with_lora

__all__ = ["TrainConfig", "lm_loss", "train_loop", "RecoveryConfig", "recover_with_lora"]
