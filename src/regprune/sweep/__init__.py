"""A resumable grid of pruning runs (methods × ratios × seeds) from one config file, with one table.

Config file (TOML, or JSON when the name ends in .json):

    model = "smollm2-135m"          # anything regprune.load_model accepts (loaded once per sweep)
    data_dir = "../shared/data"     # optional: offline data directory (else $REGPRUNE_DATA_DIR, else the hub)
    output = "runs/sweep-smol"      # one directory per cell below it
    methods = ["slice", "dress"]
    ratios = [0.25, 0.5]            # fractions of hidden channels removed, each in (0, 1)
    seeds = [0]                     # optional, default [0]; several seeds are averaged (mean ± std)
    save_models = false             # optional: also save each pruned checkpoint in <cell>/model
    dtype = "float32"               # optional, load_model's dtype (default float32)
    device = "cpu"                  # optional, load_model's device (default cpu)
    [calibration]                   # optional, kwargs of regprune.prune: calib, num_samples, seq_len, sampling
    calib = "c4:train@0.5,wikitext2:validation@0.5"   # default; a source or a weighted mixture
    num_samples = 128               # or "auto" (default): as many windows as the run's steps x batch need
    seq_len = 512
    sampling = "distinct"           # or "random" (independent random offsets, the earlier protocol)
    [options.dress]                 # optional, per-method options: regprune.prune(**options)
    norm = "l2"
    steps = 48
    [options.wanda-2of4]            # a label in 'methods' that is not a method name is a variant:
    method = "wanda"                #   the method it runs,
    structure = "2:4"               #   its options,
    ratios = [0.5]                  #   and optionally its own ratios (instead of 'ratios')
    [eval]                          # optional, kwargs of regprune.api.evaluate; absent: no evaluation
    ppl = ["wikitext2", "c4"]       # wikitext2 = its test split, c4 = validation, builtin = eval
    seq_len = 512
    max_windows = 64                # 0 = all windows
    tasks = ["piqa", "arc_easy"]    # zero-shot tasks, where regprune.api.evaluate supports them
    limit = 200                     # also: speed, task_batch_size, offline_tasks, [eval.speed_options]

Relative paths in a config file (output, data_dir, and model when it names an existing path there) are
taken relative to the file's directory. Unknown keys, empty lists, unknown methods, options that the
method does not have, and `ratio` / `seed` in options (the grid sets them) are refused with a message.

Layout of `output`:
    .regprune-sweep                 the marker: this directory holds a sweep
    sweep.json                      the validated configuration of the latest run_sweep call
    dense/                          the unpruned model, evaluated once (only when [eval] is given)
    <method>-r<ratio>-s<seed>/      e.g. dress-r0.25-s0
        regprune.json               the pruning record (PruneResult.record; metrics.pruned filled in)
        eval.json                   the evaluation, shaped like `regprune eval --json` output
        model/                      the pruned checkpoint, with save_models = true
        .regprune-cell              the marker: this directory was created by regprune sweep
        result.json                 written last: the cell is finished; "files" lists what it wrote
    summary.json, summary.md        rewritten after every cell

Resuming: a cell whose result.json exists, and whose files listed there ("files") are all present, is
not recomputed ("skipped, done earlier"); a finished cell missing any of them is cleared and computed
again, with a log line saying which file is missing. A cell directory without result.json (an
interrupted cell) is cleared and computed again. A finished cell whose recorded settings differ from the
current configuration is refused rather than mixed in; `resume=False` recomputes every cell.
`save_models` applies to the cells computed from then on. Cell directories can be given to
`regprune.report.write_report` as they are.

Safety: a sweep deletes nothing it did not create. The output directory carries a `.regprune-sweep`
marker and each cell directory a `.regprune-cell` marker from the moment it is created; a non-empty
directory with a cell's name but without the marker (and without result.json) is refused, before any
work, with a message naming it. Every value of the config is checked, and the output proved writable,
before any model is loaded. Every file is written atomically (temporary file, then rename; a saved model
is built in a hidden directory and renamed), and the output is locked for the whole run
(`.<output>.lock` next to it): a second `sweep` / `compare` on the same output is refused at once.

    from regprune.sweep import load_sweep_config, run_sweep, sweep_table
    run_sweep(load_sweep_config("sweep.toml"))
    print(sweep_table("runs/sweep-smol"))
"""
from .cells import DENSE, RESULT, cell_name, finished_cells
from .config import load_sweep_config, validate_sweep_config
from .runner import run_sweep
from .table import protocol_notes, sweep_table

__all__ = ["load_sweep_config", "validate_sweep_config", "run_sweep", "sweep_table", "cell_name", "finished_cells",
           "protocol_notes", "DENSE", "RESULT"]
