"""Fault injection: bad input, damaged files and system faults, each against a store that must survive.

Every case asserts the exit status, the one-line message, that nothing partial is left
behind, and that the results already in the store are unchanged (checksums of every
file before and after).  The store is one dense and one ADMM run of the `tiny` model on a
few RTE examples, trained once for the module and copied for each case.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from nxmlab.study.cli import main
from nxmlab.study.results.store import RunFolder, read_json

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
TINY = ["--model", "tiny", "--train_limit", "24", "--eval_limit", "8", "--per_device_train_batch_size", "8",
        "--per_device_eval_batch_size", "8", "--num_train_epochs", "1", "--retrain_epochs", "1", "--save_steps", "1000",
        "--logging_steps", "1", "--log_interval", "1", "--learning_rate", "1e-3", "--disable_tqdm", "true"]
CHECKPOINT_EVERY_STEP = ["--save_steps", "1"]  # not part of a run's identity


# ------------------------------------------------------------------------------ helpers
def checksums(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` (results and cache)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.endswith(".lock")}


def leftovers(root: Path) -> list[str]:
    """Partial files: temporary files of an interrupted write, staging and trash folders."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*")
                  if p.name.endswith((".tmp", ".new", ".old")) or ".tmp" in p.name)


def cli(args: list[str], capsys) -> tuple[int, str, str]:
    """``(exit status, last stderr line, all stderr)`` of ``nxmlab`` run in this process."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    return code, (lines[-1] if lines else ""), captured.err + captured.out


def one_line_error(err: str, full: str, message: str) -> None:
    assert err.startswith("nxmlab: error: ") and message in err, err
    assert "Traceback" not in full


#: A progress bar's line (tqdm: "Tokenizing rte: 100%|###| 8/8 [00:00<00:00, ...]"), not a message.
PROGRESS_BAR = re.compile(r"\[\d+:\d\d[<,]|^\s*$")


def only_line(capsys) -> tuple[str, str]:
    """``(the one stderr line, stdout)``; fails when stderr holds any other line than progress bars."""
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if not PROGRESS_BAR.search(line)]
    assert len(lines) == 1, captured.err[-3000:]
    return lines[0], captured.out


def train_args(store: Path, glue: Path, *extra) -> list:
    return ["train", "--task", "rte", *TINY, "--results_dir", store / "results", "--glue_dir", glue, *extra]


def run_of(store: Path, label: str, task: str = "rte") -> RunFolder:
    (path,) = [p for p in (store / "results" / task).iterdir() if p.name.startswith(f"{label}-")
               and not p.name.startswith(".")]
    return RunFolder.at(path)


@pytest.fixture(scope="module")
def base(tmp_path_factory, glue_dir):
    """A store with a finished dense and a finished ADMM run (module-wide, never modified)."""
    store = tmp_path_factory.mktemp("faults") / "store"
    for method in ("dense", "admm"):
        assert main([str(a) for a in train_args(store, glue_dir, "--method", method)]) == 0
    assert main(["verify", str(store / "results")]) == 0
    return store


@pytest.fixture
def store(base, tmp_path):
    """A private copy of the base store (results and cache) and its checksums."""
    copy = tmp_path / "store"
    shutil.copytree(base, copy)
    return copy, checksums(copy)


@pytest.fixture
def mirror(tmp_path, glue_dir):
    """A copy of the RTE and STS-B mirror files that a case may damage."""
    root = tmp_path / "glue"
    for task in ("rte", "stsb"):
        (root / task).mkdir(parents=True)
        for split in ("train", "validation"):
            shutil.copy(glue_dir / task / f"{split}.parquet", root / task / f"{split}.parquet")
    return root


# ------------------------------------------------------------- 1. typed, validated input
CONFIG_FILES = {  # file name, options (added to task, model and folders) or raw text, message
    "kd-maybe": ("c.yaml", "method: magnitude\nkd: maybe\n", "kd must be true or false, got 'maybe'"),
    "lr-text": ("c.yaml", "learning_rate: fast\n", "learning_rate must be a number, got 'fast'"),
    "lr-zero": ("c.yaml", "learning_rate: 0\n", "learning_rate must be > 0 and finite, got 0.0"),
    "lr-negative": ("c.json", {"learning_rate": -1e-3}, "learning_rate must be > 0 and finite, got -0.001"),
    "lr-nan": ("c.yaml", "learning_rate: .nan\n", "learning_rate must be a finite number, got nan"),
    "seed-fraction": ("c.yaml", "seed: 1.5\n", "seed must be an integer, got 1.5"),
    "epochs-list": ("c.yaml", "num_train_epochs: [1, 2]\n", "num_train_epochs must be a number, got [1, 2]"),
    "kd-number": ("c.json", {"kd": 2}, "kd must be true or false, got 2"),
    "unknown-option": ("c.yaml", "frobnicate: 3\n", "unknown option(s) frobnicate in config file"),
    "yaml-syntax": ("c.yaml", None, "is not valid YAML"),
    "json-syntax": ("c.json", None, "is not valid JSON"),
    "json-list": ("c.json", None, "must hold a mapping of option names to values, got list"),
    "empty": ("c.yaml", None, "must hold a mapping of option names to values, got nothing"),
}
RAW = {"yaml-syntax": "task: [rte\nmethod: dense\n", "json-syntax": '{"task": "rte",', "json-list": '["rte"]',
       "empty": ""}


@pytest.mark.parametrize("case", list(CONFIG_FILES), ids=list(CONFIG_FILES))
def test_bad_config_file_exits_2_and_writes_nothing(case, store, tmp_path, glue_dir, capsys):
    root, before = store
    name, options, message = CONFIG_FILES[case]
    config = tmp_path / name
    head = {"task": "rte", "model": "tiny", "results_dir": str(root / "results"), "glue_dir": str(glue_dir)}
    if options is None:
        text = RAW[case]
    elif isinstance(options, dict):
        text = json.dumps({**head, **options})
    else:
        text = "".join(f"{k}: {v}\n" for k, v in head.items()) + options
    config.write_text(text)
    code, err, full = cli(["train", config], capsys)
    assert code == 2
    one_line_error(err, full, message)
    assert checksums(root) == before and not leftovers(root)


CLI_VALUES = {
    "lr-zero": (["--learning_rate", "0"], "learning_rate must be > 0 and finite, got 0.0"),
    "lr-negative": (["--learning_rate", "-1"], "learning_rate must be > 0 and finite, got -1.0"),
    "lr-inf": (["--learning_rate", "inf"], "learning_rate must be a finite number, got inf"),
    "weight-decay-negative": (["--weight_decay", "-0.1"], "weight_decay must be >= 0, got -0.1"),
    "beta-one": (["--adam_beta2", "1"], "adam_beta2 must be >= 0 and < 1, got 1.0"),
    # values Trainer refuses only once training starts, after the run folder exists (issue #31)
    "seed-negative": (["--seed", "-1"], "seed must be an integer in 0..4294967295 (numpy's seed range), got -1"),
    "seed-too-large": (["--seed", str(2**32)], "seed must be an integer in 0..4294967295"),
    "data-seed-negative": (["--data_seed", "-1"], "data_seed must be an integer in 0..4294967295"),
    "eval-batch-zero": (["--per_device_eval_batch_size", "0"], "per_device_eval_batch_size must be a positive integer"),
    "max-steps-zero": (["--max_steps", "0"], "max_steps must be a positive integer, or -1"),
    "save-steps-zero": (["--save_steps", "0"], "save_steps must be > 0"),
    "workers-negative": (["--dataloader_num_workers", "-1"], "dataloader_num_workers must be >= 0, got -1"),
    "rho-negative": (["--method", "admm", "--rho", "-1"], "rho must be a finite number > 0"),
    "limit-zero": (["--train_limit", "0"], "train_limit must be a positive integer, got 0"),
    "unknown-task": (["--task", "glue"], "unknown GLUE task 'glue'"),
    "unknown-method": (["--method", "prune"], "unknown method 'prune'"),
    "malformed-pattern": (["--method", "admm", "--pattern", "4-2"], "malformed NxM pattern '4-2'"),
}


@pytest.mark.parametrize("case", list(CLI_VALUES), ids=list(CLI_VALUES))
def test_bad_number_on_the_command_line_exits_2_before_any_file(case, store, glue_dir, capsys):
    root, before = store
    extra, message = CLI_VALUES[case]
    code, err, full = cli(train_args(root, glue_dir, "--method", "dense", "--seed", "7", *extra), capsys)
    assert code == 2
    one_line_error(err, full, message)
    assert checksums(root) == before and not leftovers(root)
    assert not any("seed7" in p for p in before) and not list((root / "results" / "rte").glob("*seed7*"))


def test_a_refused_seed_leaves_the_results_folder_empty(tmp_path, glue_dir, capsys):
    """Issue #31's case: --seed -1 used to exit 2 only after config.json and a cache lock existed."""
    results = tmp_path / "D"
    results.mkdir()
    code = main([str(a) for a in ["train", "--task", "rte", "--method", "dense", *TINY, "--seed", "-1",
                                   "--results_dir", results, "--glue_dir", glue_dir]])
    line, out = only_line(capsys)
    assert code == 2 and line == "nxmlab: error: seed must be an integer in 0..4294967295 (numpy's seed range), got -1"
    assert list(tmp_path.iterdir()) == [results] and not list(results.iterdir())  # no run folder, no cache


PARSER_ERRORS = {  # errors HfArgumentParser finds: one line and a pointer to --help, no usage dump
    "lr-text": (["--learning_rate", "abc"], "argument --learning_rate/--learning-rate: invalid float value: 'abc'"),
    "kd-maybe": (["--kd", "maybe"], "argument --kd: Truthy value expected: got maybe"),
    "batch-fraction": (["--per_device_train_batch_size", "1.5"], "invalid int value: '1.5'"),
    "scheduler-choice": (["--lr_scheduler_type", "bogus"], "invalid choice: 'bogus'"),
    "unknown-option": (["--frobnicate", "3"], "Some specified arguments are not used by the HfArgumentParser"),
}


@pytest.mark.parametrize("case", list(PARSER_ERRORS), ids=list(PARSER_ERRORS))
def test_a_parser_error_is_one_line_pointing_to_help(case, store, glue_dir, capsys):
    root, before = store
    extra, message = PARSER_ERRORS[case]
    code = main([str(a) for a in train_args(root, glue_dir, "--method", "dense", "--seed", "7", *extra)])
    line, out = only_line(capsys)
    assert code == 2 and line.startswith("nxmlab: error: ") and message in line, line
    assert line.endswith("(see nxmlab train --help)") or "HfArgumentParser" in line
    assert out == "" and checksums(root) == before and not leftovers(root)


def test_text_that_means_false_is_false(tmp_path):
    from nxmlab.study.train.config import RunSpec, load_config_file

    config = tmp_path / "c.yaml"
    config.write_text('task: rte\nmethod: magnitude\nmodel: tiny\nkd: "false"\ntrain_only_targets: "no"\n'
                      "learning_rate: 5e-5\n")  # YAML reads 5e-5 as text
    cfg, args = load_config_file(config)
    spec = RunSpec.parse(cfg, args)
    assert spec.kd is False and cfg.kd is False and cfg.train_only_targets is False
    assert args.learning_rate == 5e-5 and spec.canonical()["kd"] is False
    assert RunSpec.parse(dataclasses.replace(cfg, kd="no"), args).kd is False  # the Python API too


@pytest.mark.parametrize("value", ["no", "false", "0"])
def test_notebook_train_parameter_text_means_false(value, tmp_path, monkeypatch):
    from nxmlab.study.studies.notebook import run_study
    from nxmlab.study.results.verify import EmptyStoreError

    def trained(*args, **kwargs):
        raise AssertionError("trained with train=" + value)

    monkeypatch.setattr("nxmlab.study.train.recipe.run_experiment", trained)
    with pytest.raises(EmptyStoreError, match="nothing to show: results folder .* does not exist"):  # refused
        run_study("smoke", "table", tmp_path / "results", train=value, log=None)
    assert not (tmp_path / "results").exists()


def test_notebook_parameters_that_are_not_values_are_refused(tmp_path):
    from nxmlab.study.inputs import InputError
    from nxmlab.study.studies.notebook import run_study, setup
    from nxmlab.study.cli.reproduce import reproduce

    with pytest.raises(InputError, match="train must be true or false, got 'maybe'"):
        run_study("smoke", "table", tmp_path / "results", train="maybe", log=None)
    with pytest.raises(InputError, match="epochs must be a number, got 'fast'"):
        setup("smoke", epochs="fast")
    with pytest.raises(InputError, match="train must be true or false, got 'sometimes'"):
        reproduce("smoke", tmp_path / "results", tmp_path / "figures", parameters={"train": "sometimes"},
                  dry_run=True, echo=lambda *_: None)
    assert not list(tmp_path.iterdir())


LABELS = {
    "out-of-range": ("rte", lambda f: f.assign(label=f["label"].where(f.index != 3, 5)),
                     "outside the class ids 0..1 of GLUE rte (e.g. 5)"),
    "negative": ("rte", lambda f: f.assign(label=f["label"].where(f.index != 0, -1)),
                 "outside the class ids 0..1 of GLUE rte (e.g. -1)"),
    "text-labels": ("rte", lambda f: f.assign(label=np.where(f["label"] == 0, "entailment", "not_entailment")),
                    "values (e.g. '"),
    "stsb-nan": ("stsb", lambda f: f.assign(label=f["label"].where(f.index != 2, np.nan)),
                 "column 'label' has 1 missing value(s)"),
}


@pytest.mark.parametrize("case", list(LABELS), ids=list(LABELS))
def test_bad_labels_are_refused_naming_the_file(case, store, mirror, capsys):
    root, before = store
    task, damage, message = LABELS[case]
    path = mirror / task / "train.parquet"
    damage(pd.read_parquet(path)).to_parquet(path)
    args = train_args(root, mirror, "--method", "dense", "--seed", "9")  # a new run (a finished one is reused)
    args[args.index("rte")] = task
    code, err, full = cli(args, capsys)
    assert code == 2
    one_line_error(err, full, f"{path}: ")
    assert message in err
    assert checksums(root) == before and not leftovers(root)


def test_a_truncated_parquet_file_is_one_line_without_datasets_noise(store, mirror):
    """datasets used to log the damaged file twice (ERROR) before nxmlab's own one-line message."""
    import logging

    from nxmlab.study.data.glue import load_glue

    path = mirror / "rte" / "validation.parquet"
    _truncate(path)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("datasets").addHandler(handler)
    try:
        with pytest.raises(ValueError, match=f"could not read GLUE Parquet file {re.escape(str(path))}"):
            load_glue("rte", "validation", mirror)
    finally:
        logging.getLogger("datasets").removeHandler(handler)
    assert not [r.getMessage() for r in records if r.levelno >= logging.WARNING]


# ------------------------------------------------------- 2. a store that isolates damage
def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DAMAGE = {  # what, how; file name relative to the dense run
    "metrics-truncated": ("metrics.json", _truncate),
    "metrics-infinite": ("metrics.json",
                         lambda p: p.write_text(re.sub(r'"score": [-0-9.e]+', '"score": Infinity', p.read_text(), 1))),
    "metrics-not-object": ("metrics.json", lambda p: p.write_text('"fast"\n')),
    "config-garbage": ("config.json", lambda p: p.write_text('"fast"\n')),
}


@pytest.mark.parametrize("case", list(DAMAGE), ids=list(DAMAGE))
def test_table_skips_a_damaged_run_and_names_its_file(case, store, capsys, caplog):
    root, _ = store
    name, damage = DAMAGE[case]
    dense = run_of(root, "dense")
    damage(dense.file(name))
    before = checksums(root)
    code = main(["table", str(root / "results"), "--csv"])
    out = capsys.readouterr().out
    assert code == 0
    frame = pd.read_csv(io.StringIO(out))
    assert list(frame["label"]) == ["admm"] and np.isfinite(frame["score"]).all()  # the other run, no inf
    assert str(dense.file(name)) in caplog.text
    assert checksums(root) == before and not leftovers(root)


@pytest.mark.parametrize("case", list(DAMAGE), ids=list(DAMAGE))
def test_verify_and_reproduce_name_a_damaged_file(case, store, tmp_path, capsys):
    from nxmlab.study.cli.reproduce import DamagedStoreError, reproduce

    root, _ = store
    name, damage = DAMAGE[case]
    dense = run_of(root, "dense")
    damage(dense.file(name))
    before = checksums(root)
    code = main(["verify", str(root / "results")])
    out = capsys.readouterr().out
    assert code == 1 and f"FAIL       {dense.rel}" in out and f"{dense.rel}/{name}: " in out
    assert f"ok         {run_of(root, 'admm').rel}" in out  # the other run is still checked
    with pytest.raises(DamagedStoreError, match=f"{dense.rel}/{name}: "):
        reproduce("smoke", root / "results", tmp_path / "figures", dry_run=True, echo=lambda *_: None)
    assert not (tmp_path / "figures").exists()
    assert checksums(root) == before and not leftovers(root)


@pytest.mark.parametrize("case", ["metrics-truncated", "config-garbage"])
def test_train_names_the_damaged_file_and_advises_overwrite(case, store, glue_dir, capsys):
    root, _ = store
    name, damage = DAMAGE[case]
    dense = run_of(root, "dense")
    damage(dense.file(name))
    before = checksums(root)
    code, err, full = cli(train_args(root, glue_dir, "--method", "dense"), capsys)
    assert code == 2
    one_line_error(err, full, f"damaged file {dense.file(name)}: ")
    assert "--overwrite" in err
    assert checksums(root) == before and not leftovers(root)


def test_overwrite_replaces_a_damaged_result_and_leaves_no_staging(store, glue_dir, capsys):
    root, _ = store
    dense = run_of(root, "dense")
    _truncate(dense.file(RunFolder.METRICS))
    admm = {k: v for k, v in checksums(root).items() if "admm-" in k}
    code, err, full = cli(train_args(root, glue_dir, "--method", "dense", "--overwrite", "true"), capsys)
    assert code == 0, full[-2000:]
    assert read_json(dense.file(RunFolder.METRICS))["status"] == "finished"
    assert main(["verify", str(root / "results")]) == 0
    assert {k: v for k, v in checksums(root).items() if "admm-" in k} == admm
    assert not leftovers(root)


KILL_OVERWRITE = textwrap.dedent("""
    import os, signal, sys
    from transformers import TrainerCallback
    import nxmlab.study.train.recipe as recipe
    from nxmlab.study.cli import main

    class Stop(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == 2:
                os.kill(os.getpid(), getattr(signal, sys.argv[1]))

    init = recipe._Run.__init__
    recipe._Run.__init__ = lambda self, spec, callbacks: init(self, spec, [*callbacks, Stop()])
    sys.exit(main(sys.argv[2:]))
""")


def _stopped(signal_name: str, args: list) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", KILL_OVERWRITE, signal_name, *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_kill_during_overwrite_keeps_the_previous_result(store, glue_dir):
    root, before = store
    killed = _stopped("SIGKILL", train_args(root, glue_dir, "--method", "dense", "--overwrite", "true"))
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert {k: v for k, v in checksums(root).items() if not k.startswith((".nxmlab-cache/results/rte/.",
                                                                          "results/rte/."))} == before
    assert main(["verify", str(root / "results")]) == 0  # the old result is intact and verifies


def test_a_swap_cut_short_is_completed(store, glue_dir, monkeypatch):
    root, _ = store
    dense = run_of(root, "dense")
    staging = dense.staging()
    shutil.copytree(dense.path, staging.path)  # a finished new result, as --overwrite leaves it
    shutil.copytree(dense.cache, staging.cache)
    metrics = read_json(staging.file(RunFolder.METRICS))
    real, calls = os.replace, []

    def flaky(src, dst):  # killed after the cache moved and the old run folder went to the trash
        calls.append(dst)
        if len(calls) == 4:
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(KeyboardInterrupt):
        dense.replace_with(staging)
    monkeypatch.setattr(os, "replace", real)
    assert not dense.path.exists()  # between the two renames: neither in place
    dense.recover()
    assert read_json(dense.file(RunFolder.METRICS)) == metrics and not staging.path.exists()
    assert main(["verify", str(root / "results")]) == 0
    assert not leftovers(root)


class Interrupt:
    """A real SIGINT to this process at the start of optimizer step ``step + 1`` of the first phase."""

    def __init__(self, step: int) -> None:
        from transformers import TrainerCallback

        class Stop(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                if state.global_step == step:
                    os.kill(os.getpid(), signal.SIGINT)

        self.callback = Stop()

    def install(self, monkeypatch) -> None:
        import nxmlab.study.train.recipe as recipe

        init = recipe._Run.__init__
        monkeypatch.setattr(recipe._Run, "__init__",
                            lambda run, spec, callbacks: init(run, spec, [*callbacks, self.callback]))


@pytest.fixture
def foreground_sigint():
    """SIGINT raises KeyboardInterrupt, as in a terminal, also when the suite runs as a
    background job, which inherits SIGINT ignored (then the signal would do nothing)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_sigint_is_one_line_and_resume_falls_back_past_a_checkpoint_that_does_not_load(
        base, tmp_path, glue_dir, capsys, caplog, monkeypatch, foreground_sigint):
    from safetensors.torch import load_file

    root = tmp_path / "store"
    args = train_args(root, glue_dir, "--method", "admm", *CHECKPOINT_EVERY_STEP)
    Interrupt(2).install(monkeypatch)
    code, err, full = cli(args, capsys)  # Ctrl-C during step 3 of ADMM: checkpoints 1 and 2 are complete
    assert code == 130
    assert err.startswith("nxmlab: interrupted; run the same command again to resume") and "Traceback" not in full
    assert not leftovers(root)
    monkeypatch.undo()
    run = run_of(root, "admm")
    checkpoints = run.checkpoint_dir("admm")
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    _truncate(checkpoints / "checkpoint-2" / "optimizer.pt")
    code, err, full = cli(args, capsys)  # the same command: resumes, from checkpoint-1
    assert code == 0, full[-2000:]
    assert "checkpoint-2 cannot be resumed from: optimizer.pt does not load" in caplog.text
    metrics = read_json(run.file(RunFolder.METRICS))
    assert metrics["phases"]["admm"]["resumed_from_step"] == 1
    reference = run_of(base, "admm")  # the same run, never interrupted: the result is bit-identical
    assert metrics["eval"] == read_json(reference.file(RunFolder.METRICS))["eval"]
    ours, theirs = load_file(run.model_dir / "model.safetensors"), load_file(reference.model_dir / "model.safetensors")
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert main(["verify", str(root / "results")]) == 0


def test_files_follow_the_process_umask(base, tmp_path):
    from nxmlab.study.results.store import atomic_write

    old = os.umask(0o002)
    try:
        atomic_write(tmp_path / "x.json", b"{}\n")
        assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o664
    finally:
        os.umask(old)
    mask = 0o666 & ~old
    modes = {p.relative_to(base): p.stat().st_mode & 0o777 for p in base.rglob("*") if p.is_file()}
    assert modes and all(mode == mask for mode in modes.values()), {p: oct(m) for p, m in modes.items() if m != mask}


# ------------------------------------------------------------- 2b. no empty success
TABLE_REFUSALS = {  # where table is pointed, extra options, message (every one exits 2 and names the folder)
    "empty-folder": (lambda root: root / "empty", [], "nothing to show: no finished run under {where} "
                     "(expected <results>/<task>/<run>/metrics.json); the repository's results are in {repo}"),
    "task-folder": (lambda root: root / "results" / "rte", [], "is a task folder; table reads a results folder"),
    "run-folder": (lambda root: run_of(root, "dense").path, [], "is a run folder; table reads a results folder"),
    "wrong-path": (lambda root: root / "nowhere", [], "results folder {where} does not exist"),
    "malformed-pattern": (lambda root: root / "results", ["--pattern", "4-2"], "malformed NxM pattern '4-2'"),
    "pattern-without-runs": (lambda root: root / "results", ["--pattern", "8:2"],
                             "--pattern 8:2: no finished run with that pattern under {where}; its patterns: 4:2"),
    "unknown-model": (lambda root: root / "results", ["--model", "bert-base"],
                      "--model 'bert-base': no finished run of that model under {where}; its models: tiny"),
    "blank-model": (lambda root: root / "results", ["--model", " "], "--model must name a model"),
}


@pytest.mark.parametrize("case", list(TABLE_REFUSALS), ids=list(TABLE_REFUSALS))
def test_table_refuses_what_would_be_an_empty_or_filtered_away_table(case, store, capsys):
    root, _ = store
    (root / "empty").mkdir()
    where, extra, message = TABLE_REFUSALS[case]
    before = checksums(root)
    code = main(["table", str(where(root)), *extra])
    line, out = only_line(capsys)
    assert code == 2 and out == ""
    one_line_error(line, out, message.format(where=where(root), repo=REPO / "results"))
    assert checksums(root) == before and not leftovers(root)


def test_table_refuses_a_store_whose_every_run_is_damaged(store, capsys):
    root, _ = store
    for label in ("dense", "admm"):
        _truncate(run_of(root, label).file(RunFolder.METRICS))
    code = main(["table", str(root / "results")])
    line, out = only_line(capsys)
    assert code == 2 and out == "" and "none of the finished runs under" in line and "not valid JSON" in line


def test_reproduce_without_training_refuses_an_empty_store(tmp_path, capsys):
    empty = tmp_path / "results"
    empty.mkdir()
    code = main(["reproduce", "--preset", "smoke", "--no-train", "--results-dir", str(empty),
                 "--figures-dir", str(tmp_path / "figures"), "--output-dir", str(tmp_path / "nb")])
    line, out = only_line(capsys)
    assert code == 2 and out == ""
    one_line_error(line, out, f"nothing to show: no finished run under {empty} (expected <results>/<task>/<run>/"
                              f"metrics.json); the repository's results are in {REPO / 'results'}; run without "
                              f"--no-train (train=False) to train the preset's runs")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"] and not list(empty.iterdir())


def test_reproduce_without_glue_data_is_one_line_before_any_figure(tmp_path, capsys):
    """The notebooks score the validation examples: a missing mirror stops reproduce before
    the first notebook, so that no figure of a half-run notebook is left behind."""
    missing = tmp_path / "no-glue"
    code = main(["reproduce", "--preset", "quick", "--no-train", "--glue-dir", str(missing),
                 "--figures-dir", str(tmp_path / "figures"), "--output-dir", str(tmp_path / "nb"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("nxmlab: error: GLUE directory does not exist")
    assert str(missing) in err[0] and list(tmp_path.iterdir()) == []


def test_reproduce_defaults_to_the_repositorys_folders_from_any_directory(tmp_path):
    """`cd /tmp && nxmlab reproduce --preset quick --no-train` draws from the repository's results/."""
    proc = subprocess.run([sys.executable, "-m", "nxmlab", "reproduce", "--preset", "quick", "--no-train", "--dry-run"],
                          cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"results: {REPO / 'results'}" in proc.stdout and "train=False" in proc.stdout
    assert list(tmp_path.iterdir()) == []  # nothing written where it was started


@pytest.mark.parametrize("call", ["run_study", "setup"])
def test_notebooks_without_training_refuse_an_empty_store(call, tmp_path, capsys):
    from nxmlab.study.studies import notebook
    from nxmlab.study.results.verify import EmptyStoreError

    results = tmp_path / "results"
    results.mkdir()
    message = (f"nothing to show: no finished run under {results} .*the repository's results are in "
               f"{re.escape(str(REPO / 'results'))}; set results_dir = None for them, or train = True")
    with pytest.raises(EmptyStoreError, match=message):
        if call == "run_study":
            notebook.run_study("smoke", "table", results, train=False, log=None)
        else:
            notebook.setup("smoke", results, tmp_path / "figures", train=False)
    assert list(tmp_path.iterdir()) == [results] and not list(results.iterdir())


def test_ci_stops_in_one_line_without_the_glue_mirror(tmp_path):
    clone = tmp_path / "clone"
    (clone / ".ci").mkdir(parents=True)
    shutil.copy(REPO / ".ci" / "run", clone / ".ci" / "run")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    proc = subprocess.run(["bash", str(clone / ".ci" / "run")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        ".ci/run: error: the GLUE mirror ../shared/glue is missing (expected beside this clone: "
        "../shared/glue/<task>/<split>.parquet)"]
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


# ---------------------------------------------------------- 3. a verify that proves something
def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _cut_last_line(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:-5])


def _all_kept_sample(path: Path) -> None:
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    key = next(k for k in arrays if k.startswith("final/") and not k.endswith("/size"))
    arrays[key] = np.full_like(arrays[key], 0xFF)  # every position kept: 4 of 4
    with open(path, "wb") as fh:
        np.savez_compressed(fh, **arrays)


VERIFY = {  # file of the ADMM run (cache files start with "cache:"), damage, message
    "model-truncated": ("cache:model/model.safetensors", _truncate, "but its header describes"),
    "admm-state-corrupt": ("cache:admm_state.pt", _truncate, "does not load"),
    "dynamics-log-cut": ("cache:dynamics.jsonl", _cut_last_line, "is not a complete JSON record"),
    "masks-garbage": ("cache:masks.npz", lambda p: p.write_bytes(b"garbage"), "not a readable mask archive"),
    "predictions-truncated": ("predictions.parquet", _truncate, "not a readable parquet file"),
    "log-cut": ("log.jsonl", _cut_last_line, "the last line is cut short"),
    "state-truncated": ("state.json", _truncate, "not valid JSON"),
    "mask-sample-not-nxm": ("mask_sample.npz", _all_kept_sample, "is not exactly 4:2"),
    "dynamics-byte-flipped": ("dynamics.parquet", _flip_byte, "dynamics.parquet: "),
    "metrics-newline-cut": ("metrics.json", lambda p: p.write_bytes(p.read_bytes()[:-1]), "no final newline"),
}


@pytest.mark.parametrize("case", list(VERIFY), ids=list(VERIFY))
def test_verify_fails_naming_the_damaged_file(case, store, capsys):
    root, _ = store
    name, damage, message = VERIFY[case]
    admm = run_of(root, "admm")
    path = admm.cache / name.removeprefix("cache:") if name.startswith("cache:") else admm.file(name)
    damage(path)
    before = checksums(root)
    code = main(["verify", str(root / "results")])
    out = capsys.readouterr().out
    assert code == 1 and f"FAIL       {admm.rel}" in out
    line = next(line for line in out.splitlines() if name.removeprefix("cache:") in line)
    assert message in line, out
    assert checksums(root) == before


LEVELS = {  # where verify is pointed, exit status, message
    "empty-folder": (lambda root: root / "empty", 1, "nothing to check: no finished run under"),
    "wrong-path": (lambda root: root / "nowhere", 2, "does not exist"),
    "task-level": (lambda root: root / "results" / "rte", 2, "is a task folder"),
    "run-level": (lambda root: run_of(root, "dense").path, 2, "is a run folder"),
}


@pytest.mark.parametrize("case", list(LEVELS), ids=list(LEVELS))
def test_verify_fails_when_it_checks_nothing(case, store, capsys):
    root, _ = store
    (root / "empty").mkdir()
    where, status, message = LEVELS[case]
    before = checksums(root)
    code, err, full = cli(["verify", where(root)], capsys)
    assert code == status
    one_line_error(err, full, message)
    assert checksums(root) == before


def test_a_damaged_teacher_is_named_before_anything_is_written(store, glue_dir, capsys):
    root, before = store
    dense = run_of(root, "dense")
    teacher = root / "teacher"
    shutil.copytree(dense.model_dir, teacher)
    _truncate(teacher / "model.safetensors")
    before = checksums(root)
    code, err, full = cli(train_args(root, glue_dir, "--method", "magnitude", "--kd", "true", "--teacher", teacher),
                          capsys)
    assert code == 2
    one_line_error(err, full, f"cannot load the saved model in {teacher} (damaged or incomplete: ")
    assert checksums(root) == before and not leftovers(root)


# ------------------------------------------------------------ 4. no non-result becomes a number
def test_an_undefined_correlation_is_stored_as_missing_and_footnoted(store, glue_dir, capsys):
    root, before = store
    args = train_args(root, glue_dir, "--method", "dense", "--eval_limit", "1", "--num_train_epochs", "1")
    args[args.index("rte")] = "stsb"
    code, _, full = cli(args, capsys)
    assert code == 0 and "no score (undefined: a correlation needs at least 2 examples, got 1)" in full
    stsb = run_of(root, "dense", "stsb")
    metrics = read_json(stsb.file(RunFolder.METRICS))
    assert metrics["score"] is None and metrics["eval"]["final"]["validation"]["pearson"] is None
    assert metrics["missing"]["score"].startswith("undefined")
    assert main(["verify", str(root / "results")]) == 0  # missing with a reason is a valid record
    assert main(["table", str(root / "results")]) == 0
    table = capsys.readouterr().out
    # eval_limit differs only between tasks, so the RTE and STS-B dense runs share one row
    assert "| dense | –* | " in table, table  # no STS-B score; RTE's from the fixture run
    assert ("\\* dense on stsb: no score (seed 42: undefined: a correlation needs at least 2 examples, "
            "got 1); left out of every mean and average") in table
    assert "inf" not in table and "nan" not in table.lower()
    assert {k: v for k, v in checksums(root).items() if k in before} == before


def test_missing_scores_never_enter_an_average():
    from nxmlab.study.results.frames import glue_table, seed_summary

    rows = [{"run": f"{t}/{s}", "task": t, "label": "dense", "seed": s, "rho": None, "score": v, "setting": "{}"}
            for t, s, v in [("rte", 1, 60.0), ("stsb", 1, float("nan")), ("rte", 2, 70.0), ("stsb", 2, 80.0)]]
    scores = pd.DataFrame(rows)
    scores.attrs["missing"] = {"stsb/1": "undefined: the model predicts the same value for every example"}
    summary = seed_summary(scores).set_index("task")
    assert summary.loc["stsb", "n"] == 1 and summary.loc["avg", "n"] == 1 and summary.loc["avg", "mean"] == 75.0
    table = glue_table(scores)
    assert table.loc["dense", "stsb"] == "80.0" and table.attrs["footnotes"][0].startswith("dense on stsb: no score")


# ------------------------------------------------------------------- 5. system faults
def _fail_writing(name: str, error: BaseException):
    from nxmlab.study.results import store as store_module

    real = store_module.atomic_write

    def atomic_write(path, data):
        if Path(path).name == name:
            raise error
        return real(path, data)

    return atomic_write


FAULTS = {  # the file whose write fails, the error, message
    "disk-full": ("predictions.parquet", lambda p: OSError(errno.ENOSPC, "No space left on device", p),
                  "disk full (no space left on device) writing predictions.parquet: free some space and run the "
                  "same command again"),
    "read-only": ("config.json", lambda p: OSError(errno.EROFS, "Read-only file system", p),
                  "cannot write config.json: read-only file system; choose a writable folder"),
    "quota": ("predictions.parquet", lambda p: OSError(errno.EDQUOT, "Disk quota exceeded", p),
              "disk quota exceeded writing predictions.parquet: free some space (or raise the quota) and run the "
              "same command again"),
    "permission-denied": ("state.json", lambda p: OSError(errno.EACCES, "Permission denied", p),
                          "cannot write state.json: permission denied; fix its permissions or choose a folder you "
                          "may write"),
    # a write that fails (not an open) carries no file name: the path comes from the writer's frame
    "file-too-large": ("metrics.json", lambda p: OSError(errno.EFBIG, "File too large"),
                       "file too large for the file system (or for `ulimit -f`) writing {run}/metrics.json: write "
                       "the results and their cache to a file system that allows larger files"),
}


@pytest.mark.parametrize("case", list(FAULTS), ids=list(FAULTS))
def test_system_faults_are_one_line_and_nothing_is_lost(case, store, glue_dir, capsys, monkeypatch):
    from nxmlab.study.results import store as store_module

    root, before = store
    name, error, message = FAULTS[case]
    monkeypatch.setattr(store_module, "atomic_write", _fail_writing(name, error(name)))
    args = train_args(root, glue_dir, "--method", "dense", "--seed", "3")
    code = main([str(a) for a in args])
    line, out = only_line(capsys)
    assert code == 1
    runs = list((root / "results" / "rte").glob("dense-tiny-seed3-*"))  # none when config.json was refused
    one_line_error(line, out, message.format(run=runs[0] if runs else None))
    assert line.endswith("run the same command again (finished phases and complete checkpoints are kept; "
                         "the run resumes)")
    assert {k: v for k, v in checksums(root).items() if k in before} == before and not leftovers(root)
    if case in ("disk-full", "file-too-large"):  # failed at the end: the same command again reuses the phase
        (path,) = runs
        phases = read_json(path / RunFolder.STATE)["phases"]
        monkeypatch.undo()
        code, _, full = cli(args, capsys)
        assert code == 0, full[-2000:]
        assert read_json(path / RunFolder.METRICS)["phases"] == phases and "finetune" in phases


def test_torch_failing_to_write_a_checkpoint_is_one_line(store, glue_dir, capsys, monkeypatch):
    root, before = store

    def full_disk(obj, f, *args, **kwargs):  # what torch says when the disk fills during torch.save
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    monkeypatch.setattr(torch, "save", full_disk)
    code, err, full = cli(train_args(root, glue_dir, "--method", "dense", "--seed", "4", *CHECKPOINT_EVERY_STEP), capsys)
    assert code == 1
    (path,) = (root / "results" / "rte").glob("dense-tiny-seed4-*")
    checkpoint = root / ".nxmlab-cache" / "results" / "rte" / path.name / "checkpoints" / "finetune" / "checkpoint-1"
    one_line_error(err, full, f"torch could not write {checkpoint}/")  # the file torch.save was writing
    assert "([enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534); the disk may be full" in err
    assert {k: v for k, v in checksums(root).items() if k in before} == before and not leftovers(root)


@pytest.mark.parametrize("what", ["weights", "tokenizer"])
def test_a_corrupt_model_folder_is_named(what, store, glue_dir, tmp_path, capsys):
    from nxmlab.study.data.models import load_tokenizer

    root, before = store
    model = tmp_path / "model"
    shutil.copytree(run_of(root, "dense").model_dir, model)
    load_tokenizer("tiny").save_pretrained(model)
    if what == "weights":
        _truncate(model / "model.safetensors")
        message = f"cannot load the model '{model}' from {model}"
    else:
        (model / "tokenizer.json").write_text("{")
        (model / "tokenizer_config.json").write_text("{")
        message = f"cannot load the tokenizer of model '{model}' from {model}"
    args = train_args(root, glue_dir, "--method", "dense")
    args[args.index("tiny")] = model
    code, err, full = cli(args, capsys)
    assert code == 2
    one_line_error(err, full, message)
    assert checksums(root) == before and not leftovers(root)


@pytest.mark.parametrize("error, message", [
    (OSError(errno.ENOSPC, "No space left on device", "/r/x"), "disk full (no space left on device) writing /r/x"),
    (OSError(errno.EROFS, "Read-only file system", "/r"), "cannot write /r: read-only file system"),
    (RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"), "disk full"),
    (RuntimeError("Error while serializing: I/O error: File too large (os error 27)"), "file too large"),
    (OSError(errno.EDQUOT, "Disk quota exceeded", "/r/q"), "disk quota exceeded writing /r/q"),
    (OSError(errno.EACCES, "Permission denied", "/r/p"), "cannot write /r/p: permission denied"),
    (OSError(errno.EIO, "Input/output error", "/r/i"), "input/output error writing /r/i"),
    (ValueError("a plain bad value"), None),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/glue/rte/train.parquet"), None),
])
def test_system_faults_are_told_apart(error, message):
    from nxmlab.study.cli import system_fault

    found = system_fault(error)
    assert (found is None) if message is None else message in found


def _limit_file_size(limit: int):
    def apply():  # in the child: writes past `limit` bytes fail with EFBIG (SIGXFSZ ignored)
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return apply


def test_a_checkpoint_too_large_for_the_file_system_is_one_line_and_resumes(store, glue_dir, capsys):
    """A real EFBIG (`ulimit -f`): the checkpoint's model.safetensors (8 MB) cannot be written.
    It used to end in a traceback; the same command without the limit then finishes the run."""
    root, before = store
    args = [str(a) for a in train_args(root, glue_dir, "--method", "dense", "--seed", "5", *CHECKPOINT_EVERY_STEP)]
    proc = subprocess.run([sys.executable, "-m", "nxmlab", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, preexec_fn=_limit_file_size(4_000_000),
                          timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]
    (path,) = (root / "results" / "rte").glob("dense-tiny-seed5-*")
    checkpoint = root / ".nxmlab-cache" / "results" / "rte" / path.name / "checkpoints" / "finetune" / "checkpoint-1"
    last = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr and "nxmlab: error:" not in proc.stderr.strip().rsplit("\n", 1)[0]
    assert last == (f"nxmlab: error: file too large for the file system (or for `ulimit -f`) writing "
                    f"{checkpoint / 'model.safetensors'}: write the results and their cache to a file system that "
                    f"allows larger files (--results_dir, $NXMLAB_CACHE_DIR) or raise the limit, then run the same "
                    f"command again (finished phases and complete checkpoints are kept; the run resumes)")
    assert {k: v for k, v in checksums(root).items() if k in before} == before and not leftovers(root)
    code, _, full = cli(args, capsys)  # the same command, without the limit: the run resumes and finishes
    assert code == 0, full[-2000:]
    assert main(["verify", str(root / "results")]) == 0


# ------------------------------------------------------- 5b. compressed data and exported folders
@pytest.fixture(scope="module")
def exported(base, tmp_path_factory):
    """The base store's ADMM run exported in both forms (module-wide, never modified)."""
    root = tmp_path_factory.mktemp("exported")
    run = run_of(base, "admm")
    for form in ("dense", "compressed"):
        assert main(["export", str(run.path), "--out", str(root / form), "--format", form]) == 0
    return root


def _damage_bitmask(folder: Path) -> str:
    """Keep all 4 positions of the first group of a 4:2 target's bitmask; returns the target."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from nxmlab.export import COMPRESSED_WEIGHTS

    path = folder / COMPRESSED_WEIGHTS
    with safe_open(str(path), "pt") as fh:
        metadata = fh.metadata()
    tensors = load_file(path)
    key = sorted(k for k in tensors if k.endswith(".bitmask"))[0]
    tensors[key][0, 0] |= 0x0F
    save_file(tensors, path, metadata=metadata)
    return key.removesuffix(".bitmask")


def _write(path: Path, text: str, message: str) -> str:
    path.write_text(text)
    return message


EXPORT_DAMAGE = {  # form, damage (returns the message), exit status 1 with one line naming the file
    "config-not-json": ("dense", lambda f: _write(f / "config.json", "{", f"{f / 'config.json'}: not valid JSON")),
    "config-no-metadata": ("dense", lambda f: _write(f / "config.json", '{"model_type": "bert"}\n',
                                                     f"{f / 'config.json'} has no nxm_sparsity metadata")),
    "metadata-no-pattern": ("dense", lambda f: _write(f / "config.json", (f / "config.json").read_text().replace(
        '"n": 4', '"n": 1'), f"{f / 'config.json'}: the nxm_sparsity metadata has no valid pattern")),
    "dense-weights-truncated": ("dense", lambda f: _truncate(f / "model.safetensors")
                                or f"{f / 'model.safetensors'}: cannot be loaded (damaged or incomplete: "),
    "compressed-weights-truncated": ("compressed", lambda f: _truncate(f / "model.nxm-compressed.safetensors")
                                     or f"{f / 'model.nxm-compressed.safetensors'}: cannot be loaded"),
    "bitmask-not-nm": ("compressed", lambda f: f"model.nxm-compressed.safetensors: {_damage_bitmask(f)}.bitmask: "
                       "group 0 of row 0 keeps 4 of 4, not 2 (4:2 (keep 2 of every 4))"),
}


@pytest.mark.parametrize("case", list(EXPORT_DAMAGE), ids=list(EXPORT_DAMAGE))
def test_verify_export_names_an_unreadable_file_in_one_line(case, exported, tmp_path, capsys):
    form, damage = EXPORT_DAMAGE[case]
    folder = tmp_path / form
    shutil.copytree(exported / form, folder)
    message = damage(folder)
    before = checksums(folder)
    code = main(["verify-export", str(folder)])
    line, out = only_line(capsys)
    assert code == 1 and out == ""
    one_line_error(line, out, message)
    assert checksums(folder) == before and sorted(p.name for p in tmp_path.iterdir()) == [form]


def test_load_sparse_and_decompress_state_dict_refuse_corrupted_indices(exported, tmp_path):
    from nxmlab.export import compressed_state_dict, decompress_state_dict, load_sparse
    from nxmlab.targets import select_targets

    folder = tmp_path / "compressed"
    shutil.copytree(exported / "compressed", folder)
    target = _damage_bitmask(folder)
    with pytest.raises(ValueError, match=f"{re.escape(target)}.bitmask: group 0 of row 0 keeps 4 of 4"):
        load_sparse(folder)
    model = load_sparse(exported / "compressed")
    state = compressed_state_dict(model, select_targets(model), "4:2")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in decompress_state_dict(state, "4:2").items())
    key = f"{target}.weight_indices"
    state[key] = state[key].clone()
    state[key][0, 1] = state[key][0, 0]  # a position repeated inside a group
    with pytest.raises(ValueError, match=f"{re.escape(target)}.weight: the 2 indices of a group must be distinct"):
        decompress_state_dict(state, "4:2")
    state[key][0, 1] = 7  # no position 7 in a group of 4
    with pytest.raises(ValueError, match=f"{re.escape(target)}.weight: indices must be positions 0..3"):
        decompress_state_dict(state, "4:2")


# ------------------------------------------------------------------- 6. API type checks
API = {
    "numpy-weight": (lambda: __import__("nxmlab").nxm_mask(np.ones((4, 8), np.float32), "4:2"), TypeError,
                     "expected a torch.Tensor, got numpy.ndarray"),
    "list-weight": (lambda: __import__("nxmlab").project([[1.0] * 8] * 4, "4:2"), TypeError,
                    "expected a torch.Tensor, got list"),
    "bool-weight": (lambda: __import__("nxmlab").nxm_mask(torch.ones(4, 8, dtype=torch.bool), "4:2"), TypeError,
                    "unsupported dtype torch.bool"),
    "int-weight": (lambda: __import__("nxmlab").nxm_mask(torch.ones(4, 8, dtype=torch.int64), "4:2"), TypeError,
                   "unsupported dtype torch.int64"),
    "meta-weight": (lambda: __import__("nxmlab").nxm_mask(torch.empty(4, 8, device="meta"), "4:2"), TypeError,
                    "a meta tensor holds no values"),
    "is-nxm-numpy": (lambda: __import__("nxmlab").is_nxm(np.zeros((4, 8)), "4:2"), TypeError, "numpy.ndarray"),
    "float-mask": (lambda: _apply(torch.full((8, 8), 0.3)), ValueError, "must be bool or hold only 0 and 1, found 0.3"),
    "numpy-mask": (lambda: _apply(np.ones((8, 8), bool)), TypeError, "expected a torch.Tensor, got numpy.ndarray"),
    "list-masks": (lambda: _apply(None, masks=[torch.ones(8, 8, dtype=torch.bool)]), TypeError,
                   "masks: expected a mapping"),
}


def _apply(mask, masks=None):
    from nxmlab import apply_masks

    model = torch.nn.Sequential(torch.nn.Linear(8, 8))
    return apply_masks(model, masks if masks is not None else {"0": mask})


@pytest.mark.parametrize("case", list(API), ids=list(API))
def test_api_refuses_what_it_cannot_use(case):
    call, kind, message = API[case]
    with pytest.raises(kind, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        call()


def test_a_zero_one_float_mask_is_a_mask():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8))
    mask = (torch.arange(64).reshape(8, 8) % 2).float()
    from nxmlab import apply_masks

    apply_masks(model, {"0": mask})
    weight = model[0].weight.detach()
    assert bool((weight[mask == 0] == 0).all()) and bool((weight[mask == 1] != 0).all())


def _public_api_calls() -> dict:
    """One call per public callable of the method layer, with a non-module or non-tensor where
    it expects a module or a tensor."""
    import nxmlab

    array = np.ones((4, 8), np.float32)
    linear = torch.nn.Linear(8, 8)
    model = torch.nn.Sequential(linear)
    return {
        "ADMM": lambda: nxmlab.ADMM(array, None, "4:2"),
        "FixedMasks": lambda: nxmlab.FixedMasks(array, {}),
        "NxM": lambda: nxmlab.NxM(4, 2).check(array),
        "apply_masks": lambda: nxmlab.apply_masks(model, {"0": array}),
        "compress": lambda: nxmlab.compress(array, "4:2"),
        "decompress": lambda: nxmlab.decompress(array, torch.zeros(4, 4, dtype=torch.uint8), "4:2"),
        "describe_target": lambda: nxmlab.describe_target(linear),
        "distillation_loss": lambda: nxmlab.distillation_loss(array, array, None),
        "is_nxm": lambda: nxmlab.is_nxm(array, "4:2"),
        "magnitude_nxm_masks": lambda: nxmlab.magnitude_nxm_masks({"0": array}, "4:2"),
        "nxm_mask": lambda: nxmlab.nxm_mask(array, "4:2"),
        "project": lambda: nxmlab.project(array.tolist(), "4:2"),
        "select_targets": lambda: nxmlab.select_targets(array),
        "unstructured_masks": lambda: nxmlab.unstructured_masks({"0": linear.weight}, 0.5),  # a tensor, not a module
        "LearnedMasks": lambda: nxmlab.LearnedMasks({"0": array}, "4:2"),
        "gumbel_soft_mask": lambda: nxmlab.gumbel_soft_mask(array, nxmlab.candidate_masks("4:2"), 1.0),
        "kept_weight_norm": lambda: nxmlab.kept_weight_norm(array, array),
        "prior_gates": lambda: nxmlab.prior_gates(array, "4:2"),
    }


#: Public names that take no module or tensor.
NO_MODULE_OR_TENSOR = {"ADMMDiagnostics": "a record of floats", "COMPONENTS": "a tuple of component names",
                       "MaskSchedule": "a schedule of floats", "candidate_masks": "a pattern"}


def test_the_api_table_covers_every_public_name():
    import nxmlab

    assert set(nxmlab.__all__) == set(_public_api_calls()) | set(NO_MODULE_OR_TENSOR)


@pytest.mark.parametrize("name", sorted(set(__import__("nxmlab").__all__) - set(NO_MODULE_OR_TENSOR)))
def test_every_public_function_refuses_a_non_module_or_non_tensor(name):
    with pytest.raises(TypeError, match=r"expected a (torch\.Tensor|torch\.nn\.Module|module name|mapping)"):
        _public_api_calls()[name]()


# ------------------------------------------------------------------------- 8. progress
def test_export_rebuild_shows_its_progress(store, tmp_path, capsys):
    """`nxmlab export --rebuild` used to train with tqdm off and say nothing until it finished;
    stdout is not a terminal here, so it prints one line per few steps of every phase."""
    root, _ = store
    admm = run_of(root, "admm")
    shutil.rmtree(admm.model_dir)  # a fresh clone's state: the record without the weights
    record = {k: v for k, v in checksums(root).items() if k.startswith("results/")}
    code = main(["export", str(admm.path), "--out", str(tmp_path / "hf"), "--rebuild"])
    out = capsys.readouterr().out
    assert code == 0, out[-2000:]
    steps = [line for line in out.splitlines() if re.match(r"\[(admm|retrain)\] step \d+/\d+ \(\d+%\)", line)]
    assert "[admm] step 3/3 (100%)" in [line.split(",")[0] for line in steps], out  # (a loss once one is logged)
    assert any(line.startswith("[retrain] step") for line in steps) and "rebuilt rte/admm-4x2" in out
    assert {k: v for k, v in checksums(root).items() if k.startswith("results/")} == record


def test_progress_lines_every_n_steps():
    from types import SimpleNamespace

    from nxmlab.study.train.progress import ProgressLines

    lines: list[str] = []
    progress = ProgressLines(every=4, write=lines.append)
    args = SimpleNamespace(output_dir="/x/checkpoints/admm")
    state = SimpleNamespace(global_step=0, max_steps=10, is_world_process_zero=True)
    progress.on_train_begin(args, state, None)
    for step in range(1, 11):
        state.global_step = step
        progress.on_log(args, state, None, logs={"loss": 1.0 / step})
        progress.on_step_end(args, state, None)
    assert [line.split(",")[0] for line in lines] == ["[admm] step 4/10 (40%)", "[admm] step 8/10 (80%)",
                                                      "[admm] step 10/10 (100%)"]
    assert "loss 0.2500" in lines[0] and "left" in lines[0] and "left" not in lines[-1]
    with pytest.raises(ValueError, match="every must be a positive integer"):
        ProgressLines(every=0)


# ----------------------------------------------------------------------- 7. figures
def test_a_figure_drawn_after_training_equals_its_redraw_from_the_committed_files(base, tmp_path):
    """weight_magnitudes from the run's own process equals the one redrawn from a copy without the cache."""
    from nxmlab.study import plots
    from nxmlab.study.results import frames

    plots.set_style()
    drawn = plots.plot_magnitudes(plots.load_magnitudes(frames.load_scores(base / "results")))
    first = plots.savefig(drawn, "weight_magnitudes", tmp_path / "a")
    shutil.copytree(base / "results", tmp_path / "clone" / "results")  # committed files only
    redrawn = plots.plot_magnitudes(plots.load_magnitudes(frames.load_scores(tmp_path / "clone" / "results")))
    second = plots.savefig(redrawn, "weight_magnitudes", tmp_path / "b")
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
