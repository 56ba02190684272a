from .config import CompressoConfig
from .masks import CompressoMasks, KeptStructure, prob_nonzero, sample_hard_concrete
from .method import CompressoMethod, finalize, prune_to, train_masks, training_sequences

__all__ = ["CompressoConfig", "CompressoMasks", "KeptStructure", "prob_nonzero", "sample_hard_concrete",
           "CompressoMethod", "finalize", "prune_to", "train_masks", "training_sequences"]
