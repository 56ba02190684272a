"""Issue 11: every input is checked before work, nothing of the user's is lost, no silent wrong result.

Each case a user found is a regression test here (sweep, compare and report cases: test_reliability_sweep.py).
"Before work" is checked by making the first piece of work (loading the model's weights) fail the test:
a refused command must never get there.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

import regprune
from regprune.cli import main
from regprune.errors import RegpruneError
from regprune.io import PARTIAL_MARKER, OutputLock


class WorkStarted(Exception):
    pass


@pytest.fixture
def no_work(monkeypatch):
    """Loading the model's weights (the first piece of work) raises WorkStarted."""
    import regprune.models.load as load

    def refuse(*a, **k):
        raise WorkStarted()

    monkeypatch.setattr(load, "load_model", refuse)


def args_for(model_dir, out, corpus_dir, *extra):
    trains = not any(m in extra for m in ("sleb", "shortgpt"))  # block scoring has no training steps
    return ["prune", str(model_dir), "-o", str(out), *(["--steps", "2"] if trains else []), "--num-samples", "12",
            "--seq-len", "32", "--batch-size", "2", "--data-dir", str(corpus_dir), *extra]


def leftovers(out: Path) -> list[Path]:
    return [p for p in out.parent.glob(f".{out.name}*")] + ([out] if out.exists() else [])


def refused(capsys, argv, pattern: str) -> str:
    """`argv` fails with exit 2 and a one-line message matching `pattern`, before any work, without a traceback."""
    capsys.readouterr()  # what fixtures printed
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and err.startswith("regprune: error: "), err
    assert re.search(pattern, err), err
    return err


# ------------------------------------------------------------------ wrong results with exit 0


@pytest.mark.parametrize("extra,pattern", [
    (["--warmup-steps", "-1"], r"warmup_steps must be >= 0"),
    (["--grad-accum", "0"], r"grad_accum must be >= 1"),
    (["--grad-accum", "0", "--epochs", "1"], r"grad_accum must be >= 1"),
    (["--steps", "0"], r"steps must be >= 1"),
    (["--lr", "0"], r"lr must be > 0"),
    (["--lr", "nan"], r"lr must be a finite number"),
    (["--batch-size", "0"], r"batch_size must be >= 1"),
    (["--num-samples", "0"], r"--num-samples must be >= 1"),
    (["--seq-len", "0"], r"--seq-len must be >= 2"),
    (["--seq-len", "-5"], r"--seq-len must be >= 2"),
    (["--lam", "-1"], r"lam must be >= 0"),
    (["-O", 'ratio="0.5"'], r"option ratio must be a number, got the string '0.5'"),
    (["-O", "lam={bad"], r"-O lam=\{bad: not a valid value"),
    (["-O", "lam=abc"], r"option lam must be a number, got the string 'abc'"),
    (["-O", "selection=best"], r"selection must be activation, weight, last or random"),
    (["--recover", "--lora-r", "0"], r"lora_r must be >= 1"),
    (["--recover", "--recovery-lr", "-1"], r"recovery: lr must be > 0"),
    (["--recover", "--num-samples", "4"], r"--recover needs at least 2 recovery windows"),
    (["--seq-len-eval", "0", "--eval-ppl", "wikitext2"], r"--seq-len-eval must be >= 2"),
    (["--max-windows", "-1", "--eval-ppl", "wikitext2"], r"--max-windows must be >= 0"),
    (["--method", "sleb", "--layers", "2"], r"cannot remove 2 of 2 blocks"),
    (["--method", "shortgpt", "--ratio", "0.1"], r"rounds to 0 blocks"),
    (["--method", "trsp", "--layers", "2"], r"cannot remove 2 of 2 blocks"),
    (["--dtype", "float8"], r"unknown dtype"),
    (["--device", "tpu"], r"--device tpu"),
])
def test_bad_option_refused_before_work(extra, pattern, tiny_model_dir, corpus_dir, tmp_path, capsys, no_work):
    out = tmp_path / "out"
    refused(capsys, args_for(tiny_model_dir, out, corpus_dir, *extra), pattern)
    assert leftovers(out) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda(tiny_model_dir, corpus_dir, tmp_path, capsys, no_work):
    refused(capsys, args_for(tiny_model_dir, tmp_path / "o", corpus_dir, "--device", "cuda"),
            r"CUDA is not available on this machine")
    refused(capsys, ["eval", str(tiny_model_dir), "--device", "cuda:0", "--data-dir", str(corpus_dir)],
            r"CUDA is not available")


def test_contamination_guard_compares_files(tiny_model_dir, corpus_dir, tmp_path, capsys, no_work):
    test_file = corpus_dir / "wikitext-2-raw" / "wiki.test.raw"
    # the test split given as a path
    refused(capsys, args_for(tiny_model_dir, tmp_path / "o", corpus_dir, "--calib", str(test_file),
                             "--eval-ppl", "wikitext2"), r"refusing to calibrate")
    # a copy of it under another name, and the C4 validation file
    copy = tmp_path / "my-calibration.txt"
    shutil.copy(test_file, copy)
    refused(capsys, args_for(tiny_model_dir, tmp_path / "o", corpus_dir, "--calib", str(copy)),
            r"refusing to calibrate on .*my-calibration.txt: it is the text of wikitext2:test")
    c4_val = next((corpus_dir / "c4").glob("c4-validation*"))
    refused(capsys, args_for(tiny_model_dir, tmp_path / "o", corpus_dir, "--calib", str(c4_val)),
            r"refusing to calibrate")
    # an evaluation file given twice, once as the calibration
    own = tmp_path / "held-out.txt"
    own.write_text(test_file.read_text()[:20000] + " extra")
    refused(capsys, args_for(tiny_model_dir, tmp_path / "o", corpus_dir, "--calib", str(own),
                             "--eval-ppl", str(own)), r"refusing to calibrate")
    # the allowed ones still work
    from regprune.data.sources import check_calibration_source, parse_source

    check_calibration_source(parse_source("wikitext2:validation"), [parse_source("wikitext2:test")], corpus_dir)


# ------------------------------------------------------------------ finished-looking output after a failure


def test_short_eval_text_refused_before_work(tiny_model_dir, corpus_dir, tmp_path, capsys, no_work):
    short = tmp_path / "short.txt"
    short.write_text("only a few words")
    err = refused(capsys, args_for(tiny_model_dir, tmp_path / "o", corpus_dir, "--eval-ppl", str(short),
                                   "--seq-len-eval", "32"), r"short.txt has \d+ tokens, fewer than one window of 32")
    assert "--seq-len-eval" in err
    assert leftovers(tmp_path / "o") == []


def test_short_calibration_text_refused_before_work(tiny_model_dir, corpus_dir, tmp_path, capsys, no_work):
    short = tmp_path / "tiny-calib.txt"
    short.write_text("a handful of words only")
    refused(capsys, args_for(tiny_model_dir, tmp_path / "o", corpus_dir, "--calib", str(short)),
            r"tiny-calib.txt has \d+ tokens, too few for windows of 32")


def test_evaluation_failing_after_prune_keeps_the_model_and_says_so(tiny_model_dir, corpus_dir, tmp_path, capsys,
                                                                     monkeypatch):
    import regprune.cli as cli

    def broken(*a, **k):
        raise RegpruneError("evaluation exploded")

    monkeypatch.setattr(cli, "_ppl", broken)
    out = tmp_path / "o"
    rc = main(args_for(tiny_model_dir, out, corpus_dir, "--eval-ppl", "wikitext2", "--seq-len-eval", "32",
                       "--max-windows", "2"))
    err = capsys.readouterr().err
    assert rc == 2 and f"the pruned model was saved to {out}" in err and "evaluation exploded" in err
    rec = json.loads((out / "regprune.json").read_text())
    assert rec["metrics"] == {} and "evaluation exploded" in rec["metrics_error"]


def test_eval_metrics_are_in_the_record_when_it_appears(tiny_model_dir, corpus_dir, tmp_path):
    out = tmp_path / "o"
    assert main(args_for(tiny_model_dir, out, corpus_dir, "--eval-ppl", "wikitext2", "--seq-len-eval", "32",
                         "--max-windows", "2")) == 0
    rec = json.loads((out / "regprune.json").read_text())
    assert rec["metrics"]["pruned"]["wikitext2:test"]["protocol"]["windows"] == 2 and "metrics_error" not in rec


def test_partial_from_a_killed_save_is_cleaned_by_the_next_run(tiny_model_dir, corpus_dir, tmp_path):
    out = tmp_path / "o"
    script = textwrap.dedent(f"""
        import time
        from transformers import AutoModelForCausalLM
        from regprune.models.save import save_model
        m = AutoModelForCausalLM.from_pretrained({str(tiny_model_dir)!r})
        real = m.save_pretrained
        def slow(d, **kw):
            real(d, **kw)
            print("WRITING", flush=True)
            time.sleep(120)
        m.save_pretrained = slow
        save_model(m, None, {str(out)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "WRITING"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    partials = list(tmp_path.glob(".o.partial-*"))
    assert len(partials) == 1 and (partials[0] / PARTIAL_MARKER).is_file() and not out.exists()
    # a leftover without regprune's marker is somebody else's: kept
    foreign = tmp_path / ".o.partial-mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert main(args_for(tiny_model_dir, out, corpus_dir)) == 0
    assert not partials[0].exists() and (foreign / "notes.txt").read_text() == "mine"
    assert (out / "regprune.json").is_file()


def test_output_permissions_follow_the_umask(tiny_model_dir, corpus_dir, tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "o"
        assert main(args_for(tiny_model_dir, out, corpus_dir)) == 0
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o755
    assert (out / "regprune.json").stat().st_mode & 0o777 == 0o644


# ------------------------------------------------------------------ found only after the work


def test_output_under_a_file_is_refused_before_work(tiny_model_dir, corpus_dir, tmp_path, capsys, no_work):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    refused(capsys, args_for(tiny_model_dir, blocker / "out", corpus_dir), r"a-file is a file, not a directory")
    refused(capsys, args_for(tiny_model_dir, blocker, corpus_dir), r"already exists")


def test_unwritable_output_is_refused_before_work(tiny_model_dir, corpus_dir, tmp_path, capsys, no_work,
                                                  monkeypatch):
    ro = tmp_path / "read-only"
    ro.mkdir()
    ro.chmod(0o555)
    if os.access(ro, os.W_OK):  # root ignores the mode: make the probe see what a user would see
        import regprune.io as rio

        real = rio.tempfile.mkstemp

        def deny(*a, dir=None, **k):
            if Path(dir) == ro:
                raise PermissionError(13, "Permission denied")
            return real(*a, dir=dir, **k)

        monkeypatch.setattr(rio.tempfile, "mkstemp", deny)
    refused(capsys, args_for(tiny_model_dir, ro / "out", corpus_dir), r"cannot write in .*read-only.*Permission denied")
    ro.chmod(0o755)


def test_second_writer_to_one_output_is_refused_at_once(tiny_model_dir, corpus_dir, tmp_path, capsys, no_work):
    out = tmp_path / "o"
    with OutputLock(out):
        refused(capsys, args_for(tiny_model_dir, out, corpus_dir), r"another regprune run is writing .* \(pid \d+\)")
    # released: the next run gets past the lock (to the work, which the fixture stops)
    with pytest.raises(WorkStarted):
        main(args_for(tiny_model_dir, out, corpus_dir))
    assert leftovers(out) == []  # the lock file is gone too


def test_output_taken_by_another_program_during_the_save_keeps_the_result(tmp_path):
    from conftest import tiny_model

    model = tiny_model()
    out = tmp_path / "m"
    real = model.save_pretrained

    def save_then_intrude(d, **kw):
        real(d, **kw)
        out.mkdir()
        (out / "theirs.txt").write_text("theirs")

    model.save_pretrained = save_then_intrude
    with pytest.raises(RegpruneError, match=r"appeared while this run was writing.*kept in"):
        regprune.save_model(model, None, out)
    assert (out / "theirs.txt").read_text() == "theirs"
    kept = list(tmp_path.glob(".m.partial-*"))
    assert len(kept) == 1 and (kept[0] / "config.json").is_file() and not (kept[0] / PARTIAL_MARKER).exists()


@pytest.fixture
def opt_dir(tmp_path, tokenizer):
    from transformers import AutoModelForCausalLM, OPTConfig

    d = tmp_path / "opt"
    AutoModelForCausalLM.from_config(OPTConfig(num_hidden_layers=2, hidden_size=32, ffn_dim=64, num_attention_heads=2,
                                               word_embed_proj_dim=32, vocab_size=len(tokenizer))).save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


@pytest.mark.parametrize("method", ["sleb", "dress", "trsp", "compresso"])
def test_unsupported_architecture_refused_before_work(method, opt_dir, corpus_dir, tmp_path, capsys, no_work):
    err = refused(capsys, args_for(opt_dir, tmp_path / "o", corpus_dir, "--method", method),
                  rf"method '{method}': model_type 'opt' is not supported")
    assert "hidden-channel" not in err


def test_compresso_refuses_fused_projections_before_work(corpus_dir, tmp_path, tokenizer, capsys, no_work):
    from conftest import tiny_model

    d = tmp_path / "phi3"
    tiny_model("phi3", vocab_size=len(tokenizer)).save_pretrained(d)
    tokenizer.save_pretrained(d)
    refused(capsys, args_for(d, tmp_path / "o", corpus_dir, "--method", "compresso"), r"fused")


# ------------------------------------------------------------------ files and eval


@pytest.fixture
def truncated_dir(tiny_model_dir, tmp_path):
    d = tmp_path / "truncated"
    shutil.copytree(tiny_model_dir, d)
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return d


def test_truncated_safetensors(truncated_dir, corpus_dir, tmp_path, capsys, no_work):
    refused(capsys, args_for(truncated_dir, tmp_path / "o", corpus_dir), r"model.safetensors is truncated or corrupt")
    refused(capsys, ["eval", str(truncated_dir), "--data-dir", str(corpus_dir)], r"truncated or corrupt")
    with pytest.raises(RegpruneError, match="truncated"):
        import regprune.models.load as load

        load.check_model_files(truncated_dir)


@pytest.mark.parametrize("extra,pattern", [
    (["--seq-len-eval", "0"], r"--seq-len-eval must be >= 2"),
    (["--max-windows", "-1"], r"--max-windows must be >= 0"),
    (["--speed", "--prompt-len", "0"], r"--prompt-len must be >= 1"),
    (["--speed", "--repeats", "0"], r"--repeats must be >= 1"),
    (["--limit", "0"], r"--limit must be > 0"),
    (["--limit", "2.5"], r"--limit 2.5: give a fraction below 1"),
    (["--max-tokens", "0"], r"--max-tokens must be >= 1"),
])
def test_eval_bad_options_refused_before_work(extra, pattern, tiny_model_dir, corpus_dir, capsys, no_work):
    refused(capsys, ["eval", str(tiny_model_dir), "--data-dir", str(corpus_dir), *extra], pattern)


def test_eval_json_into_unwritable_place_refused_before_work(tiny_model_dir, corpus_dir, tmp_path, capsys, no_work):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    refused(capsys, ["eval", str(tiny_model_dir), "--data-dir", str(corpus_dir), "--json", str(blocker / "e.json")],
            r"a-file is a file, not a directory")
    refused(capsys, ["eval", str(tiny_model_dir), "--data-dir", str(corpus_dir), "--json", str(tmp_path)],
            r"is a directory; give a file name")


def test_eval_short_text_refused_before_work(tiny_model_dir, corpus_dir, tmp_path, capsys, no_work):
    short = tmp_path / "short.txt"
    short.write_text("few words")
    refused(capsys, ["eval", str(tiny_model_dir), "--ppl", str(short), "--seq-len-eval", "32"],
            r"short.txt has \d+ tokens")


@pytest.mark.parametrize("name,content,pattern", [
    ("latin1.txt", "caf\xe9 ".encode("latin-1") * 400, r"latin1.txt: not UTF-8 text"),
    ("broken.jsonl", b'{"text": "fine"}\n{"text": oops}\n', r"broken.jsonl:2: not valid JSON"),
    ("notext.jsonl", b'{"body": "no text field"}\n', r"notext.jsonl:1: JSONL rows need a string 'text' field"),
])
def test_malformed_calibration_files_are_named(name, content, pattern, tiny_model_dir, corpus_dir, tmp_path, capsys,
                                               no_work):
    f = tmp_path / name
    f.write_bytes(content)
    refused(capsys, args_for(tiny_model_dir, tmp_path / "o", corpus_dir, "--calib", str(f)), pattern)


def test_api_refuses_before_work(tiny_model_dir, corpus_dir):
    loaded = regprune.load_model(str(tiny_model_dir))
    with pytest.raises(RegpruneError, match="cannot remove 2 of 2 blocks"):
        regprune.prune(loaded, method="sleb", layers=2, num_samples=8, seq_len=32, data_dir=corpus_dir)
    with pytest.raises(RegpruneError, match="warmup_steps must be >= 0"):
        regprune.prune(loaded, method="dress", warmup_steps=-1, num_samples=8, seq_len=32, data_dir=corpus_dir)
    with pytest.raises(RegpruneError, match="--num-samples must be >= 1"):
        regprune.prune(loaded, method="slice", num_samples=0, seq_len=32, data_dir=corpus_dir)


# ------------------------------------------------------------------ properties over the numeric options

NUMERIC = {
    "--ratio": st.one_of(st.floats(-0.5, 1.5), st.sampled_from([0.0, 1.0, 0.5])),
    "--lam": st.floats(-2, 8),
    "--lr": st.one_of(st.floats(-1e-3, 1e-2), st.just(0.0)),
    "--steps": st.integers(-2, 3),
    "--batch-size": st.integers(-1, 4),
    "--grad-accum": st.integers(-1, 3),
    "--warmup-steps": st.integers(-2, 3),
    "--num-samples": st.integers(-1, 16),
    "--seq-len": st.integers(-1, 40),
    "--seq-len-eval": st.integers(-1, 40),
    "--max-windows": st.integers(-2, 3),
}


def _argv(tiny_model_dir, out, corpus_dir, values: dict) -> list[str]:
    argv = ["prune", str(tiny_model_dir), "-o", str(out), "--data-dir", str(corpus_dir), "--eval-ppl", "c4"]
    for flag, v in values.items():
        argv.append(f"{flag}={v!r}")  # FLAG=VALUE: argparse would take a value such as -1e-05 for a flag
    return argv


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.fixed_dictionaries({}, optional=NUMERIC))
def test_property_refused_before_work_or_work_starts(values, tiny_model_dir, corpus_dir, tmp_path_factory,
                                                      monkeypatch, capsys):
    """Every combination is refused with a message before work, or gets to the work."""
    import regprune.models.load as load

    def refuse(*a, **k):
        raise WorkStarted()

    monkeypatch.setattr(load, "load_model", refuse)
    out = tmp_path_factory.mktemp("prop") / "out"
    capsys.readouterr()
    try:
        rc = main(_argv(tiny_model_dir, out, corpus_dir, values))
    except WorkStarted:
        event("work started")
        return
    event("refused")
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("regprune: error: ") and "Traceback" not in err, err


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.fixed_dictionaries({"--steps": st.integers(-1, 2)}, optional={
    **{k: NUMERIC[k] for k in ("--ratio", "--lr", "--batch-size", "--grad-accum", "--warmup-steps",
                               "--num-samples", "--seq-len", "--seq-len-eval")},
    "--max-windows": st.integers(-1, 3).map(lambda x: x or 1)}))
@example(values={"--steps": 1, "--ratio": 0.3, "--num-samples": 6, "--seq-len": 16, "--seq-len-eval": 16,
                 "--max-windows": 2})
def test_property_runs_or_refused_before_work(values, tiny_model_dir, corpus_dir, tmp_path_factory, capsys):
    """The same combinations for real: exit 0 with a finished output, or exit 2 with a message, no output,
    and the same refusal before work (a run that passed the checks never fails later)."""
    values = {**values, "--num-samples": min(values.get("--num-samples", 8), 8),
              "--seq-len": min(values.get("--seq-len", 32), 32)}
    out = tmp_path_factory.mktemp("run") / "out"
    capsys.readouterr()
    rc = main(_argv(tiny_model_dir, out, corpus_dir, values))
    err = capsys.readouterr().err
    event(f"exit {rc}")
    if rc == 0:
        assert (out / "regprune.json").is_file() and "metrics_error" not in json.loads((out / "regprune.json").read_text())
        return
    assert rc == 2 and err.startswith("regprune: error: ") and leftovers(out) == [], err
    import regprune.models.load as load

    def refuse(*a, **k):
        raise WorkStarted()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(load, "load_model", refuse)
        assert main(_argv(tiny_model_dir, out, corpus_dir, values)) == 2  # WorkStarted would fail the test
    assert capsys.readouterr().err == err


def test_objective_flags_reach_the_recovery_of_methods_that_do_not_train(tiny_model_dir, corpus_dir, tmp_path,
                                                                        capsys, monkeypatch):
    import regprune.api as api

    seen = {}
    real = api.recover_with_lora

    def spy(model, windows, cfg, teacher=None):
        seen["objective"] = cfg.train.objective
        return real(model, windows, cfg, teacher)

    monkeypatch.setattr(api, "recover_with_lora", spy)
    out = tmp_path / "o"
    assert main(["prune", str(tiny_model_dir), "-o", str(out), "--method", "shortgpt", "--layers", "1",
                 "--num-samples", "12", "--seq-len", "32", "--data-dir", str(corpus_dir), "--recover",
                 "--recovery-steps", "1", "--objective", "lm"]) == 0
    assert seen == {"objective": "lm"}
    refused(capsys, args_for(tiny_model_dir, tmp_path / "o2", corpus_dir, "--method", "shortgpt", "--objective",
                             "lm"), r"--objective: method 'shortgpt' does not train .*--recover")
    refused(capsys, args_for(tiny_model_dir, tmp_path / "o3", corpus_dir, "--method", "slice", "--teacher",
                             "live"), r"only with finetune=true \(--finetune\)")


def test_device_auto_resolves_to_what_the_machine_has():
    import torch

    from regprune.models.load import check_device, resolve_device

    check_device("auto")
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
