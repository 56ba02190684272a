from .perplexity import evaluate_perplexity, perplexity_on_windows

__all__ = ["evaluate_perplexity", "perplexity_on_windows"]
