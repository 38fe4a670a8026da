"""scripts/study_runner.py: the background queue of preset studies (no training here)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runner():
    spec = importlib.util.spec_from_file_location("study_runner", REPO / "scripts" / "study_runner.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tuning_goes_seed_by_seed_with_rte_last(runner, tmp_path):
    runs = runner.queue(["cpu:tuning"], str(tmp_path))
    assert len(runs) == 48
    keys = [(s.args.seed, s.task.name) for s in runs]
    assert [seed for seed, _ in keys] == sorted(seed for seed, _ in keys)  # seed 42 of every task first
    first_seed = [task for seed, task in keys if seed == keys[0][0]]
    assert first_seed[-1] == "rte" and first_seed[0] == "mrpc"
    assert set(first_seed) == {"mrpc", "stsb", "cola", "rte"}


def test_queue_skips_finished_runs_and_shared_ones(runner, tmp_path):
    both = runner.queue(["smoke:table", "smoke:table,rho"], str(tmp_path))
    names = [str(s.folder().path) for s in both]
    assert len(names) == len(set(names))  # a run shared by two items is queued once
    finished = both[0].folder()
    finished.path.mkdir(parents=True)
    (finished.path / "metrics.json").write_text(
        '{"status": "finished", "task": "rte", "method": "dense", "model": "tiny", "kd": false, "seed": 42, '
        '"score": 0.5, "eval": {"final": {"validation": {"accuracy": 0.5}}}}\n')
    again = [str(s.folder().path) for s in runner.queue(["smoke:table", "smoke:table,rho"], str(tmp_path))]
    assert again == names[1:]


def test_unknown_preset_is_exit_2(runner, capsys):
    assert runner.main(["--dry-run", "nope:table"]) == 2
    assert "unknown preset" in capsys.readouterr().err


def test_the_runner_names_the_choices_ready_to_record_and_the_runs_that_wait(runner):
    """With nothing recorded, every complete grid of the committed store is a ready choice
    (CoLA's three labels: the recorded ones, so with them recorded nothing is announced);
    the table runs of the labels without a choice wait."""
    import dataclasses

    from nxmlab.study.studies import selection
    from nxmlab.study.studies.presets import get_preset

    protocol = get_preset("protocol")
    results = str(REPO / "results")
    blank = dataclasses.replace(protocol, chosen=())
    ready = runner.ready_choices([blank], results)
    cola = [line for line in ready if line.startswith("protocol cola ")]
    assert sorted(line.split(":")[0] for line in cola) == [
        "protocol cola admm", "protocol cola magnitude", "protocol cola nxmlab-admm"]
    assert f"protocol cola admm: {selection.recorded(protocol)['cola']['admm']}" in cola
    assert not [line for line in runner.ready_choices([protocol], results) if line.startswith("protocol cola ")]
    sparse = len([lb for lb in protocol.labels if lb != "dense"])
    assert runner.waiting([blank], results) == len(protocol.tasks) * len(protocol.seeds) * sparse


def test_the_runs_of_one_dense_model_go_together_and_dense_runs_only_waiting_runs_need_go_last(
        runner, tmp_path, monkeypatch):
    """An empty store, CoLA's choices recorded and MRPC's and STS-B's not: every CoLA dense run
    is followed by the sparse runs that start from it; MRPC's and STS-B's dense runs (the
    start of table runs that wait) come after everything else."""
    import dataclasses

    from nxmlab.study.studies.presets import PRESETS

    protocol = PRESETS["protocol"]
    cola_only = tuple((task, choice) for task, choice in protocol.chosen if task == "cola")
    monkeypatch.setitem(PRESETS, "protocol", dataclasses.replace(protocol, chosen=cola_only))
    runs = runner.queue(["protocol:table"], str(tmp_path))
    starts = [runner.start_of(spec) for spec in runs]
    blocks = [start for i, start in enumerate(starts) if i == 0 or starts[i - 1] != start]
    assert len(blocks) == len(set(blocks)) == len(protocol.tasks) * len(protocol.seeds)
    assert all(str(runs[starts.index(start)].folder().path) == start for start in blocks)  # the dense run first
    waiting = [spec.task.name for spec in runs if spec.task.name != "cola"]
    assert runs[-len(waiting):] == [spec for spec in runs if spec.task.name != "cola"]
    assert all(not spec.method.sparse for spec in runs[-len(waiting):])
    assert len(waiting) == 2 * len(protocol.seeds) and len(runs) > len(waiting)


def test_the_runner_commits_the_run_and_a_dense_start_it_trained_again(runner, tmp_path):
    """In a scratch repository: a sparse run's folder is committed, and so is its dense
    start's when that was rewritten (trained again), but not when git sees no change."""
    import subprocess

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    git("config", "user.email", "t@example.com")
    git("config", "user.name", "t")
    results = tmp_path / "results"
    sparse = next(s for s in runner.queue(["smoke:table"], str(results))
                  if s.method.sparse and s.method.needs_dense(s))
    run, dense = sparse.folder().path, sparse.dense().folder().path
    for folder in (run, dense):
        folder.mkdir(parents=True)
    (dense / "metrics.json").write_text('{"seconds": 10}\n')
    git("add", ".")
    git("commit", "-q", "-m", "dense")
    (run / "metrics.json").write_text('{"seconds": 5}\n')
    assert runner.to_commit(sparse) == [run]  # the dense folder is as committed
    (dense / "metrics.json").write_text('{"seconds": 8}\n')  # trained again: a new recorded time
    assert runner.to_commit(sparse) == [run, dense]
    for folder in runner.to_commit(sparse):
        runner.commit(folder)
    assert runner.to_commit(sparse) == []
    log = subprocess.run(["git", "log", "--format=%s"], cwd=tmp_path, check=True, capture_output=True,
                         text=True).stdout.splitlines()
    assert log[:2] == [f"results: results/{dense.parent.name}/{dense.name}",
                       f"results: results/{run.parent.name}/{run.name}"]
