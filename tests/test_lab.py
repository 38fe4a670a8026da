"""The notebooks as a new JupyterLab user meets them, without a browser (that is test_notebooks_browser.py).

They name the kernel ``make lab`` registers, their default paths are the repository's
``results/`` and ``figures/`` whatever the kernel's working directory, and a missing run
is only trained with ``train=True``: otherwise the plan is printed (and a store with no
finished run at all is refused: tests/test_faults.py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import nbformat
import pytest

from nxmlab.study.studies import notebook
from nxmlab.study.studies.presets import get_preset
from nxmlab.study.studies.runs import preset_runs
from nxmlab.study.cli.reproduce import NOTEBOOKS, notebook_dir

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("value, expected", [
    (True, True), (False, False), (None, False), (1, True), (0, False),
    ("True", True), ("yes", True), (" on ", True), ("1", True),
    ("False", False), ("no", False), ("off", False), ("0", False), ("None", False), ("", False),
])
def test_as_train_reads_explicit_values(value, expected):
    assert notebook.as_train(value) is expected


@pytest.mark.parametrize("value", ["maybe", "nope", 2, 0.5, [], "y e s"])
def test_as_train_refuses_anything_else(value):
    with pytest.raises(ValueError, match="train must be true or false"):
        notebook.as_train(value)


def test_default_dirs_are_the_repositorys_from_any_working_directory(tmp_path, monkeypatch):
    assert notebook.repo_root() == REPO
    for cwd in (notebook_dir(), tmp_path):
        monkeypatch.chdir(cwd)
        assert notebook.resolve_dir(None, "results") == REPO / "results"
        assert notebook.resolve_dir(None, "figures") == REPO / "figures"
        assert notebook.resolve_dir("runs/x", "results") == REPO / "runs" / "x"  # relative: from the root
        assert notebook.resolve_dir(tmp_path / "r", "results") == tmp_path / "r"
        assert notebook.resolve_dir("~/r", "results") == Path.home() / "r"


def test_setup_resolves_the_parameters_and_says_what_it_will_do(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(notebook_dir())
    P, results_dir, figures_dir, train = notebook.setup("smoke", None, tmp_path / "f", "no", tasks=["rte"])
    assert (P.name, P.tasks, results_dir, figures_dir, train) == ("smoke", ("rte",), REPO / "results",
                                                                  tmp_path / "f", False)
    out = capsys.readouterr().out
    assert f"results: {REPO / 'results'}" in out and f"figures: {tmp_path / 'f'}" in out
    assert "train=False: missing runs are listed with the plan to train them, never trained" in out
    assert notebook.setup("smoke", train=True).train is True
    with pytest.raises(ValueError, match="train must be true or false"):
        notebook.setup("smoke", train="maybe")


@pytest.fixture
def no_training(monkeypatch):
    def refuse(spec):
        raise AssertionError(f"trained {spec.folder().name}")

    monkeypatch.setattr("nxmlab.study.train.recipe.run_experiment", refuse)


def _other_finished_run(results: Path) -> None:
    """A finished run of no smoke study: the store is not empty, and every smoke run is missing."""
    run = results / "rte" / "other-run"
    run.mkdir(parents=True)
    (run / "config.json").write_text('{"store_version": 2}\n')
    (run / "metrics.json").write_text('{"status": "finished"}\n')


@pytest.mark.parametrize("train", [{}, {"train": False}, {"train": "no"}, {"train": None}])
def test_a_missing_run_is_never_trained_without_train_true(tmp_path, capsys, no_training, train):
    results = tmp_path / "results"
    _other_finished_run(results)
    files = sorted(results.rglob("*"))
    out = notebook.run_study("smoke", "table", results, **train)
    assert out.empty and sorted(results.rglob("*")) == files
    text = capsys.readouterr().out
    assert text.count("not run yet (train=False)") == 12
    assert f"plan: 12 of 12 runs (marked 'not run yet' above) are not in {results}; nothing was trained" in text
    assert "set train = True in the parameters cell" in text and "nxmlab reproduce --preset smoke --dry-run" in text


def test_quick_finds_the_committed_runs_from_the_notebooks_folder(monkeypatch, capsys, no_training):
    """The issue's case: a kernel started in notebooks/ switches to preset="quick" with the default paths."""
    monkeypatch.chdir(notebook_dir())
    before = set(os.listdir(notebook_dir()))
    runs = preset_runs(get_preset("quick"), "table", str(REPO / "results"))
    out = notebook.run_study("quick", "table")
    assert len(out) == len(runs) > 0
    assert "plan:" not in capsys.readouterr().out
    assert set(os.listdir(notebook_dir())) == before  # no notebooks/results/


def _make_lab_kernel() -> tuple[str, str]:
    line = next(ln for ln in (REPO / "Makefile").read_text().splitlines() if "ipykernel install" in ln)
    return re.search(r"--name (\S+)", line).group(1), re.search(r'--display-name "([^"]+)"', line).group(1)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebooks_name_the_kernel_make_lab_registers_and_default_to_no_training(name):
    import papermill as pm

    kernel, display = _make_lab_kernel()
    nb = nbformat.read(notebook_dir() / f"{name}.ipynb", as_version=4)
    assert nb.metadata.kernelspec == {"name": kernel, "display_name": display, "language": "python"}
    defaults = {k: v["default"] for k, v in pm.inspect_notebook(str(notebook_dir() / f"{name}.ipynb")).items()}
    assert (defaults["results_dir"], defaults["figures_dir"], defaults["train"]) == ("None", "None", "False")


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_lab_allows_root_and_passes_lab_args(tmp_path):
    venv = tmp_path / "venv"
    out = subprocess.run(["make", "-n", "-C", str(REPO), "-o", f"{venv}/.installed", "lab", f"VENV={venv}",
                          "LAB_ARGS=--no-browser --port=8899"], capture_output=True, text=True, check=True).stdout
    kernel, display = _make_lab_kernel()
    assert f'{venv}/bin/python -m ipykernel install --user --name {kernel} --display-name "{display}"' in out
    lab = next(ln for ln in out.splitlines() if "bin/jupyter lab" in ln)
    assert lab.endswith("--no-browser --port=8899") and "--ServerApp.root_dir=notebooks" in lab
    assert ("--allow-root" in lab) == (os.geteuid() == 0)


def test_lab_extra_has_ipywidgets_and_dev_has_playwright():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(r.startswith("ipywidgets") for r in extras["lab"])
    assert any(r.startswith("jupyterlab") for r in extras["lab"])
    assert any(r.startswith("playwright") for r in extras["dev"])


def test_reproduce_trains_unless_told_not_to(tmp_path, monkeypatch):
    """The notebooks default to train=False; ``nxmlab reproduce`` passes True unless --no-train."""
    from nxmlab.study.cli import reproduce as rep

    seen = []
    monkeypatch.setattr(rep, "execute_notebook", lambda name, out, params, *a, **k: seen.append(params) or out)
    monkeypatch.setattr("nxmlab.study.results.verify.require_finished_runs", lambda *a, **k: None)  # an empty store
    rep.reproduce("smoke", tmp_path / "r", tmp_path / "f", notebooks="glue_table", output_root=tmp_path, echo=str)
    rep.reproduce("smoke", tmp_path / "r", tmp_path / "f", notebooks="glue_table", output_root=tmp_path,
                  parameters={"train": False}, echo=str)
    assert [p["train"] for p in seen] == [True, False]
