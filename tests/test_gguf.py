"""A GGUF file in (dequantized, quantizer cleared so it saves) -> a plain HF checkpoint out."""
import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import regprune

gguf = pytest.importorskip("gguf")


def write_tiny_llama_gguf(path, tokenizer, hidden=32, layers=1, heads=4, kv_heads=2, ffn=48):
    vocab = len(tokenizer)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(hidden // heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    # Tokenizer: the byte-level BPE of the tests, in GGUF's gpt2 form.
    tj = json.loads(tokenizer.backend_tokenizer.to_str())
    tokens = [t for t, _ in sorted(tj["model"]["vocab"].items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t.startswith("<") and t.endswith(">") else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    rng = np.random.default_rng(0)

    def t(name, *shape, scale=0.1):
        w.add_tensor(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    t("token_embd.weight", vocab, hidden, scale=0.5)
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        t(f"blk.{i}.attn_q.weight", hidden, hidden)
        t(f"blk.{i}.attn_k.weight", hidden // heads * kv_heads, hidden)
        t(f"blk.{i}.attn_v.weight", hidden // heads * kv_heads, hidden)
        t(f"blk.{i}.attn_output.weight", hidden, hidden)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
        t(f"blk.{i}.ffn_gate.weight", ffn, hidden)
        t(f"blk.{i}.ffn_up.weight", ffn, hidden)
        t(f"blk.{i}.ffn_down.weight", hidden, ffn)
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_loads_prunes_and_saves(tmp_path, tokenizer, corpus_dir):
    path = tmp_path / "tiny.gguf"
    write_tiny_llama_gguf(path, tokenizer)
    loaded = regprune.load_model(str(path))
    assert loaded.source["kind"] == "gguf" and loaded.model.config.hidden_size == 32
    assert getattr(loaded.model, "hf_quantizer", None) is None
    assert "quantization_config" not in loaded.model.config.to_dict()
    regprune.save_model(loaded.model, loaded.tokenizer, tmp_path / "hf")  # a GGUF quantizer would refuse this
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    x = torch.randint(3, 300, (1, 12))
    with torch.no_grad():
        assert torch.equal(reloaded(x).logits, loaded.model(x).logits)
    res = regprune.prune(loaded, method="slice", ratio=0.25, num_samples=4, seq_len=32, data_dir=corpus_dir)
    assert res.model.config.hidden_size == 24
    with pytest.raises(regprune.errors.ModelUnavailable, match="GGUF file not found"):
        regprune.load_model(str(tmp_path / "missing.gguf"))
