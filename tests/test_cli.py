"""The command line answers at once (issue #30): `--help` without torch, `python -m nxmlab`,
one DDP line and no `find_unused_parameters` warning under torchrun."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VERBS = ("train", "table", "verify", "reproduce", "export", "verify-export")
HEAVY = ("torch", "transformers", "pandas", "datasets")

# Parse `--help` in a fresh interpreter; report the time it took (interpreter start-up excluded)
# and which heavy packages got imported.
PROBE = """
import json, sys, time
tic = time.perf_counter()
from nxmlab.study.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
seconds = time.perf_counter() - tic
heavy = sorted({m.split('.')[0] for m in sys.modules} & set(%r))
print(json.dumps({"code": code, "seconds": seconds, "heavy": heavy}), file=sys.stderr)
""" % (HEAVY,)


def _probe(args: list[str], env: dict[str, str] | None = None) -> tuple[dict, str]:
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, timeout=300)
    return json.loads(proc.stderr.strip().splitlines()[-1]), proc.stdout


@pytest.mark.parametrize("args", [["--help"], []] + [[verb, "--help"] for verb in VERBS if verb != "train"],
                         ids=lambda a: " ".join(a) or "(none)")
def test_help_answers_without_torch(args):
    result, out = _probe(args)
    assert result["code"] == 0 and result["heavy"] == [], result
    assert result["seconds"] < 1.5, result  # measured: about 0.1 s on 2 busy cores
    assert out.startswith("usage: nxmlab")


def test_train_help_is_cached_and_then_answers_without_torch(tmp_path):
    env = {"XDG_CACHE_HOME": str(tmp_path), "COLUMNS": "100"}
    first, text = _probe(["train", "--help"], env)  # builds the text with HfArgumentParser, and caches it
    assert first["code"] == 0 and "torch" in first["heavy"]
    assert text.startswith("usage: nxmlab train") and "--learning_rate" in text and "--task TASK" in text
    assert len(list((tmp_path / "nxmlab").glob("train-help-*.txt"))) == 1
    second, again = _probe(["train", "--help"], env)
    assert second["code"] == 0 and second["heavy"] == [] and second["seconds"] < 1.5, second
    assert again == text
    from nxmlab.study.cli.commands import _train_parser

    os.environ["COLUMNS"], columns = "100", os.environ.get("COLUMNS")
    try:
        assert _train_parser().format_help() == text  # the cache holds exactly HfArgumentParser's help
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns


def test_python_dash_m_nxmlab_runs_the_cli():
    proc = subprocess.run([sys.executable, "-m", "nxmlab", "--help"], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: nxmlab")
    assert all(verb in proc.stdout for verb in VERBS)
    proc = subprocess.run([sys.executable, "-m", "nxmlab", "table", "--nope"], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "nxmlab: error: the following arguments are required: results_dir (see nxmlab table --help)"]


def test_import_nxmlab_loads_neither_torch_nor_the_study_until_used():
    code = ("import sys, nxmlab; before = sorted(m for m in sys.modules if m.split('.')[0] == 'torch' or "
            "m.startswith('nxmlab.')); nxmlab.NxM.parse('4:2'); "
            "print(before, 'torch' in sys.modules, any(m.startswith('nxmlab.study') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)}).stdout
    assert out.strip() == "[] True False"


def test_public_names_still_import_from_the_package():
    import nxmlab

    for name in nxmlab.__all__:
        assert getattr(nxmlab, name) is not None and name in dir(nxmlab)
    assert nxmlab.nxm.NxM is nxmlab.NxM  # submodules as attributes, as before
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        nxmlab.nope  # noqa: B018


def test_the_catalog_matches_its_sources():
    from nxmlab.study import catalog
    from nxmlab.study.cli import exporting, reproduce
    from nxmlab.study.studies import presets

    assert catalog.PRESET_NAMES == tuple(presets.PRESETS)
    assert reproduce.NOTEBOOKS is catalog.NOTEBOOKS and exporting.DTYPES is catalog.DTYPES


def test_a_launch_sets_find_unused_parameters_off_unless_asked(monkeypatch):
    import torch

    from nxmlab.study.train import distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = types.SimpleNamespace(ddp_backend=None, use_cpu=False, ddp_find_unused_parameters=None)
    distributed.configure_launch(args)
    assert args.ddp_find_unused_parameters is False
    asked = types.SimpleNamespace(ddp_backend=None, use_cpu=False, ddp_find_unused_parameters=True)
    distributed.configure_launch(asked)
    assert asked.ddp_find_unused_parameters is True
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process: nothing changes
    single = types.SimpleNamespace(ddp_backend=None, use_cpu=False, ddp_find_unused_parameters=None)
    distributed.configure_launch(single)
    assert single.ddp_find_unused_parameters is None


def test_ddp_is_announced_once_by_rank_0(monkeypatch, caplog):
    from transformers.training_args import ParallelMode

    from nxmlab.study.train import distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(distributed, "_announced", set())
    args = types.SimpleNamespace(parallel_mode=ParallelMode.DISTRIBUTED, world_size=2, ddp_backend="gloo",
                                 use_cpu=True, per_device_train_batch_size=8, gradient_accumulation_steps=2)
    with caplog.at_level(logging.INFO, logger="nxmlab.study.train.distributed"):
        for rank in ("0", "0", "1"):  # a dense run then the sparse run on rank 0; rank 1 is quiet
            monkeypatch.setenv("RANK", rank)
            assert distributed.check_launch(args) == 2
    assert [r.getMessage() for r in caplog.records] == ["DDP on: 2 processes (gloo, CPU), global batch 32"]
