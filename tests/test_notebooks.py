"""The study notebooks run top to bottom under papermill on the `smoke` preset.

One results folder (conftest's session-wide ``smoke_store``) is shared, so the smoke runs are
trained once (by the first notebook, glue_table) and reused by the others, as in `nxmlab reproduce`.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from nxmlab.study.cli.reproduce import NOTEBOOKS, execute_notebook, notebook_dir, reproduce, venv_kernel

pytestmark = pytest.mark.slow

FIGURES = {
    "glue_table": ["glue_table", "paired_differences"],
    "dense_tuning": ["dense_tuning"],
    "nm_sweep": ["nm_sweep"],
    "convergence": ["convergence_rte", "convergence_scores", "convergence_mask_sources"],
    "rho_analysis": ["rho_score", "rho_prune_stages", "rho_primal"],
    "sparsity_dynamics": ["dynamics_rel_dist", "dynamics_layer_heatmap", "dynamics_flips", "weight_magnitudes"],
    # one seed: no seed comparison figure
    "mask_distance": ["mask_distance_methods", "mask_distance_layers", "mask_distance_tasks", "mask_distance_rho",
                      "mask_distance_rho_rte", "mask_movement_pretrained_magnitude", "mask_movement_dense_magnitude"],
    "protocol": ["protocol_updates", "protocol_mask_movement"],
}


PARAMETERS = ["preset", "results_dir", "figures_dir", "glue_dir", "train", "tasks", "seeds", "methods", "model",
              "pattern", "epochs", "retrain_epochs", "rho_grid", "rho_tasks"]
#: A notebook's own parameters, after the shared ones (not preset fields: setup does not take them).
OWN_PARAMETERS = {"protocol": ["beside"]}
SETUP = ("P, results_dir, figures_dir, train = notebook.setup(preset, results_dir, figures_dir, train, tasks=tasks, "
         "seeds=seeds, methods=methods, model=model, pattern=pattern, epochs=epochs, retrain_epochs=retrain_epochs, "
         "rho_grid=rho_grid, rho_tasks=rho_tasks)")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_source_notebooks_are_thin_and_cleared(name):
    """Sources carry no outputs; a parameters cell, then one setup call into nxmlab.study.studies.notebook."""
    nb = nbformat.read(notebook_dir() / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert code[0].metadata.get("tags") == ["parameters"]
    names = [line.split("=")[0].strip() for line in code[0].source.splitlines() if line and not line.startswith("#")]
    assert names == PARAMETERS + OWN_PARAMETERS.get(name, [])
    setup = " ".join(code[1].source.split())
    assert setup.startswith("from nxmlab.study import ") and SETUP in setup.replace("( ", "(")
    assert all("import" not in c.source for c in code[2:])


@pytest.fixture(scope="module")
def smoke(smoke_store):
    root, params = smoke_store
    with venv_kernel() as kernel:
        yield root, params, kernel


def _outputs(nb) -> str:
    text = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            text.append(out.get("text", "") or out.get("data", {}).get("text/plain", ""))
    return "\n".join(text)


@pytest.mark.parametrize("name", NOTEBOOKS)  # in order: glue_table trains, the others reuse
def test_notebook_runs_and_writes_its_figures(smoke, name):
    root, params, kernel = smoke
    path = execute_notebook(name, root / "executed", params, kernel, progress_bar=False, cwd=root)
    assert path == root / "executed" / f"{name}.ipynb"
    assert not list((root / "executed").glob(f".{name}*")) and not (root / "executed" / f"{name}.failed.ipynb").exists()
    nb = nbformat.read(path, as_version=4)
    text = _outputs(nb)
    assert f"kernel: {sys.executable}" in text  # the venv's interpreter ran it
    assert "Traceback" not in text
    figures = Path(params["figures_dir"])
    for figure in FIGURES[name]:
        for ext in ("png", "pdf"):
            assert (figures / f"{figure}.{ext}").stat().st_size > 0, f"{figure}.{ext}"
    if name == "glue_table":
        assert "| dense |" in (figures / "glue_table.md").read_text()
        assert (figures / "glue_table.csv").read_text().startswith("label,task,mean,std,n")
        assert "ADMM beats one-shot magnitude pruning" in text and "points" in text
        assert "admm - magnitude (average of rte,stsb)" in text and "95 % CI" in text
        assert (figures / "paired_differences.csv").read_text().startswith("comparison,a,b,task,tasks,seeds")
    else:  # only the sweep's 8:2 runs, the rho sweep's two extra runs and the convergence variant are new
        assert text.count(": training ...") == {"dense_tuning": 2, "nm_sweep": 2, "rho_analysis": 2,
                                                 "convergence": 1, "protocol": 6}.get(name, 0)
    if name == "nm_sweep":  # 4:2 reused from the table, 8:2 trained; unstructured once per density
        assert "magnitude" in text and "unstructured" in text and "8:2" in text
        diffs = (figures / "nm_differences.md").read_text()  # each pattern against unstructured at its density
        assert "| magnitude 4:2 - unstructured 50% | rte |" in diffs and "| magnitude 8:2 - unstructured 25% | rte |" in diffs
    if name == "dense_tuning":  # two grid points, one seed: the better one is chosen, and the table's lr differs
        table = (figures / "dense_tuning.md").read_text()
        assert table.count("| rte |") == 2 and table.count("| yes |") == 1
        assert "selected on validation" in text and "the preset's runs use lr 0.001  <- differs" in text
    if name == "convergence":
        assert "chosen:" in text
    if name == "protocol":  # the selection grid on the held-out split, then the prune table and the movement
        assert "Rule: per task and label" in text and "The preset's recorded choice is the rule's:" in text
        assert (figures / "protocol_prune.csv").read_text().startswith("task,label,seed,score")
    if name == "rho_analysis":
        assert "'too small rho loses accuracy at the prune'" in text
    if name == "mask_distance":
        assert "skipped: the preset has 1 seed(s)" in text
        assert not (figures / "mask_distance_seeds.png").exists()
        movement = (figures / "mask_movement.csv").read_text()  # issue #29: every sparse method against ASP
        assert movement.startswith("task,label,reference,distance_pct,gain,seeds") and "unstructured" in movement


@pytest.mark.parametrize("name", ["sparsity_dynamics", "mask_distance"])
def test_notebooks_refuse_an_empty_results_store(smoke, tmp_path, name):
    """train=False on a store without runs (issue #31): the notebook stops with a one-line error
    naming the folder and where the repository's results are; nothing is written to results."""
    import papermill

    _, params, kernel = smoke
    params = {**params, "results_dir": str(tmp_path / "results"), "figures_dir": str(tmp_path / "figures"),
              "train": False}
    with pytest.raises(papermill.exceptions.PapermillExecutionError, match="nothing to show: results folder"):
        execute_notebook(name, tmp_path / "executed", params, kernel, progress_bar=False)
    assert not (tmp_path / "results").exists()


def test_a_failing_notebook_leaves_no_complete_looking_file(smoke):
    root, params, kernel = smoke
    out = root / "failing"
    out.mkdir()
    (out / "glue_table.ipynb").write_text("{}")  # a stale copy from an earlier success
    with pytest.raises(Exception, match="unknown preset"):
        execute_notebook("glue_table", out, {**params, "preset": "nope"}, kernel, progress_bar=False)
    assert sorted(p.name for p in out.iterdir()) == ["glue_table.failed.ipynb"]


def test_reproduce_reuses_finished_runs(smoke):
    root, params, _ = smoke
    results = Path(params["results_dir"])
    stamps = {p: p.stat().st_mtime_ns for p in results.rglob("metrics.json")}
    # 14 of the table and rho studies, 2 of the dense grid, 2 of the n:m sweep, 1 convergence variant,
    # 6 of the selection study (the protocol notebook), and what other tests of the session added
    assert len(stamps) >= 25
    lines = []
    done = reproduce("smoke", results, root / "figures2", params["glue_dir"], notebooks="glue_table",
                     output_root=root / "nb", progress_bar=False, echo=lines.append)
    assert done == [root / "nb" / "smoke" / "glue_table.ipynb"]
    assert "total: nothing to train, every run is finished" in "\n".join(lines)
    assert {p: p.stat().st_mtime_ns for p in results.rglob("metrics.json")} == stamps
    assert (root / "figures2" / "glue_table.png").exists()


def test_seeds_are_replicates_in_the_table_dynamics_and_mask_notebooks(smoke, tmp_path):
    """The notebooks the powered study draws (issue #14) on two seeds: means over seeds, paired
    intervals pooling both seeds, and the seed comparison of the masks."""
    root, params, kernel = smoke
    store = tmp_path / "store"
    store.mkdir()
    for name in ("results", ".nxmlab-cache"):  # seed 42 is reused, seed 43 is trained
        if (root / name).exists():
            shutil.copytree(root / name, store / name)
    params = {**params, "results_dir": str(store / "results"), "figures_dir": str(tmp_path / "figures"),
              "tasks": ["rte"], "seeds": [42, 43], "methods": ["dense", "magnitude", "admm"]}
    texts = {}
    for name in ("glue_table", "sparsity_dynamics", "mask_distance"):
        path = execute_notebook(name, tmp_path / "executed", params, kernel, progress_bar=False)
        texts[name] = _outputs(nbformat.read(path, as_version=4))
        assert "Traceback" not in texts[name]
    figures = tmp_path / "figures"
    table = pd.read_csv(figures / "glue_table.csv")
    assert set(table["n"]) == {2}  # every cell is a mean over the two seeds
    paired = pd.read_csv(figures / "paired_differences.csv")
    row = paired[(paired["comparison"] == "admm - magnitude") & (paired["task"] == "rte")].iloc[0]
    assert row["n_seeds"] == 2 and str(row["seeds"]) in ("42,43", "42, 43")
    assert (figures / "mask_distance_seeds.png").stat().st_size > 0
    assert "skipped: the preset has" not in texts["mask_distance"]
    for figure in FIGURES["sparsity_dynamics"]:
        assert (figures / f"{figure}.png").stat().st_size > 0
