"""Multi-process runs: ``torchrun --nproc_per_node 2`` on CPU (gloo) against one process at the same global batch."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import pandas as pd
import pytest
import torch

from nxmlab.study.train import distributed
from nxmlab.study.cli import main
from nxmlab.study.train.config import NxMTrainingArguments, RunConfig, RunSpec
from nxmlab.study.results.store import RunFolder, cache_root, load_masks, read_jsonl

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "_ddp_worker.py"

# ADMM on 32 RTE examples: 2 epochs of ADMM (one Z/U update per epoch), 1 masked epoch,
# lr high enough that the masks move. Random batches: Trainer's length-grouped sampler
# groups by the per-process batch, which differs between the two launches.
TRAIN = ["train", "--task", "rte", "--method", "admm", "--model", "tiny", "--train_limit", "32", "--eval_limit", "16",
         "--num_train_epochs", "2", "--retrain_epochs", "1", "--learning_rate", "1e-3",
         "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16", "--save_steps", "2",
         "--logging_steps", "2", "--log_interval", "2", "--disable_tqdm", "true",
         "--train_sampling_strategy", "random"]


def _env(glue_dir: Path, tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
    env.update(PYTHONPATH=str(REPO), NXMLAB_GLUE_DIR=str(glue_dir),
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1")  # one thread per process: the same summation order in both launches
    return env


def _only_run(results: Path) -> RunFolder:
    runs = sorted(p for p in (results / "rte").iterdir() if p.is_dir())
    assert len(runs) == 1, runs  # written once: no per-rank copies
    return RunFolder.at(runs[0])


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed (gloo)")
def test_torchrun_two_ranks_agree_and_match_one_process(tmp_path, glue_dir):
    env = _env(glue_dir, tmp_path)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    ddp = subprocess.Popen([*torchrun, str(WORKER), str(tmp_path / "dump2"), *TRAIN,
                            "--results_dir", str(tmp_path / "r2")], env=env, cwd=tmp_path,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # the same global batch (16) in one process: two micro-batches of 8, exactly the ranks' batches
    one = subprocess.run([sys.executable, str(WORKER), str(tmp_path / "dump1"), *TRAIN,
                          "--gradient_accumulation_steps", "2", "--results_dir", str(tmp_path / "r1")],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    out, _ = ddp.communicate(timeout=240)
    assert ddp.returncode == 0, out[-3000:]
    assert one.returncode == 0, one.stderr[-3000:]
    assert out.count("rte admm: score") == 1  # rank 0 reports, once
    assert out.count("DDP on: 2 processes (gloo, CPU), global batch 16") == 1  # said once, by rank 0
    assert "find_unused_parameters" not in out  # torch's warning: the unused-parameter search is off

    rank0, rank1 = (torch.load(tmp_path / "dump2" / f"rank{r}.pt") for r in (0, 1))
    single = torch.load(tmp_path / "dump1" / "rank0.pt")

    def same(a, b):
        return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)

    # both ranks hold identical masks, Z, U and weights
    for key in ("Z", "U", "masks"):
        assert same(rank0["admm"][key], rank1["admm"][key]), key
    assert len(rank0["prune_masks"]) == 1 and same(rank0["prune_masks"][0], rank1["prune_masks"][0])
    assert same(rank0["final"], rank1["final"])
    # the ADMM-phase masks equal the one-process run's, at every Z/U update and at the prune
    assert same(rank0["admm"]["masks"], single["admm"]["masks"])
    assert same(rank0["prune_masks"][0], single["prune_masks"][0])
    ddp_run, one_run = _only_run(tmp_path / "r2"), _only_run(tmp_path / "r1")
    ddp_cache, one_cache = (cache_root(tmp_path / r) / "rte" / run.name for r, run in (("r2", ddp_run), ("r1", one_run)))
    updates = sorted(p.name for p in (one_cache / "z_masks").glob("step-*.npz"))
    assert updates == ["step-2.npz", "step-4.npz"]
    assert sorted(p.name for p in (ddp_cache / "z_masks").glob("step-*.npz")) == updates
    for name in updates:
        assert same(load_masks(ddp_cache / "z_masks" / name)["z"], load_masks(one_cache / "z_masks" / name)["z"])
    assert same(load_masks(ddp_cache / "masks.npz")["final"], load_masks(one_cache / "masks.npz")["final"])
    flips = pd.read_parquet(ddp_run.file(RunFolder.DYNAMICS)).query("event == 'update'")["flips"].sum()
    assert flips > 0  # the masks moved during ADMM: the comparison is not vacuous

    # the loss is the mean over the global batch (not scaled by the world size): ln 2 at the start
    losses = [[r["loss"] for r in read_jsonl(run.file(RunFolder.LOG)) if "loss" in r] for run in (ddp_run, one_run)]
    assert abs(losses[0][0] - math.log(2)) < 0.05
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)

    # the record is written once and complete
    metrics = json.loads(ddp_run.file(RunFolder.METRICS).read_text())
    assert metrics["status"] == "finished" and metrics["is_nxm"] is True
    assert (ddp_cache / "model" / "model.safetensors").is_file()
    assert len(read_jsonl(ddp_run.file(RunFolder.LOG))) == len(read_jsonl(one_run.file(RunFolder.LOG)))
    assert len(pd.read_parquet(ddp_run.file(RunFolder.PREDICTIONS))) == 16
    raw = read_jsonl(ddp_cache / "dynamics.jsonl")
    assert len(raw) == len({(r["event"], r["step"], r["target"]) for r in raw}) == len(read_jsonl(one_cache / "dynamics.jsonl"))
    # world size and global batch are part of the run's identity
    training = json.loads(ddp_run.file(RunFolder.CONFIG).read_text())["training"]
    assert (training["world_size"], training["global_batch"]) == (2, 16)
    assert "world_size" not in json.loads(one_run.file(RunFolder.CONFIG).read_text())["training"]


def test_identity_includes_world_size_only_under_a_launcher(monkeypatch):
    cfg = RunConfig(task="rte", method="dense", model="tiny")
    args = NxMTrainingArguments(per_device_train_batch_size=8)
    one = RunSpec.parse(cfg, args)
    assert "world_size" not in one.canonical()["training"]
    name = one.folder().name
    monkeypatch.setenv("WORLD_SIZE", "4")
    four = RunSpec.parse(cfg, args)
    assert four.canonical()["training"]["global_batch"] == 32
    assert four.folder().name != name


def test_launch_on_cpu_uses_gloo(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = types.SimpleNamespace(ddp_backend=None, use_cpu=False)
    distributed.configure_launch(args)
    assert (args.use_cpu, args.ddp_backend) == (True, "gloo")
    with pytest.raises(ValueError, match="needs --ddp_backend gloo"):
        distributed.configure_launch(types.SimpleNamespace(ddp_backend="nccl", use_cpu=False))


def test_launch_with_more_ranks_than_gpus_fails(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match="4 processes on this node but it has 2 GPU"):
        distributed.configure_launch(types.SimpleNamespace(ddp_backend=None, use_cpu=False))


def test_a_launch_that_would_train_each_rank_alone_is_refused(monkeypatch):
    from transformers.training_args import ParallelMode

    monkeypatch.setenv("WORLD_SIZE", "2")
    args = types.SimpleNamespace(parallel_mode=ParallelMode.NOT_PARALLEL, world_size=1)
    with pytest.raises(ValueError, match="would train each alone"):
        distributed.check_launch(args)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.check_launch(args) == 1


def test_cli_reports_a_bad_launch_in_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code = main(["train", "--task", "rte", "--model", "tiny", "--results_dir", str(tmp_path / "r"),
                 "--ddp_backend", "nccl"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "needs --ddp_backend gloo" in err
    assert not (tmp_path / "r").exists()
    monkeypatch.setenv("RANK", "1")  # the other ranks stay quiet
    assert main(["train", "--task", "rte", "--model", "tiny", "--ddp_backend", "nccl"]) == 2
    assert capsys.readouterr().err == ""
