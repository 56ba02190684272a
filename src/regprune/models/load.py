"""Load a causal LM and its tokenizer from a local HF directory, a GGUF file, a hub id or a built-in name."""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from ..errors import ModelUnavailable
from .builtin import BUILTIN_MODELS, builtin_model_dir

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: object
    source: dict = field(default_factory=dict)  # what was loaded, for regprune.json


def _dtype(name: str) -> torch.dtype:
    try:
        return _DTYPES[name]
    except KeyError:
        raise ModelUnavailable(f"unknown dtype {name!r}; use one of {sorted(_DTYPES)}") from None


def _load_gguf(path: Path, dtype: torch.dtype = torch.float32):
    """Dequantize a GGUF file into a plain (saveable) transformers model."""
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    # The weights are already dequantized; the GGUF "quantizer" left on the model only blocks saving.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._name_or_path = str(path)
    return model, tokenizer


def load_model(spec: str, *, dtype: str = "float32", device: str = "cpu") -> LoadedModel:
    """`spec`: a local HF directory, a `.gguf` file, a built-in name (see BUILTIN_MODELS) or a hub id."""
    torch_dtype = _dtype(dtype)
    path = Path(spec).expanduser()
    log.info("loading model %s (%s, %s)", spec, dtype, device)
    if spec in BUILTIN_MODELS:
        path = builtin_model_dir(spec)
        source = {"kind": "builtin", "name": spec, "path": str(path),
                  "description": BUILTIN_MODELS[spec].description}
    elif path.suffix == ".gguf":
        if not path.is_file():
            raise ModelUnavailable(f"GGUF file not found: {path}")
        model, tokenizer = _load_gguf(path, torch_dtype)
        return LoadedModel(model.to(device).eval(), tokenizer, {"kind": "gguf", "path": str(path.resolve())})
    elif path.exists():
        if not (path / "config.json").is_file():
            raise ModelUnavailable(f"{path} is not a Hugging Face model directory (no config.json)")
        source = {"kind": "local", "path": str(path.resolve())}
    elif _HUB_ID.match(spec) and not spec.startswith((".", "/", "~")):
        source = {"kind": "hub", "id": spec}
    else:
        raise ModelUnavailable(
            f"model not found: {spec!r} is neither an existing path, a .gguf file, a built-in name "
            f"({', '.join(BUILTIN_MODELS)}) nor a Hugging Face hub id (org/name)."
        )
    target = str(path) if source["kind"] != "hub" else spec
    try:
        tokenizer = AutoTokenizer.from_pretrained(target)
        model = AutoModelForCausalLM.from_pretrained(target, dtype=torch_dtype)
    except OSError as e:
        if source["kind"] == "hub":
            raise ModelUnavailable(
                f"could not load {spec!r} from the Hugging Face hub ({e.__class__.__name__}: {str(e)[:300]}). "
                "If this machine is offline, pass a local model directory, a .gguf file, or the built-in "
                f"name {next(iter(BUILTIN_MODELS))!r}."
            ) from e
        raise ModelUnavailable(f"could not load the model in {path}: {e}") from e
    return LoadedModel(model.to(device).eval(), tokenizer, source)
