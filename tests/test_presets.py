"""Study presets, their run lists, and `nxmlab reproduce` argument handling and --dry-run."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nxmlab.study.cli import main
from nxmlab.study.train.config import NxMTrainingArguments, RunConfig, RunSpec
from nxmlab.study.train.methods import METHODS
from nxmlab.study.studies.presets import PRESETS, Preset, get_preset, parse_label, resolve_preset
from nxmlab.study.studies.runs import preset_runs
from nxmlab.study.cli.reproduce import NOTEBOOKS, notebook_dir, plan
from nxmlab.study.results.store import atomic_write_json

# (table runs, rho-sweep runs, all runs deduplicated)
EXPECTED = {"smoke": (12, 3, 25), "quick": (6, 0, 6), "baselines": (21, 0, 41), "convergence": (3, 3, 18), "cpu": (120, 0, 188), "paper": (40, 6, 44),
            "protocol": (30, 0, 63)}  # table: 9 dense starts + CoLA's 5 labels x 3 seeds + MRPC's magnitude(+kd) x 3
#                                   (MRPC's ADMM labels and STS-B: no choice yet)


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds_valid_runs(name):
    preset = get_preset(name)
    table, rho, everything = (preset_runs(preset, s) for s in ("table", "rho", "all"))
    assert (len(table), len(rho), len(everything)) == EXPECTED[name]
    tuning = {spec.folder().path for spec in preset_runs(preset, "tuning")}  # the dense grid: its own lr/epochs
    for spec in everything:
        if spec.folder().path in tuning:
            continue
        if spec.cfg.pattern != preset.pattern:  # the n:m sweep
            assert spec.method.sparse and spec.cfg.pattern in preset.patterns
            continue
        cfg, args = spec.cfg, spec.args
        assert cfg.model == preset.model and cfg.pattern == preset.pattern
        if preset.budget is not None and spec.method.sparse:  # the last phase fills the matched budget
            assert spec.method.budget_passes(spec) == preset.budget
        elif not spec.method.sparse and dict(preset.options).get("dense_epochs"):
            assert args.num_train_epochs == dict(preset.options)["dense_epochs"]
        else:
            assert args.num_train_epochs == preset.epochs
        tuned = {**dict(preset.options), **dict(dict(preset.task_options).get(spec.task.name, ()))}
        if spec.cfg.heldout is not None:  # a selection run: a grid point on the held-out split
            assert spec.cfg.heldout == preset.heldout and args.seed == preset.selection_seed
            assert spec.method.sparse or args.learning_rate == tuned.get(
                "dense_learning_rate", tuned.get("learning_rate", preset.learning_rate))
            continue
        if spec.method.sparse:
            # the preset's (or task's) rate, or one the selection study chose for a row of this method
            chosen = {options.get("learning_rate") for label, options in dict(dict(preset.chosen).get(
                spec.task.name, ())).items() for options in [dict(options)]
                if parse_label(preset.row(label)[0])[0].name == spec.method.name}
            assert args.learning_rate in {tuned.get("learning_rate", preset.learning_rate)} | chosen
            assert args.per_device_train_batch_size == preset.batch_size
        else:
            assert args.learning_rate == tuned.get("dense_learning_rate", tuned.get("learning_rate",
                                                                                  preset.learning_rate))
            assert args.per_device_train_batch_size == tuned.get("dense_batch_size", preset.batch_size)
        assert args.seed in preset.seeds
    labels = {spec.label for spec in table}
    ready = {lb for lb in preset.methods if not any(preset.pending(t, lb) for t in preset.tasks)}
    assert ready <= labels <= set(preset.methods) | {"dense"}
    # the default-rho run of the sweep is the table's admm run
    table_dirs = {spec.folder().path for spec in table}
    shared = [spec.folder().path for spec in rho if spec.cfg.rho == preset.rho]
    if preset.rho_tasks:
        assert shared and all(d in table_dirs for d in shared) == ("admm" in preset.methods)
    assert len({spec.folder().path for spec in everything}) == len(everything)
    assert preset.description


def test_dense_runs_come_first_and_are_the_teachers_run_experiment_would_use():
    runs = preset_runs("smoke", "table")
    seen_dense = set()
    dense_dirs = {spec.folder().path for spec in runs if not spec.method.sparse}
    for spec in runs:
        if not spec.method.sparse:
            seen_dense.add(spec.task.name)
            continue
        assert spec.task.name in seen_dense
        if spec.method.needs_dense(spec):  # what run_experiment uses as teacher / ASP start
            assert spec.dense().folder().path in dense_dirs


def test_dense_is_added_when_a_method_needs_it():
    preset = get_preset("quick").replace(methods=["magnitude"])
    labels = [spec.label for spec in preset_runs(preset, "table")]
    assert labels[:2] == ["dense", "magnitude"]
    dynamics = preset_runs(get_preset("quick").replace(methods=["admm"]), "dynamics")
    assert {spec.method.name for spec in dynamics} == {"admm"}
    dynamics = preset_runs(get_preset("quick").replace(methods=["admm", "admm+kd"]), "dynamics")
    assert [spec.label for spec in dynamics] == ["dense", "admm", "admm+kd"] * len(get_preset("quick").tasks)


def test_cpu_preset_seeds_one_seed_labels_and_task_options():
    """Three seeds for the paired comparisons, one for the one-shot references; seed 42 of the
    tasks baselines shares is the baselines run (same budget and ADMM setting)."""
    cpu = get_preset("cpu")
    table = preset_runs(cpu, "table")
    seeds = {}
    for spec in table:
        seeds.setdefault((spec.task.name, spec.label), set()).add(spec.seed)
    for (task, label), got in seeds.items():
        assert got == ({42} if label in cpu.one_seed else {42, 43, 44}), (task, label)
    assert {task for task, _ in seeds} == {"cola", "mrpc", "stsb", "rte"}
    # learned's table runs wait for its selection study (held-out split, seed 41)
    assert {label for _, label in seeds} == set(cpu.methods) - {"learned"}
    assert all(cpu.pending(task, "learned") for task in cpu.tasks)
    chosen = cpu.replace(chosen={t: {"learned": {"freeze_weights": True, "mask_prior_strength": 3.0}} for t in cpu.tasks})
    learned = [spec for spec in preset_runs(chosen, "table") if spec.label == "learned"]
    assert len(learned) == 12 and {spec.seed for spec in learned} == {42, 43, 44}
    selection = preset_runs(cpu, "selection")
    assert {spec.args.seed for spec in selection} == {41} and len(selection) == 4 + 16
    baselines = {spec.folder().path for spec in preset_runs("baselines", "table")}
    # STS-B's tuned learning rate (1e-4) differs from baselines' 5e-5; MRPC's and RTE's do not
    shared = {spec.folder().path for spec in table if spec.seed == 42 and spec.task.name in ("mrpc", "rte")
              and "+kd" not in spec.label}
    assert shared == {path for path in baselines if path.parent.name != "stsb"}
    assert not {spec.folder().path for spec in table} & {path for path in baselines if path.parent.name == "stsb"}
    tuned = cpu.replace(task_options={"rte": {"learning_rate": 2e-5}})
    runs = {(s.task.name, s.label, s.seed): s for s in preset_runs(tuned, "table")}
    assert runs[("rte", "admm", 43)].args.learning_rate == 2e-5 and runs[("mrpc", "admm", 43)].args.learning_rate == 5e-5
    assert runs[("rte", "dense", 42)].args.learning_rate == 2e-5  # the dense run of the task too
    with pytest.raises(ValueError, match="one_seed names 'admm\\+kd'"):
        resolve_preset("quick", one_seed=["admm+kd"])
    with pytest.raises(ValueError, match="unknown option"):
        resolve_preset("cpu", task_options={"rte": {"colour": 1}})


def test_unknown_preset_and_bad_overrides():
    with pytest.raises(ValueError, match=r"unknown preset 'nope'; choose one of: smoke, quick, baselines, convergence, cpu, protocol, paper"):
        get_preset("nope")
    with pytest.raises(ValueError, match="unknown preset field"):
        resolve_preset("smoke", colour="red")
    with pytest.raises(ValueError, match="unknown GLUE task"):
        resolve_preset("smoke", tasks=["glue"])
    with pytest.raises(ValueError, match="unknown method label"):
        resolve_preset("smoke", methods=["prune"])
    with pytest.raises(ValueError, match="epochs"):
        resolve_preset("smoke", epochs=0)
    with pytest.raises(ValueError, match="unknown study"):
        preset_runs("smoke", "everything")


def test_overrides_lists_and_none():
    smoke = get_preset("smoke")
    assert resolve_preset("smoke", tasks=None, seeds=None) is smoke
    p = resolve_preset("smoke", tasks=["stsb"], seeds=[1, 2], rho_grid=[0.1], methods="admm,dense")
    assert p.tasks == ("stsb",) and p.seeds == (1, 2) and p.rho_grid == (0.1,) and p.labels == ("dense", "admm")
    assert isinstance(p, Preset) and hash(p) and p.model == smoke.model
    assert parse_label("admm+kd") == (METHODS["admm"], True) and parse_label("dense") == (METHODS["dense"], False)
    with pytest.raises(ValueError, match="unknown method label 'dense\\+kd'"):
        parse_label("dense+kd")


def test_every_notebook_exists():
    for name in NOTEBOOKS:
        assert (notebook_dir() / f"{name}.ipynb").is_file()


# ------------------------------------------------------------------------------ CLI
def test_reproduce_unknown_preset_exits_2_with_one_line(capsys):
    assert main(["reproduce", "--preset", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["nxmlab: error: unknown preset 'nope'; choose one of: smoke, quick, baselines, convergence, cpu, protocol, paper"]


def test_reproduce_unknown_preset_exit_status_of_the_command(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "nxmlab.study", "reproduce", "--preset", "nope"], capture_output=True,
                          text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "nxmlab: error: unknown preset 'nope'; choose one of: smoke, quick, baselines, convergence, cpu, protocol, paper"]


def test_reproduce_unknown_notebook_exits_2(capsys, tmp_path):
    assert main(["reproduce", "--preset", "smoke", "--notebooks", "glue_table,nope", "--dry-run",
                 "--results-dir", str(tmp_path / "r")]) == 2
    assert "unknown notebook(s) nope" in capsys.readouterr().err


def test_usage_lists_reproduce(capsys):
    assert main([]) == 0
    assert "reproduce" in capsys.readouterr().out


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    results, figures = tmp_path / "results", tmp_path / "figures"
    assert main(["reproduce", "--preset", "smoke", "--dry-run", "--results-dir", str(results),
                 "--figures-dir", str(figures)]) == 0
    out = capsys.readouterr().out
    assert "glue_table: 12 runs, 0 finished, 12 to train" in out
    assert "dense_tuning: 2 runs, 0 finished, 2 to train" in out
    assert "nm_sweep: 5 runs, 0 finished, 2 to train, 3 trained by an earlier notebook" in out
    assert "rho_analysis: 3 runs, 0 finished, 2 to train, 1 trained by an earlier notebook" in out
    assert "convergence: 2 runs, 0 finished, 1 to train, 1 trained by an earlier notebook" in out
    assert "protocol: 18 runs, 0 finished, 6 to train, 12 trained by an earlier notebook" in out
    assert "total: 25 run(s) to train" in out
    assert list(tmp_path.iterdir()) == []  # no results, figures or runs/notebooks


def test_plan_counts_finished_runs(tmp_path):
    folder = preset_runs("smoke", "table", str(tmp_path))[0].folder()
    atomic_write_json(folder.file(folder.METRICS), {  # the fields every reader of a finished record needs
        "status": "finished", "task": "rte", "method": "dense", "model": "tiny", "kd": False, "seed": 42,
        "score": 0.5, "eval": {"final": {"validation": {"accuracy": 0.5}}}})
    run_dir = folder.path
    steps = {s["notebook"]: s for s in plan("smoke", tmp_path)}
    assert steps["glue_table"]["finished"] == 1 and steps["glue_table"]["new"] == 11
    assert steps["mask_distance"]["finished"] == 1 and steps["mask_distance"]["new"] == 0
    only = plan("smoke", tmp_path, notebooks="mask_distance")
    assert [s["notebook"] for s in only] == ["mask_distance"] and only[0]["new"] == 13
    assert Path(run_dir).parent.parent == tmp_path


def test_venv_kernel_runs_this_interpreter_and_restores_the_environment(monkeypatch):
    from jupyter_client.kernelspec import KernelSpecManager

    from nxmlab.study.cli.reproduce import venv_kernel

    monkeypatch.setenv("JUPYTER_PATH", "/somewhere")
    with venv_kernel() as name:
        assert KernelSpecManager().get_kernel_spec(name).argv[0] == sys.executable
    assert os.environ["JUPYTER_PATH"] == "/somewhere"
    monkeypatch.delenv("JUPYTER_PATH")
    with venv_kernel():
        pass
    assert "JUPYTER_PATH" not in os.environ


def test_notebooks_declare_the_same_papermill_parameters(caplog):
    import papermill as pm

    expected = ["preset", "results_dir", "figures_dir", "glue_dir", "train", "tasks", "seeds", "methods", "model",
                "pattern", "epochs", "retrain_epochs", "rho_grid", "rho_tasks"]
    own = {"protocol": ["beside"]}  # a notebook's own parameters come after the shared ones
    for name in NOTEBOOKS:
        assert list(pm.inspect_notebook(str(notebook_dir() / f"{name}.ipynb"))) == expected + own.get(name, []), name
    assert "Unable to parse" not in caplog.text
    # every preset override a notebook accepts is a Preset field
    fields = {f.name for f in dataclasses.fields(Preset)}
    assert set(expected) - {"preset", "results_dir", "figures_dir", "glue_dir", "train"} <= fields


def test_dry_run_projects_wall_time_from_the_bench_json(tmp_path):
    import json

    from nxmlab.study.studies.cost import projected_cost

    assert projected_cost("quick", tmp_path / "absent.json") == []
    cost = {"machine": {"date_utc": "2026-01-02T00:00:00", "cpu_count": 2, "torch_threads": 1},
            "projections": {"quick": {"basis": "measured", "total_hours": 2.5, "remaining_hours": 2.0,
                                      "by_task_hours": {"rte": 1.0, "mrpc": 1.5}, "by_label_hours": {"admm": 2.5}}}}
    (tmp_path / "cost.json").write_text(json.dumps(cost))
    lines = projected_cost("quick", tmp_path / "cost.json")
    assert "2.5 h in all, 2.0 h not yet in the store" in lines[0] and "2026-01-02" in lines[0]
    assert lines[1] == "    by task: rte 1.0 h, mrpc 1.5 h"
    assert projected_cost("cpu", tmp_path / "cost.json") == []


def test_budget_variants_and_options_of_the_quick_preset():
    quick = get_preset("quick")
    table = {spec.label: spec for spec in preset_runs(quick, "table") if spec.task.name == "mrpc"}
    magnitude, admm, dense = table["magnitude"], table["admm"], table["dense"]
    assert dense.args.num_train_epochs == 2.0
    assert magnitude.args.num_train_epochs == 1.0 and magnitude.dense().folder().path == dense.folder().path
    assert admm.args.num_train_epochs == 2.0 and admm.cfg.retrain_epochs == 1.0
    assert admm.cfg.decoupled_penalty and admm.cfg.admm_updates_per_epoch is None and admm.cfg.rho == 1000.0
    assert admm.cfg.decoupled_scope == "pruned"
    convergence = get_preset("convergence")
    variants = {(spec.task.name, spec.folder().name): spec for spec in preset_runs(convergence, "convergence")}
    default = {s.task.name: s.folder().path for s in preset_runs(convergence, "convergence") if s.cfg.decoupled_penalty
               and s.cfg.rho == 1000.0 and s.cfg.u_init == "zero" and s.cfg.admm_updates_per_epoch is None
               and s.cfg.decoupled_scope == "pruned"
               and s.args.num_train_epochs == 2.0}
    assert default["mrpc"] == admm.folder().path  # the convergence study's default is quick's admm run
    assert len(variants) == 3 + 3 + 3 + 3 + 4  # paper, default, 5-per-epoch, pull-all; four on MRPC
    paper = [s for s in variants.values() if not s.cfg.decoupled_penalty and s.cfg.rho_factor == 1.0]
    assert {s.task.name for s in paper} == {"mrpc", "stsb", "rte"}
    for spec in paper:  # the paper setting is the committed pre-#12 quick run (same identity)
        assert spec.cfg.admm_updates_per_epoch is None and spec.cfg.rho == 1e-3
        assert "admm_updates_per_epoch" not in spec.canonical() and "decoupled_penalty" not in spec.canonical()
    short = [s for s in variants.values() if s.args.num_train_epochs == 1.0]
    assert len(short) == 1 and short[0].cfg.retrain_epochs == 2.0  # the budget stays 3 passes
    assert all(s.method.budget_passes(s) == 3.0 for s in variants.values())


def test_bad_budgets_options_and_variants_are_refused():
    with pytest.raises(ValueError, match="budget must be > 0"):
        resolve_preset("quick", budget=-1)
    with pytest.raises(ValueError, match="unknown option"):
        resolve_preset("quick", options={"colour": "red"})
    with pytest.raises(ValueError, match="unknown convergence variant"):
        resolve_preset("quick", convergence={"fast": ("mrpc",)})
    with pytest.raises(ValueError, match="leaves no epochs"):
        preset_runs(resolve_preset("quick", budget=2), "table")


def test_paper_preset_is_the_authors_setting():
    runs = {spec.label: spec for spec in preset_runs("paper", "table") if spec.task.name == "rte"}
    admm, dense = runs["admm"], runs["dense"]
    assert dense.args.num_train_epochs == 5.0 and admm.dense().folder().path == dense.folder().path
    assert admm.method.start(admm) == "dense" and admm.args.num_train_epochs == 10.0
    assert (admm.args.per_device_train_batch_size, admm.args.learning_rate, admm.args.weight_decay,
            admm.args.warmup_steps) == (16, 5e-5, 0.0, 0)
    assert (admm.cfg.u_init, admm.cfg.penalty_before_clip, admm.cfg.train_only_targets, admm.cfg.retrain_epochs,
            admm.cfg.rho, admm.cfg.rho_factor, admm.cfg.admm_interval, admm.cfg.decoupled_penalty) == (
        "residual", True, True, 0.0, 1e-3, 1.0, None, False)
    assert [p.name for p in admm.method.phases] == ["admm", "retrain"]  # retrain 0: skipped at run time


def test_tuning_study_is_the_dense_grid_and_choose_dense_picks_the_best_complete_point(tmp_path):
    import pandas as pd

    from nxmlab.study.studies.tuning import choose_dense, load_tuning

    quick = get_preset("cpu")
    runs = preset_runs(quick, "tuning", str(tmp_path))
    assert len(runs) == len(quick.dense_grid) * len(quick.tuning_tasks) * len(quick.tuning_seeds) == 48
    assert {(s.args.learning_rate, s.args.num_train_epochs) for s in runs} == set(quick.dense_grid)
    assert {s.label for s in runs} == {"dense"} and len({s.folder().path for s in runs}) == 48
    assert load_tuning(quick, tmp_path).empty  # nothing finished
    frame = pd.DataFrame({"task": ["rte"] * 5, "learning_rate": [2e-5, 2e-5, 5e-5, 5e-5, 1e-4],
                          "epochs": [3.0] * 5, "seed": [42, 43, 42, 43, 42], "score": [60, 62, 59, 59, 70]})
    table = choose_dense(frame, seeds=2)
    chosen = table[table["chosen"]]
    assert list(chosen["learning_rate"]) == [2e-5]  # 1e-4 scored higher, but with one seed only
    assert table.set_index("learning_rate").loc[2e-5, "mean"] == 61
    from nxmlab.study.studies.tuning import chosen_settings, plot_tuning, write_tuning

    assert chosen_settings(table) == {"rte": {"learning_rate": 2e-5, "num_train_epochs": 3.0, "score": 61.0}}
    csv, md = write_tuning(table, tmp_path / "figures")
    assert pd.read_csv(csv)["chosen"].tolist() == [True, False, False]
    assert "| rte | 2e-05 | 3 | **61.00** | 1.41 | 2 | yes |" in md.read_text()
    assert "| rte | 0.0001 | 3 | 70.00 |  | 1 |  |" in md.read_text()  # one seed: never chosen
    assert len(plot_tuning(frame, table).axes) == 1 and plot_tuning(frame.iloc[0:0], choose_dense(frame.iloc[0:0], 2))


def test_cpu_learning_rates_are_the_committed_tuning_sweeps_choice():
    """cpu's task_options hold what choose_dense picks from the committed dense grid (every
    point with both tuning seeds), so the powered study cannot drift from its own rule."""
    from nxmlab.study.studies.tuning import choose_dense, chosen_settings, load_tuning

    cpu = get_preset("cpu")
    results = Path(__file__).resolve().parents[1] / "results"
    tuning = load_tuning(cpu, results)
    assert len(tuning) == len(cpu.dense_grid) * len(cpu.tuning_tasks) * len(cpu.tuning_seeds)
    chosen = chosen_settings(choose_dense(tuning, seeds=len(cpu.tuning_seeds)))
    assert {task: {"learning_rate": c["learning_rate"]} for task, c in chosen.items()} == {
        task: dict(opts) for task, opts in cpu.task_options}


def test_pattern_sweep_shares_the_4x2_runs_and_keeps_the_budget():
    baselines = get_preset("baselines")
    sweep = preset_runs(baselines, "patterns")
    table = {spec.folder().path for spec in preset_runs(baselines, "table")}
    # a dense run per task, 3 n:m methods x 4 patterns, unstructured once per density (0.5 and 0.25)
    assert len(sweep) == 2 * (1 + 3 * 4 + 2)
    for spec in sweep:
        if spec.method.sparse:
            assert spec.method.budget_passes(spec) == 3.0
            assert (spec.cfg.pattern == "4:2") == (spec.folder().path in table)
    assert {s.cfg.pattern for s in sweep} == {"4:2", "4:1", "8:4", "8:2"}
    assert {s.cfg.pattern for s in sweep if s.label == "unstructured"} == {"4:2", "4:1"}
    with pytest.raises(ValueError, match="pattern_methods must be sparse"):
        resolve_preset("baselines", pattern_methods=["dense"])


def test_reproduce_no_train_says_so_in_the_plan(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # an empty store with --no-train is refused, even for a dry run: nothing to analyse (issue #31)
    assert main(["reproduce", "--preset", "smoke", "--dry-run", "--no-train", "--results-dir", str(tmp_path / "r")]) == 2
    assert "nothing to show: results folder" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    results = Path(__file__).resolve().parents[1] / "results"  # the committed store: the plan says so
    assert main(["reproduce", "--preset", "quick", "--dry-run", "--no-train", "--results-dir", str(results)]) == 0
    assert "train=False: the notebooks only analyse finished runs; nothing is trained" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_reproduce_tasks_limits_the_plan_to_those_tasks(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common = ["reproduce", "--preset", "smoke", "--notebooks", "glue_table", "--dry-run",
              "--results-dir", str(tmp_path / "r")]
    assert main(common + ["--tasks", "rte,stsb"]) == 0
    both = [line for line in capsys.readouterr().out.splitlines() if "to run:" in line]
    assert main(common + ["--tasks", "stsb"]) == 0
    one = [line for line in capsys.readouterr().out.splitlines() if "to run:" in line]
    assert one and all("stsb" in line for line in one)
    assert [line for line in both if "rte" in line] and len(both) > len(one)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("tasks", ["mrpc", "stsb,nope", ","])
def test_reproduce_tasks_outside_the_preset_exit_2_with_one_line(tasks, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["reproduce", "--preset", "smoke", "--tasks", tasks, "--dry-run",
                 "--results-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"nxmlab: error: --tasks {tasks!r}: preset smoke has the tasks ")
    assert list(tmp_path.iterdir()) == []


def test_reproduce_runs_the_presets_own_notebooks(tmp_path, capsys):
    assert main(["reproduce", "--preset", "convergence", "--dry-run", "--results-dir", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "convergence:" in out and "rho_analysis:" in out and "glue_table:" not in out


@pytest.mark.xfail(strict=True, reason="issue #29: learned's 12 table runs wait for its selection study (queued "
                   "behind protocol); every other method has its three seeds")
def test_the_committed_cpu_table_is_complete_with_three_seeds_where_required(capsys):
    """Issue #14's acceptance: ``nxmlab table results --csv`` has 3 seeds of every (task,
    method) pair of ``cpu`` outside ``one_seed`` (1 seed for those), with a ``run`` column
    naming each run folder, and every run of the preset's table study is finished."""
    import io

    import pandas as pd

    from nxmlab.study.cli import main

    cpu = get_preset("cpu")
    results = Path(__file__).resolve().parents[1] / "results"
    specs = preset_runs(cpu, "table", str(results))
    assert len(specs) == 132 and all(spec.folder().finished for spec in specs)  # 120 + learned (12)
    assert main(["table", str(results), "--csv"]) == 0
    csv = pd.read_csv(io.StringIO(capsys.readouterr().out))
    mine = csv[csv["run"].isin({spec.folder().path.relative_to(results).as_posix() for spec in specs})]
    assert len(mine) == len(specs)
    seeds = mine.groupby(["task", "label"])["seed"].nunique()
    assert seeds.to_dict() == {(t, lb): 1 if lb in cpu.one_seed else 3 for t in cpu.tasks for lb in cpu.labels}


@pytest.mark.parametrize("name", ["protocol", "cpu"])
def test_the_recorded_choices_are_the_rules_on_the_committed_selection_runs(name):
    """Every choice written into a preset's ``chosen`` is what the selection rule picks from the
    committed held-out runs (a hand-copied literal cannot drift from the store)."""
    from nxmlab.study.studies import selection

    results = Path(__file__).resolve().parents[1] / "results"
    recorded, rule = selection.recorded(name), selection.choose(name, results)
    for task, per_label in recorded.items():
        for label, options in per_label.items():
            assert rule.get(task, {}).get(label) == options, (task, label)


#: The results budget of a committed run folder (bytes): masks and weights go to the ignored cache.
RUN_FOLDER_BUDGET = 250_000


def test_every_committed_run_folder_stays_within_the_results_budget():
    """Every run folder under results/ holds at most 250 KB (the protocol's 10-epoch CoLA ADMM
    runs are the largest, about 245 KB: their dynamics and log have the most steps)."""
    results = Path(__file__).resolve().parents[1] / "results"
    folders = [d for d in results.glob("*/*") if d.is_dir()]
    assert len(folders) >= 190
    sizes = {d.relative_to(results).as_posix(): sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
             for d in folders}
    over = {name: size for name, size in sizes.items() if size > RUN_FOLDER_BUDGET}
    assert not over, f"run folders over {RUN_FOLDER_BUDGET} bytes: {over}"


def test_the_log_keeps_six_significant_digits_and_every_other_value(tmp_path):
    """log.jsonl rounds the Trainer's floats (the run folder's budget), never its counts,
    phases or non-finite values."""
    import json

    from nxmlab.study.results.store import RunFolder

    folder = RunFolder(tmp_path / "results", "cola", "run")
    folder.path.mkdir(parents=True)
    folder.append_log([{"phase": "admm", "loss": 0.42455951690673827, "learning_rate": 4.5370370370370374e-05,
                        "epoch": 0.1865671641791045, "step": 50, "grad_norm": float("inf"), "flag": True}])
    line = folder.file(RunFolder.LOG).read_text()
    record = json.loads(line)
    assert record == {"phase": "admm", "loss": 0.42456, "learning_rate": 4.53704e-05, "epoch": 0.186567, "step": 50,
                      "grad_norm": float("inf"), "flag": True}
    assert '"loss": 0.42456,' in line and '"step": 50,' in line
