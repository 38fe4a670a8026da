"""nxmlab.study.plots and nxmlab.study.plots.masks: on a small real store (the smoke preset,
with its cache deleted: figures only read committed files) and on synthetic frames."""

from __future__ import annotations

import inspect
import math
import shutil
import time
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from nxmlab.study import plots  # noqa: E402
from nxmlab.study.plots import masks as maskplots  # noqa: E402
from nxmlab.study.results import frames  # noqa: E402
from nxmlab.study.train.methods import parse_label  # noqa: E402

Q0 = "bert.encoder.layer.0.attention.self.query"
F1 = "bert.encoder.layer.1.intermediate.dense"


def m(*bits) -> torch.Tensor:
    return torch.tensor(bits, dtype=torch.bool)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ------------------------------------------------------------------------ the real store
@pytest.fixture(scope="module")
def store(tmp_path_factory, glue_dir, smoke_store):
    """The smoke preset's table, rho and dynamics studies: ``(scores, table, sweep)``.

    The committed files of the notebook tests' smoke runs are copied when they exist (the
    runs are the same), the rest is trained; the cache (weights, full masks, raw dynamics)
    is deleted afterwards, so every figure drawn from this store is drawn from committed
    files only.
    """
    from nxmlab.study.studies.notebook import run_study
    from nxmlab.study.studies.presets import get_preset
    from nxmlab.study.results.store import cache_root

    results = tmp_path_factory.mktemp("plots") / "results"
    shared = smoke_store[0] / "results"
    if shared.is_dir():
        shutil.copytree(shared, results)
    preset = get_preset("smoke")
    scores = run_study(preset, ["table", "rho", "dynamics"], results, str(glue_dir), train=True, log=None)
    shutil.rmtree(cache_root(results), ignore_errors=True)
    table = run_study(preset, "table", results, str(glue_dir), train=False, log=None)
    sweep = run_study(preset, "rho", results, str(glue_dir), train=False, log=None)
    assert len(scores) == 14 and len(table) == 12 and len(sweep) == 3
    return scores, table, sweep


@pytest.mark.slow
def test_write_glue_table_numbers_are_seed_summary(store, tmp_path):
    _, table, _ = store
    md, csv = plots.write_glue_table(table, tmp_path, ["rte", "stsb"], title="smoke")
    summary = frames.seed_summary(table, ["rte", "stsb"])
    written = pd.read_csv(csv)
    assert list(written.columns) == ["label", "task", "mean", "std", "n"]
    pd.testing.assert_frame_equal(written[["label", "task", "n"]], summary[["label", "task", "n"]].astype(
        {"label": object, "task": object}), check_dtype=False)
    assert np.allclose(written["mean"], summary["mean"], atol=1e-4)
    text = md.read_text()
    assert text.startswith("# GLUE table: smoke")
    for row in summary.itertuples():
        assert f"{row.mean:.1f}" in text
    assert "| dense |" in text and "Paper claims (point estimates)" in text and "paired_differences.md" in text and "admm − magnitude" in text


@pytest.mark.slow
def test_every_figure_of_the_real_store(store, tmp_path):
    scores, table, sweep = store
    dyn = frames.load_dynamics(table)
    distances = frames.load_mask_distances(table)
    samples, sweep_samples = maskplots.mask_samples(table), maskplots.mask_samples(sweep)
    rho_df = plots.rho_frame(sweep)
    assert len(rho_df) == 3 and set(rho_df["label"]) == {"admm"}
    assert "rho" in plots.prune_drop_claim(rho_df)["message"]
    figures = {
        "glue_table": plots.plot_glue_bars(table, ["rte", "stsb"]),
        "rho_score": plots.plot_rho_scores(rho_df),
        "rho_prune_stages": plots.plot_prune_stages(rho_df),
        "rho_primal": plots.plot_primal_trajectories(plots.primal_trajectories(frames.load_dynamics(sweep))),
        "dynamics_rel_dist": plots.plot_rel_dist(dyn),
        "dynamics_layer_heatmap": plots.plot_layer_heatmap(dyn),
        "dynamics_flips": plots.plot_flips(dyn, distances),
        "weight_magnitudes": plots.plot_magnitudes(plots.load_magnitudes(table)),
        "mask_distance_layers": maskplots.plot_layer_distances(distances, "4:2"),
        "mask_distance_methods": maskplots.plot_matrices(maskplots.method_distances(samples, "rte", 42), "mask"),
        "mask_distance_tasks": maskplots.plot_matrices(maskplots.task_distances(samples), "GLUE task"),
        "mask_distance_rho": maskplots.plot_rho_distances(maskplots.rho_distances(sweep_samples, samples), "4:2"),
        "mask_distance_rho_rte": maskplots.plot_matrices(maskplots.rho_mask_distances(sweep_samples, "rte"), "ρ"),
    }
    for name, fig in figures.items():
        assert isinstance(fig, Figure), name
        notes = [t.get_text() for ax in fig.axes for t in ax.texts if t.get_text().startswith("no ")]
        assert not notes, (name, notes)  # every panel has data
        paths = plots.savefig(fig, name, tmp_path)
        assert all(p.stat().st_size > 0 for p in paths)
    # the dynamics figures show the ADMM runs only: the labels that record dynamics
    assert set(dyn["label"]) == {lb for lb in table["label"] if parse_label(lb)[0].records_dynamics}
    titles = [ax.get_title() for ax in figures["dynamics_flips"].axes]
    assert "rte admm: flips per update" in titles
    assert figures["dynamics_flips"].axes[0].get_ylabel() == "flips (% of kept positions that changed)"
    assert "1/64 sample" in figures["mask_distance_methods"].get_suptitle()
    assert "1/64 sample" in figures["mask_distance_rho"].axes[0].get_ylabel()


@pytest.mark.slow
def test_magnitudes_come_from_the_committed_sample(store):
    _, table, _ = store
    mags = plots.load_magnitudes(table)
    admm = {lb for lb in table["label"] if parse_label(lb)[0].records_dynamics}
    assert set(mags["label"]) == admm
    assert mags.groupby("run")["stage"].nunique().eq(4).all()
    final = mags[mags["stage"].str.startswith("end:")]
    assert set(final["position"]) == {"kept"}  # pruned weights of the final model are zero: left out
    fig = plots.plot_magnitudes(mags)
    assert fig.get_suptitle().startswith("stsb admm seed 42")  # the first run in label, then GLUE task order
    assert len(fig.axes) == 4


@pytest.mark.slow
def test_sampled_mask_distances_on_the_real_store(store):
    _, table, sweep = store
    samples = maskplots.mask_samples(table)
    sparse = {lb for lb in table["label"] if parse_label(lb)[0].sparse}
    assert {f"{lb} final" for lb in sparse} <= set(samples["mask"])
    assert {"pretrained magnitude", "dense magnitude"} <= set(samples["mask"])
    for masks in samples["masks"]:
        assert maskplots.sampled_distance(masks, masks) == 0.0
    pairs = maskplots.method_distances(samples, "rte", 42)
    assert pairs["distance"].between(0, 1).all()
    grid = maskplots.as_matrix(pairs)
    assert np.allclose(grid.to_numpy(), grid.to_numpy().T) and np.all(np.diag(grid.to_numpy()) == 0)
    # the magnitude methods' final mask is the dense magnitude mask (ASP)
    assert grid.loc["magnitude final", "dense magnitude"] == 0.0
    assert maskplots.seed_distances(samples).empty  # one seed
    tasks = maskplots.task_distances(samples)
    assert set(tasks["a"]) == {"rte", "stsb"} and tasks["distance"].between(0, 1).all()
    sweep_samples = maskplots.mask_samples(sweep)
    rho = maskplots.rho_distances(sweep_samples, samples)
    assert sorted(set(rho["rho"])) == [1e-4, 1e-3, 1e-2]
    assert set(rho["reference"]) == {"pretrained magnitude", "dense magnitude"}  # dense one from the table runs
    assert rho["distance"].between(0, 1).all()
    rho_grid = maskplots.as_matrix(maskplots.rho_mask_distances(sweep_samples, "rte"))
    assert list(rho_grid.index) == ["0.0001", "0.001", "0.01"] and np.all(np.diag(rho_grid.to_numpy()) == 0)
    # exact distances within a run agree with metrics.json
    summary = maskplots.distance_summary(frames.load_mask_distances(table)).set_index(["label", "reference"])
    assert summary.loc[("magnitude", "dense_magnitude"), "distance"] == 0.0
    assert summary["distance"].between(0, 1).all() and (summary["runs"] == 2).all()


# ------------------------------------------------------------------------- empty inputs
def test_every_figure_on_empty_inputs(tmp_path):
    empty = frames.load_scores(tmp_path / "no-results")
    assert empty.empty and not (tmp_path / "no-results").exists()
    dyn = frames.load_dynamics(empty)
    distances = frames.load_mask_distances(empty)
    samples = maskplots.mask_samples(empty)
    rho_df = plots.rho_frame(empty)
    assert plots.prune_drop_claim(rho_df)["holds"] is None
    figures = [
        plots.plot_glue_bars(empty), plots.plot_rho_scores(rho_df), plots.plot_prune_stages(rho_df),
        plots.plot_primal_trajectories(plots.primal_trajectories(dyn)), plots.plot_rel_dist(dyn),
        plots.plot_layer_heatmap(dyn), plots.plot_flips(dyn, distances), plots.plot_flips(dyn),
        plots.plot_magnitudes(plots.load_magnitudes(empty)), maskplots.plot_layer_distances(distances, "4:2"),
        maskplots.plot_matrices(maskplots.method_distances(samples), "mask", pattern="4:2"),
        maskplots.plot_matrices(maskplots.task_distances(samples), "task"),
        maskplots.plot_matrices(maskplots.rho_mask_distances(samples, "rte"), "ρ"),
        maskplots.plot_seed_distances(maskplots.seed_distances(samples), "4:2"),
        maskplots.plot_rho_distances(maskplots.rho_distances(samples), "4:2"),
    ]
    for fig in figures:
        assert isinstance(fig, Figure)
        assert [t.get_text() for ax in fig.axes for t in ax.texts]  # a note says why it is empty
    assert maskplots.distance_summary(distances).empty and maskplots.as_matrix(maskplots.task_distances(samples)).empty
    written = plots.write_glue_table(empty, tmp_path / "figs")
    assert "_not available_" in written[0].read_text()


def test_savefig_is_byte_deterministic(tmp_path):
    plots.set_style()
    fig, ax = plt.subplots()
    ax.plot([0, 1, 2], [1, 3, 2], label="x")
    ax.legend()
    paths = plots.savefig(fig, "bars", tmp_path / "figs")
    assert [p.name for p in paths] == ["bars.png", "bars.pdf"] and all(p.stat().st_size > 0 for p in paths)
    first = [p.read_bytes() for p in paths]
    time.sleep(1.1)  # a PDF creation date would now differ
    again = plots.savefig(fig, "bars", tmp_path / "figs")
    assert [p.read_bytes() for p in again] == first  # redrawn figures do not show up as changed
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["bars.pdf", "bars.png"]  # no temporaries


def test_no_plot_branches_on_a_method_name():
    for module in (plots, maskplots):
        source = inspect.getsource(module)
        for needle in ("method ==", "method in (", "method !=", '"admm', "'admm", '== "magnitude'):
            assert needle not in source, (module.__name__, needle)


# ------------------------------------------------------------------------ synthetic data
def _scores(rows) -> pd.DataFrame:
    base = {"kd": False, "model": "tiny", "pattern": "4:2", "rho": None, "seed": 42, "before_prune": None,
            "after_prune": None, "seconds": 1.0, "sparsity": 0.5}
    df = pd.DataFrame([{**base, **r} for r in rows])
    df["label"] = df["method"] + np.where(df["kd"], "+kd", "")
    df["run"] = df["task"] + "/" + df["label"] + "-" + df["seed"].astype(str)
    return df


@pytest.fixture
def table_scores():
    rows = []
    scores = {"dense": (80, 70), "magnitude": (70, 60), "admm": (74, 63), "admm+kd": (75, 62)}
    for label, (rte, stsb) in scores.items():
        method, kd = label.split("+")[0], label.endswith("+kd")
        for seed, shift in ((42, 0.0), (43, 2.0)):
            rows.append({"task": "rte", "method": method, "kd": kd, "seed": seed, "score": rte + shift})
            rows.append({"task": "stsb", "method": method, "kd": kd, "seed": seed, "score": stsb + shift})
    return _scores(rows)


def test_write_glue_table_on_synthetic_scores(tmp_path, table_scores):
    md, csv = plots.write_glue_table(table_scores, tmp_path, ["rte", "stsb"], title="t")
    text = md.read_text()
    assert "| dense | 81.0 ± 1.4 | 71.0 ± 1.4 | 76.0 ± 1.4 |" in text
    assert "| magnitude | -10.0 | -10.0 | -10.0 |" in text  # gap to dense
    df = pd.read_csv(csv)
    assert df[(df.label == "admm") & (df.task == "avg")]["mean"].item() == pytest.approx(69.5)


def test_glue_bars_axes_and_gap_panel(table_scores):
    fig = plots.plot_glue_bars(table_scores, ["rte", "stsb"])
    score_ax, gap_ax = fig.axes[:2]
    assert "×100" in score_ax.get_ylabel() and score_ax.get_xlabel()
    assert [t.get_text() for t in score_ax.get_xticklabels()] == ["rte", "stsb", "avg"]
    heights = sorted(round(p.get_height(), 6) for p in gap_ax.patches)
    assert heights == sorted([-10.0] * 3 + [-6.0, -7.0, -6.5] + [-5.0, -8.0, -6.5])  # per-seed gaps, then averaged
    assert "dense" in gap_ax.get_ylabel()


def test_rho_frame_and_prune_drop_claim():
    rows = [{"task": "rte", "method": "admm", "rho": r, "score": f, "before_prune": b, "after_prune": a}
            for r, b, a, f in ((1e-4, 70, 50, 65), (1e-3, 70, 65, 68), (1e-2, 66, 65, 66))]
    rows.append({"task": "rte", "method": "dense", "score": 80.0})  # no rho: not part of the sweep
    rho_df = plots.rho_frame(_scores(rows))
    assert list(rho_df["prune_drop"]) == [20, 5, 1]
    assert list(rho_df["retrain_gain"]) == [15, 3, 1]
    claim = plots.prune_drop_claim(rho_df)
    assert claim["holds"] is True and claim["spearman"] == pytest.approx(-1.0)
    assert "HOLDS" in claim["message"]
    assert plots.prune_drop_claim(rho_df.iloc[:1])["holds"] is None


def _dyn(tasks_labels=(("rte", ("admm",)),), run_suffix="") -> pd.DataFrame:
    rows = []
    for task, labels in tasks_labels:
        for label in labels:
            for step, event in ((0, "init"), (1, "log"), (2, "update")):
                for target, component, layer, primal in ((Q0, "query", 0, 3.0), (F1, "ffn1", 1, 4.0)):
                    row = {"run": f"{task}/{label}{run_suffix}", "task": task, "label": label, "seed": 42,
                           "rho": 1e-3, "phase": "admm", "step": step, "event": event, "target": target,
                           "component": component, "layer": layer, "primal": primal + step,
                           "rel_dist": 0.3 - 0.1 * step, "flips": np.nan}
                    if event == "update":
                        row["flips"] = 2.0 if target == Q0 else 4.0
                    rows.append(row)
    return pd.DataFrame(rows)


def test_primal_trajectory_is_the_norm_over_targets():
    traj = plots.primal_trajectories(_dyn())
    assert list(traj["step"]) == [0, 1, 2]
    assert traj["primal_norm"].tolist() == pytest.approx([5.0, math.hypot(4, 5), math.hypot(5, 6)])


def test_flips_are_a_fraction_of_kept_positions_with_mask_distances():
    dyn = _dyn()
    distances = pd.DataFrame({"run": ["rte/admm"] * 4, "module": [Q0, F1, Q0, F1], "kept": [8, 32, 8, 32],
                              "reference": ["pretrained_magnitude"] * 2 + ["dense_magnitude"] * 2})
    ax = plots.plot_flips(dyn, distances).axes[0]
    values = sorted(float(y) for line in ax.lines for y in line.get_ydata())
    assert values == pytest.approx([100 * 4 / 32, 100 * 2 / 8])  # ffn1, query
    assert "kept positions" in ax.get_ylabel()
    assert "positions" in plots.plot_flips(dyn).axes[0].get_ylabel()  # without sizes: counts


def test_dynamics_plots_grid_tasks_by_labels_and_mark_missing_facets():
    dyn = _dyn((("rte", ("admm", "admm+kd")), ("mrpc", ("admm",))))  # no admm+kd on mrpc
    for plot in (plots.plot_rel_dist, plots.plot_layer_heatmap, plots.plot_flips):
        fig = plot(dyn)
        titles = [ax.get_title() for ax in fig.axes]
        assert any(t.startswith("mrpc admm:") for t in titles) and any(t.startswith("rte admm+kd:") for t in titles)
        assert not any(t.startswith("mrpc admm+kd") for t in titles)
        notes = [text.get_text() for ax in fig.axes for text in ax.texts]
        assert "no admm+kd run on mrpc" in notes


def test_dynamics_plots_treat_seeds_as_replicates():
    """Two seeds: the line is their mean and a ±1 std band is drawn; one seed: no band."""
    one = _dyn()
    other = one.assign(seed=43, run="rte/admm-43", rel_dist=one["rel_dist"] + 0.1, flips=one["flips"] * 3)
    two = pd.concat([one, other], ignore_index=True)
    def band_height(ax) -> float:
        spans = [np.ptp(path.vertices[:, 1]) for c in ax.collections for path in c.get_paths()
                 if len(path.vertices) and np.isfinite(path.vertices[:, 1]).all()]
        return max(spans, default=0.0)

    for plot in (plots.plot_rel_dist, plots.plot_flips):
        ax = plot(two).axes[0]
        assert band_height(ax) > 0 and ax.get_title().endswith("2 seeds (±1 std)")
        assert band_height(plot(one).axes[0]) == 0 and "seeds" not in plot(one).axes[0].get_title()
    ax = plots.plot_rel_dist(two).axes[0]
    for line in ax.lines:
        if len(line.get_ydata()) == 3:
            assert list(line.get_ydata()) == pytest.approx([0.35, 0.25, 0.15])  # mean of the two seeds
    flips = plots.plot_flips(two).axes[0]
    values = sorted(float(y) for line in flips.lines for y in line.get_ydata())
    assert values == pytest.approx([4.0, 8.0])  # query (2, 6) and ffn1 (4, 12): mean over seeds


def _samples(rows) -> pd.DataFrame:
    """A synthetic :func:`maskplots.mask_samples` frame: (task, label, seed, rho, set, masks)."""
    out = []
    for task, label, seed, rho, set_name, masks in rows:
        out.append({"run": f"{task}/{label}-{seed}-{rho}", "task": task, "label": label, "seed": seed, "rho": rho,
                    "set": set_name, "mask": maskplots._mask_name(set_name, label), "masks": masks})
    return pd.DataFrame(out, columns=maskplots.SAMPLE_COLUMNS)


def test_distance_summary_pools_runs_and_gives_their_spread():
    rows = [{"run": run, "label": "admm", "reference": "pretrained_magnitude", "module": mod, "component": "query",
             "layer": layer, "kept": 10, "differ": differ, "distance": differ / 10}
            for run, cells in (("a", ((0, 1), (1, 1))), ("b", ((0, 3), (1, 3))))
            for (layer, differ), mod in zip(cells, ("l0", "l1"), strict=True)]
    summary = maskplots.distance_summary(pd.DataFrame(rows)).iloc[0]
    assert summary["runs"] == 2 and summary["distance"] == pytest.approx(0.2)  # 8 of 40 kept
    assert summary["std_runs"] == pytest.approx(math.sqrt(0.02))  # runs at 0.1 and 0.3
    assert math.isnan(maskplots.distance_summary(pd.DataFrame(rows[:2])).iloc[0]["std_runs"])


def test_sampled_distance_is_pooled_over_targets():
    a = {Q0: m(1, 1, 0, 0), F1: m(1, 0, 1, 0, 0, 1, 0, 1), "only.in.a": m(1)}
    b = {Q0: m(1, 0, 1, 0), F1: m(1, 0, 1, 0, 0, 1, 0, 1)}
    assert maskplots.sampled_distance(a, b) == pytest.approx(2 / 12)  # 2 differing of (2+2) + (4+4) kept
    assert maskplots.sampled_distance(a, a) == 0.0
    assert math.isnan(maskplots.sampled_distance({"x": m(1)}, {"y": m(1)}))
    assert maskplots.random_mask_distance("4:2") == 0.5 and maskplots.random_mask_distance("4:1") == 0.75


def test_cross_run_comparisons_on_synthetic_samples():
    pre, dense = {Q0: m(1, 1, 0, 0)}, {Q0: m(1, 0, 1, 0)}
    rows = []
    for task, seed, final in (("rte", 42, m(0, 0, 1, 1)), ("rte", 43, m(0, 1, 1, 0)), ("stsb", 42, m(1, 1, 0, 0))):
        rows += [(task, "admm", seed, 1e-3, "pretrained_magnitude", pre),
                 (task, "admm", seed, 1e-3, "final", {Q0: final}),
                 (task, "magnitude", seed, None, "pretrained_magnitude", pre),
                 (task, "magnitude", seed, None, "dense_magnitude", dense),
                 (task, "magnitude", seed, None, "final", dense)]
    rows.append(("rte", "admm", 42, 1e-2, "final", {Q0: m(1, 1, 0, 0)}))
    samples = _samples(rows)
    table = samples[samples["rho"].fillna(1e-3) == 1e-3]

    grid = maskplots.as_matrix(maskplots.method_distances(table, "rte", 42))
    assert list(grid.index) == ["pretrained magnitude", "dense magnitude", "magnitude final", "admm final"]
    assert grid.loc["admm final", "pretrained magnitude"] == 1.0 and grid.loc["magnitude final", "dense magnitude"] == 0
    pooled = maskplots.method_distances(table, "rte")  # seeds as replicates: the mean over 42 and 43
    assert set(pooled["group"]) == {"rte, mean over seeds 42, 43"}
    assert maskplots.as_matrix(pooled).loc["admm final", "pretrained magnitude"] == 0.75  # 1.0 and 0.5
    seeds = maskplots.seed_distances(table)
    assert seeds.set_index(["task", "mask"]).loc[("rte", "admm final"), "distance"] == 0.5  # 0011 vs 0110
    tasks = maskplots.task_distances(table)
    admm = maskplots.as_matrix(tasks, "admm final")
    assert list(admm.index) == ["stsb", "rte"] and admm.loc["rte", "stsb"] == 1.0  # GLUE order; seed 42 only
    sweep = samples[(samples["label"] == "admm") & (samples["task"] == "rte") & (samples["seed"] == 42)]
    rho = maskplots.rho_distances(sweep, table).set_index(["rho", "reference"])["distance"]
    assert rho[(1e-2, "pretrained magnitude")] == 0.0 and rho[(1e-3, "pretrained magnitude")] == 1.0
    assert rho[(1e-2, "dense magnitude")] == 0.5  # the reference comes from another run of the task and seed
    rho_grid = maskplots.as_matrix(maskplots.rho_mask_distances(sweep, "rte"))
    assert list(rho_grid.index) == ["0.001", "0.01"] and rho_grid.iloc[0, 1] == 1.0
    single = _samples([("rte", "admm", 42, 1e-3, "final", {Q0: m(1, 1, 0, 0)})])
    assert maskplots.seed_distances(single).empty and maskplots.task_distances(single).empty
    assert maskplots.rho_mask_distances(single, "rte").empty


def test_density_frame_and_figure_of_the_pattern_sweep():
    import pandas as pd

    from nxmlab.study.plots.sweeps import density_frame, plot_density

    scores = pd.DataFrame({
        "task": ["mrpc"] * 5, "label": ["magnitude", "magnitude", "magnitude", "admm", "dense"],
        "pattern": ["4:2", "4:2", "8:2", "4:2", None], "seed": [42, 43, 42, 42, 42],
        "score": [70.0, 72.0, 60.0, 69.0, 80.0]})
    frame = density_frame(scores)
    assert list(frame.columns) == ["task", "label", "pattern", "density", "mean", "std", "n"]
    row = frame[(frame["label"] == "magnitude") & (frame["pattern"] == "4:2")].iloc[0]
    assert (row["density"], row["mean"], row["n"]) == (0.5, 71.0, 2)
    assert frame[frame["pattern"] == "8:2"]["density"].item() == 0.25
    assert "dense" not in set(frame["label"])
    fig = plot_density(frame, scores[scores["label"] == "dense"])
    assert len(fig.axes) == 1
    assert plot_density(density_frame(scores.iloc[0:0])) is not None  # empty: a note, no error


def test_pattern_comparisons_pair_longer_groups_and_the_unstructured_reference(tmp_path):
    import pandas as pd

    from nxmlab.study.plots.stats import write_differences
    from nxmlab.study.plots.sweeps import pattern_comparisons

    scores = pd.DataFrame({
        "task": ["mrpc"] * 7,
        "label": ["magnitude", "magnitude", "magnitude", "admm", "unstructured", "unstructured", "dense"],
        "pattern": ["4:2", "8:4", "4:1", "4:2", "4:2", "4:1", None], "seed": [42] * 7,
        "run": [f"mrpc/r{i}" for i in range(7)], "score": [70.0, 71.0, 60.0, 69.0, 72.0, 61.0, 80.0]})
    runs, comps = pattern_comparisons(scores)
    assert "dense" not in set(runs["label"])
    assert list(runs["label"]) == ["magnitude 4:2", "magnitude 8:4", "magnitude 4:1", "admm 4:2",
                                   "unstructured 50%", "unstructured 25%"]
    assert list(runs["run"]) == [f"mrpc/r{i}" for i in range(6)]  # the runs themselves are unchanged
    names = [c.name for c in comps]
    # a longer group only against the shorter one of the same method and density ...
    assert names[0] == "magnitude 8:4 - magnitude 4:2"
    assert not any(n.startswith("admm 8:4") or "4:1 - magnitude" in n for n in names)
    # ... then every n:m run against the unstructured reference at its own density
    assert set(names[1:]) == {"magnitude 4:2 - unstructured 50%", "magnitude 8:4 - unstructured 50%",
                              "magnitude 4:1 - unstructured 25%", "admm 4:2 - unstructured 50%"}
    assert pattern_comparisons(scores.iloc[0:0])[1] == ()
    diffs = pd.DataFrame([["magnitude 8:4 - magnitude 4:2", "magnitude 8:4", "magnitude 4:2", "mrpc", "mrpc",
                           "42", 1, 1.0, -0.5, 2.5, "unresolved", 1.0, 1.0]],
                         columns=["comparison", "a", "b", "task", "tasks", "seeds", "n_seeds", "diff", "ci_low",
                                  "ci_high", "verdict", "seed_min", "seed_max"])
    written = write_differences(diffs, tmp_path, name="nm_differences")
    assert [p.name for p in written] == ["nm_differences.csv", "nm_differences.md"]
    assert "| magnitude 8:4 - magnitude 4:2 | mrpc | 1 | +1.00 | – | [-0.50, +2.50] | unresolved |" in written[1].read_text()


def test_forest_plot_draws_each_interval_and_the_seed_range_of_pooled_rows():
    import matplotlib.pyplot as plt

    from nxmlab.study.plots.stats import plot_forest

    cols = ["comparison", "a", "b", "task", "tasks", "seeds", "n_seeds", "diff", "ci_low", "ci_high", "verdict",
            "seed_min", "seed_max"]
    diffs = pd.DataFrame([
        ["admm - magnitude", "admm", "magnitude", "cola", "cola", "42,43,44", 3, -4.8, -8.8, -0.9, "contradicted",
         -5.9, -3.8],
        ["admm - magnitude", "admm", "magnitude", "rte", "rte", "42", 1, 2.5, -0.7, 6.1, "unresolved", 2.5, 2.5],
        ["admm - magnitude", "admm", "magnitude", "average", "cola,rte", "42", 1, -1.2, -3.0, 0.5, "unresolved",
         -1.7, -1.7]], columns=cols)
    fig = plot_forest(diffs)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["admm - magnitude | average (cola,rte), 1 seed(s)", "admm - magnitude | rte, 1 seed(s)",
                      "admm - magnitude | cola, 3 seed(s)"]  # first row on top
    ticks = [line for line in ax.lines if line.get_color() == "tab:red"]
    assert len(ticks) == 1 and list(ticks[0].get_xdata()) == [-5.9, -3.8]  # only the pooled row
    assert list(ticks[0].get_ydata()) == [2, 2]
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == ["smallest / largest single seed",
                                                                        "the paper's difference (BERT-base)"]
    stars = [line for line in ax.lines if line.get_color() == "tab:blue"]
    assert len(stars) == 1 and list(stars[0].get_xdata()) == [1.7] and list(stars[0].get_ydata()) == [0]
    lo, hi = ax.get_xlim()
    assert lo <= -8.8 and hi >= 6.1
    plt.close(fig)
    one_seed = plot_forest(diffs.iloc[1:2])
    assert one_seed.axes[0].get_legend() is None and not [ln for ln in one_seed.axes[0].lines
                                                          if ln.get_color() in ("tab:red", "tab:blue")]
    plt.close(one_seed)


def test_claims_table_answers_each_claim_on_its_average_row(tmp_path):
    from nxmlab.study.plots.stats import ANSWERS, claims_table, write_differences
    from nxmlab.study.results.stats import COMPARISONS

    cols = ["comparison", "a", "b", "task", "tasks", "seeds", "n_seeds", "diff", "ci_low", "ci_high", "verdict",
            "seed_min", "seed_max"]
    diffs = pd.DataFrame([
        ["admm - magnitude", "admm", "magnitude", "cola", "cola", "42,43,44", 3, -4.8, -8.8, -0.9, "contradicted",
         -5.9, -3.8],
        ["admm - magnitude", "admm", "magnitude", "average", "cola,mrpc", "42,43,44", 3, -3.0, -5.0, -0.9,
         "contradicted", -3.5, -2.1],
        ["KD gain: admm", "admm+kd", "admm", "average", "cola", "42", 1, 1.6, -1.9, 5.1, "unresolved", 1.6, 1.6],
        ["sr-ste - admm", "sr-ste", "admm", "average", "cola", "42", 1, -2.6, -5.9, 0.4, "unresolved", -2.6, -2.6]],
        columns=cols)
    claims = claims_table(diffs)
    assert list(claims["comparison"]) == ["admm - magnitude", "KD gain: admm"]  # sr-ste - admm: no claim
    assert list(claims["claim"]) == [c.claim for c in COMPARISONS if c.name in ("admm - magnitude", "KD gain: admm")]
    assert list(claims["answer"]) == [ANSWERS["contradicted"] + "; the paper's +1.70 is outside the interval; "
                                      "every single seed has the same sign", ANSWERS["unresolved"]]  # 1 seed: no sign
    wide = claims_table(diffs.assign(ci_high=3.0, verdict="unresolved"))  # an interval that holds the paper's +1.7
    assert wide["answer"].iloc[0].startswith(ANSWERS["unresolved"] + "; the paper's +1.70 is inside the interval")
    split = diffs.assign(seed_max=[-3.8, 0.4, 1.6, -2.6])  # the average's seeds now straddle 0
    assert claims_table(split)["answer"].iloc[0].endswith("outside the interval; the single seeds differ in sign")
    split_md = write_differences(split, tmp_path / "split")[1].read_text()
    assert "| [-5.00, -0.90] | contradicted; seeds differ in sign |" in split_md
    assert "| [-8.80, -0.90] | contradicted |" in split_md  # cola: -5.9 to -3.8, one sign
    assert claims.iloc[0][["diff", "ci_low", "ci_high", "seed_min"]].tolist() == [-3.0, -5.0, -0.9, -3.5]
    md = write_differences(diffs, tmp_path)[1].read_text()
    assert ("| ADMM beats one-shot magnitude pruning (ASP) | admm - magnitude | +1.70 | cola,mrpc | 3 | -3.00 | "
            "-3.50 to -2.10 | [-5.00, -0.90] | not supported: resolved the other way; the paper's +1.70 is outside "
            "the interval; every single seed has the same sign |") in md
    assert ("| KD is complementary to ADMM | KD gain: admm | – | cola | 1 | +1.60 | – | [-1.90, +5.10] | "
            "unresolved with this power |") in md
    assert claims_table(diffs[diffs.task != "average"]).empty
    assert "## The claims" not in write_differences(diffs[diffs.task != "average"], tmp_path)[1].read_text()


def _updates(asp_is_start: bool) -> pd.DataFrame:
    """Two Z/U updates of one ADMM run and its loss-free control (the control records no
    distance to ASP's mask, only to the start's)."""
    start = [0.10, 0.02]
    asp = start if asp_is_start else [0.30, 0.25]
    base = {"task": "cola", "label": "admm", "seed": 43, "run": "r"}
    return pd.DataFrame([
        {**base, "source": "training", "update": 1, "dist_asp": asp[0], "dist_start_magnitude": start[0], "flips": 0.1},
        {**base, "source": "training", "update": 2, "dist_asp": asp[1], "dist_start_magnitude": start[1], "flips": 0.05},
        {**base, "source": "loss-free", "update": 1, "dist_asp": np.nan, "dist_start_magnitude": 0.04, "flips": 0.02},
        {**base, "source": "loss-free", "update": 2, "dist_asp": np.nan, "dist_start_magnitude": 0.0, "flips": 0.0},
    ])


def test_update_movement_merges_asps_mask_and_the_start_mask_when_they_are_one():
    """The authors' protocol starts ADMM from the dense model ASP prunes: one panel for both
    masks, with the loss-free control drawn in it; from another start, both panels stay."""
    merged = plots.plot_update_movement(_updates(asp_is_start=True))
    axes = [ax for ax in merged.axes if ax.get_title()]
    assert [ax.get_title() for ax in axes] == ["cola: Z mask vs ASP's mask (= the start's magnitude mask)",
                                               "cola: flips at the update (fraction of positions)"]
    styles = sorted(line.get_linestyle() for line in axes[0].get_lines())
    assert styles == ["-", "--"]  # the training run and its loss-free control
    dashed = next(line for line in axes[0].get_lines() if line.get_linestyle() == "--")
    assert list(dashed.get_ydata()) == [0.04, 1e-6]  # the control's start distance, 0 drawn at 1e-6
    apart = plots.plot_update_movement(_updates(asp_is_start=False))
    assert [ax.get_title() for ax in apart.axes if ax.get_title()] == [
        "cola: Z mask vs ASP's mask", "cola: Z mask vs start magnitude mask",
        "cola: flips at the update (fraction of positions)"]


def test_the_answers_of_two_studies_side_by_side_from_their_written_csvs(tmp_path):
    """`answers_beside`: the protocol's task-average answers beside cpu's, both read back from
    the CSVs their glue_table notebooks wrote; only the comparisons the protocol measured,
    '–' where cpu did not measure one; each preset's `setting` heads its column."""
    from nxmlab.study.plots.stats import write_differences
    from nxmlab.study.studies import notebook
    from nxmlab.study.studies.presets import get_preset

    cols = ["comparison", "a", "b", "task", "tasks", "seeds", "n_seeds", "diff", "ci_low", "ci_high", "verdict",
            "seed_min", "seed_max", "interval"]
    cpu = pd.DataFrame([
        ["admm - magnitude", "admm", "magnitude", "cola", "cola", "42,43,44", 3, -4.8, -8.8, -0.9, "contradicted",
         -5.9, -3.8, "seeds+examples"],
        ["admm - magnitude", "admm", "magnitude", "average", "cola,mrpc,stsb", "42,43,44", 3, -1.59, -3.28, 0.09,
         "unresolved", -2.67, -0.08, "seeds+examples"],
        ["sparsegpt - magnitude", "sparsegpt", "magnitude", "average", "cola,mrpc,stsb", "42,43,44", 3, 3.07, 1.44,
         4.69, "supported", 1.54, 4.19, "seeds+examples"]], columns=cols)
    protocol = pd.DataFrame([
        ["nxmlab-admm - magnitude", "nxmlab-admm", "magnitude", "average", "cola", "43", 1, -0.98, -5.86, 3.79,
         "unresolved", -0.98, -0.98, "examples"],
        ["admm - magnitude", "admm", "magnitude", "average", "cola", "43", 1, -0.02, -6.32, 5.98, "unresolved",
         -0.02, -0.02, "examples"]], columns=cols)
    write_differences(cpu, tmp_path / "cpu")
    write_differences(protocol, tmp_path / "protocol")
    answers = notebook.answers_beside("protocol", "cpu", tmp_path / "protocol")
    assert list(zip(answers["comparison"], answers["study"], strict=True)) == [
        ("admm - magnitude", "cpu"), ("admm - magnitude", "protocol"), ("nxmlab-admm - magnitude", "protocol")]
    md = (tmp_path / "protocol" / "answers_side_by_side.md").read_text()
    assert ("| admm - magnitude | +1.70 | -1.59 [-3.28, +0.09] unresolved; seeds -2.67 to -0.08 (3 seeds: "
            "cola,mrpc,stsb) | -0.02 [-6.32, +5.98] unresolved; one seed: examples only (1 seed: cola) |") in md
    assert "| nxmlab-admm - magnitude | – | – | -0.98 [-5.86, +3.79] unresolved; one seed: examples only" in md
    assert "sparsegpt" not in md  # the protocol did not measure it
    assert f"- `cpu`: {get_preset('cpu').setting}" in md and f"- `protocol`: {get_preset('protocol').setting}" in md
    assert md.index("| comparison | paper (BERT-base) | `cpu` | `protocol` |") > 0
    assert (tmp_path / "protocol" / "answers_side_by_side.csv").is_file()
    # nothing beside, or a study whose answers are not drawn yet: nothing written, a line says why
    for other in (None, "quick"):
        (tmp_path / "protocol" / "answers_side_by_side.md").unlink(missing_ok=True)
        assert notebook.answers_beside("protocol", other, tmp_path / "protocol") is None
        assert not (tmp_path / "protocol" / "answers_side_by_side.md").exists()
    # a figures folder of its own (e.g. `reproduce --tasks cola --figures-dir runs/protocol-cola`): cpu's
    # answers come from the repository's committed figures/cpu/
    write_differences(protocol, tmp_path / "runs" / "protocol-cola")
    answers = notebook.answers_beside("protocol", "cpu", tmp_path / "runs" / "protocol-cola")
    committed = pd.read_csv(Path(__file__).resolve().parents[1] / "figures" / "cpu" / "paired_differences.csv")
    row = committed[(committed["comparison"] == "admm - magnitude") & (committed["task"] == "average")].iloc[0]
    cpu_row = answers[(answers["study"] == "cpu") & (answers["comparison"] == "admm - magnitude")].iloc[0]
    assert cpu_row["diff"] == pytest.approx(row["diff"]) and cpu_row["tasks"] == row["tasks"]
