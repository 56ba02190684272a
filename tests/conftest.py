"""Tiny random models with a real (tiny, trained here) tokenizer: fast, offline, deterministic."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast  # noqa: E402

ARCH_KWARGS = {
    "llama": dict(tie_word_embeddings=True),
    "mistral": dict(),
    "qwen2": dict(),
    "qwen3": dict(head_dim=16),
    "phi3": dict(pad_token_id=0),
}


def tiny_config(model_type: str = "llama", vocab_size: int = 320, **kw):
    base = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                bos_token_id=1, eos_token_id=2)
    base.update(ARCH_KWARGS.get(model_type, {}))
    base.update(kw)
    return AutoConfig.for_model(model_type, **base)


def tiny_model(model_type: str = "llama", seed: int = 0, **kw):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, **kw)).eval()
    # Random init leaves activations tiny; larger weights make the tests' differences meaningful.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.08 if "embed" not in n else 0.5)
            elif "norm" in n:
                p.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    """A data directory laid out like shared/data, made of Python's own documentation text."""
    from pydoc_data.topics import topics

    keys = sorted(topics)
    root = tmp_path_factory.mktemp("data")
    (root / "wikitext-2-raw").mkdir()
    (root / "c4").mkdir()
    parts = [keys[i::4] for i in range(4)]
    (root / "wikitext-2-raw" / "wiki.valid.raw").write_text("\n".join(topics[k] for k in parts[0]))
    (root / "wikitext-2-raw" / "wiki.test.raw").write_text("\n".join(topics[k] for k in parts[1]))
    import json

    for name, ks in (("c4-train.00000-of-01024.head1041.jsonl", parts[2]),
                     ("c4-validation.00000-of-00008.head1025.jsonl", parts[3])):
        (root / "c4" / name).write_text("".join(json.dumps({"text": topics[k]}) + "\n" for k in ks))
    return root


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    from pydoc_data.topics import topics
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([topics[k] for k in sorted(topics)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    d = tmp_path_factory.mktemp("tiny-llama")
    model = tiny_model("llama", vocab_size=len(tokenizer))
    model.save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d
