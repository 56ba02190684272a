"""Load a causal LM and its tokenizer from a local HF directory, a GGUF file, a hub id or a built-in name."""
from __future__ import annotations

import json
import logging
import re
import struct
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


def resolve_device(device: str) -> str:
    """`auto`: cuda when this machine has it, else cpu; any other name as given."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def check_device(device: str) -> None:
    """Refuse a device this machine does not have, before anything is loaded (`auto` is always fine)."""
    device = resolve_device(device)
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ModelUnavailable(f"--device {device} is not a device torch knows; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelUnavailable(f"--device {device}: CUDA is not available on this machine (torch "
                                   f"{torch.__version__}, built with CUDA {torch.version.cuda}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ModelUnavailable(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA "
                                   "device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelUnavailable(f"--device {device}: MPS is not available on this machine; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ModelUnavailable(f"--device {device}: regprune runs on cpu, cuda or mps")


def check_model_files(path: Path) -> None:
    """Refuse a model directory whose safetensors files are truncated or corrupt, from their headers alone
    (no tensor is read): every file must hold its 8-byte header length, a JSON header, and as many bytes of
    tensor data as the header's offsets need; every shard an index names must exist."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError) as e:
            raise ModelUnavailable(f"{index} is not a valid safetensors index ({e}); re-download or re-save the "
                                   "model") from None
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise ModelUnavailable(f"{path}: the index names shards that are missing: {', '.join(missing)}; "
                                   "re-download or re-save the model")
    for f in sorted(path.glob("*.safetensors")):
        size = f.stat().st_size
        why = None
        with f.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                why = f"{size} bytes, shorter than a safetensors header"
            else:
                (n,) = struct.unpack("<Q", head)
                if 8 + n > size:
                    why = f"its header needs {8 + n} bytes, the file has {size}"
                else:
                    try:
                        header = json.loads(fh.read(n))
                        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"),
                                  default=0)
                    except (ValueError, KeyError, TypeError, IndexError) as e:
                        why = f"unreadable header ({e.__class__.__name__})"
                    else:
                        if 8 + n + end > size:
                            why = f"its tensors need {8 + n + end:,} bytes, the file has {size:,}"
        if why:
            raise ModelUnavailable(f"model file {f} is truncated or corrupt ({why}); re-download or re-save the "
                                   "model (regprune never reads a partial checkpoint)")


def inspect_model(spec: str):
    """(config, source) of a model without loading its weights: for checks before any work. Local
    directories also get their safetensors files checked (check_model_files)."""
    from transformers import AutoConfig

    path = Path(spec).expanduser()
    try:
        if spec in BUILTIN_MODELS:
            path = builtin_model_dir(spec)
            return AutoConfig.from_pretrained(path), {"kind": "builtin", "path": str(path)}
        if path.suffix == ".gguf":
            if not path.is_file():
                raise ModelUnavailable(f"GGUF file not found: {path}")
            return AutoConfig.from_pretrained(path.parent, gguf_file=path.name), {"kind": "gguf", "path": str(path)}
        if path.exists():
            if not (path / "config.json").is_file():
                raise ModelUnavailable(f"{path} is not a Hugging Face model directory (no config.json)")
            check_model_files(path)
            return AutoConfig.from_pretrained(path), {"kind": "local", "path": str(path.resolve())}
        if _HUB_ID.match(spec) and not spec.startswith((".", "/", "~")):
            return AutoConfig.from_pretrained(spec), {"kind": "hub", "id": spec}
    except ModelUnavailable:
        raise
    except Exception as e:  # transformers raises OSError, ValueError, KeyError... for unreadable configs
        raise ModelUnavailable(f"could not read the configuration of {spec!r} ({e.__class__.__name__}: "
                               f"{str(e)[:300]})") from None
    raise ModelUnavailable(
        f"model not found: {spec!r} is neither an existing path, a .gguf file, a built-in name "
        f"({', '.join(BUILTIN_MODELS)}) nor a Hugging Face hub id (org/name)."
    )


def load_tokenizer(spec: str):
    """The tokenizer of a model `load_model` accepts, without its weights (for checks before work)."""
    _, source = inspect_model(spec)
    try:
        if source["kind"] == "gguf":
            path = Path(source["path"])
            return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        return AutoTokenizer.from_pretrained(source.get("path") or source["id"])
    except Exception as e:  # noqa: BLE001 - tokenizers raise many kinds
        raise ModelUnavailable(f"could not load the tokenizer of {spec!r} ({e.__class__.__name__}: "
                               f"{str(e)[:300]})") from None


def load_model(spec: str, *, dtype: str = "float32", device: str = "cpu") -> LoadedModel:
    """`spec`: a local HF directory, a `.gguf` file, a built-in name (see BUILTIN_MODELS) or a hub id."""
    torch_dtype = _dtype(dtype)
    device = resolve_device(device)
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
        check_model_files(path)
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
    except Exception as e:  # e.g. a corrupt weight file: safetensors' own error type
        raise ModelUnavailable(f"could not load the model {spec!r} ({e.__class__.__name__}: {str(e)[:300]}); "
                               "check that its files are complete (re-download or re-save it)") from e
    return LoadedModel(model.to(device).eval(), tokenizer, source)
