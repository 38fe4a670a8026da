"""nxmlab.analysis on synthetic data: mask distances, dynamics loading, summaries and claims, plots."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from nxmlab import analysis
from nxmlab.nxm import nxm_mask
from nxmlab.store import save_masks

Q0 = "bert.encoder.layer.0.attention.self.query"
F1 = "bert.encoder.layer.1.intermediate.dense"


def m(*bits) -> torch.Tensor:
    return torch.tensor(bits, dtype=torch.bool)


# ----------------------------------------------------------------------------- mask distance
def test_mask_distance_hand_computed():
    a = m(1, 1, 0, 0)
    assert analysis.mask_distance(a, a) == 0.0
    assert analysis.mask_distance(a, m(0, 0, 1, 1)) == 1.0
    assert analysis.mask_distance(a, m(1, 0, 1, 0)) == 0.5  # 1 of 2 kept positions differs
    # equal density: |A & ~B| / |A|
    a8, b8 = m(1, 1, 0, 0, 1, 0, 1, 0), m(1, 0, 1, 0, 1, 0, 1, 0)
    assert analysis.mask_distance(a8, b8) == pytest.approx(1 / 4)
    # unequal density: |A xor B| / (|A| + |B|) = 2 / 4
    assert analysis.mask_distance(m(1, 1, 1, 0), m(1, 0, 0, 0)) == 0.5
    assert analysis.mask_distance(m(0, 0), m(0, 0)) == 0.0
    with pytest.raises(ValueError, match="shape"):
        analysis.mask_distance(m(1, 0), m(1, 0, 0, 1))


def test_mask_distance_table_and_weighted_overall():
    a = {Q0: m(1, 1, 0, 0), F1: m(1, 0, 1, 0, 0, 1, 0, 1), "only.in.a": m(1)}
    b = {Q0: m(1, 0, 1, 0), F1: m(1, 0, 1, 0, 0, 1, 0, 1)}
    table = analysis.mask_distance_table(a, b)
    assert list(table["module"]) == [Q0, F1]
    assert list(table["component"]) == ["query", "ffn1"] and list(table["layer"]) == [0, 1]
    assert list(table["distance"]) == [0.5, 0.0]
    # weighted by kept positions: 2 differing of (2+2) + (4+4) kept
    assert analysis.overall_distance(a, b) == pytest.approx(2 / 12)
    assert math.isnan(analysis.overall_distance({"x": m(1)}, {"y": m(1)}))


def test_random_nxm_masks_sit_at_the_expected_distance():
    assert analysis.random_mask_distance("4:2") == 0.5
    assert analysis.random_mask_distance("4:1") == 0.75
    g = torch.Generator().manual_seed(0)
    a = nxm_mask(torch.randn(256, 256, generator=g), "4:2")
    b = nxm_mask(torch.randn(256, 256, generator=g), "4:2")
    assert analysis.mask_distance(a, b) == pytest.approx(0.5, abs=0.01)


def test_pairwise_distances_is_symmetric_with_zero_diagonal():
    sets = {"x": {Q0: m(1, 1, 0, 0)}, "y": {Q0: m(1, 0, 1, 0)}, "z": {Q0: m(0, 0, 1, 1)}}
    grid = analysis.pairwise_distances(sets)
    assert list(grid.index) == ["x", "y", "z"]
    assert np.allclose(grid.to_numpy(), grid.to_numpy().T)
    assert np.all(np.diag(grid.to_numpy()) == 0)
    assert grid.loc["x", "z"] == 1.0 and grid.loc["x", "y"] == 0.5


# ------------------------------------------------------------------------------- dynamics
def _write_jsonl(path: Path, rows, torn: bool = False) -> None:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    path.write_text(text + ('{"phase": "admm", "st' if torn else ""))


def _dyn_rows():
    rows = []
    for step, event in ((0, "init"), (1, "log"), (2, "update")):
        for target, primal in ((Q0, 3.0), (F1, 4.0)):
            row = {"phase": "admm", "step": step, "epoch": step / 2, "event": event, "target": target,
                   "rho": 1e-3, "primal": primal + step, "rel_dist": 0.3 - 0.1 * step, "near_zero": 0.0,
                   "penalty": 0.1}
            if event == "update":
                row.update(dual=0.01, flips=2 if target == Q0 else 4, rho_used=1e-3)
            rows.append(row)
    return rows


def test_load_dynamics_fills_columns_and_drops_a_torn_line(tmp_path):
    _write_jsonl(tmp_path / "dynamics.jsonl", _dyn_rows(), torn=True)
    df = analysis.load_dynamics(tmp_path)  # a run folder or the file itself
    assert list(df.columns[: len(analysis.DYNAMICS_COLUMNS)]) == list(analysis.DYNAMICS_COLUMNS)
    assert len(df) == 6
    assert set(df["component"]) == {"query", "ffn1"} and set(df["layer"]) == {0, 1}  # from target names
    assert df.loc[df["event"] != "update", "flips"].isna().all()
    assert list(df.loc[df["event"] == "update", "flips"]) == [2, 4]
    assert analysis.load_dynamics(tmp_path / "dynamics.jsonl").equals(df)


def test_load_dynamics_of_a_run_without_dynamics_is_empty(tmp_path):
    df = analysis.load_dynamics(tmp_path)
    assert df.empty and list(df.columns) == list(analysis.DYNAMICS_COLUMNS)


def _fake_run(root: Path, task: str, name: str, masks: dict | None = None, dynamics=None) -> Path:
    run = root / task / name
    run.mkdir(parents=True)
    if masks is not None:
        save_masks(run / "masks.npz", masks)
    if dynamics is not None:
        _write_jsonl(run / "dynamics.jsonl", dynamics)
    return run


def _results(rows) -> pd.DataFrame:
    base = {"kd": False, "model": "tiny", "pattern": "4:2", "rho": None, "seed": 42, "before_prune": None,
            "after_prune": None, "seconds": 1.0, "sparsity": 0.5}
    df = pd.DataFrame([{**base, **r} for r in rows])
    df["label"] = df["method"] + np.where(df["kd"], "+kd", "")
    return df


def test_primal_trajectory_is_the_norm_over_targets_and_flip_fractions(tmp_path):
    masks = {"final": {Q0: torch.ones(2, 4, dtype=torch.bool), F1: torch.ones(4, 4, dtype=torch.bool)}}
    run = _fake_run(tmp_path, "rte", "admm-run", masks, _dyn_rows())
    results = _results([{"task": "rte", "method": "admm", "rho": 1e-3, "score": 60.0, "run_dir": run,
                         "run": "rte/admm-run"}])
    traj = analysis.primal_trajectories(results)
    assert list(traj["step"]) == [0, 1, 2]
    assert traj["primal_norm"].tolist() == pytest.approx([5.0, math.hypot(4, 5), math.hypot(5, 6)])
    dyn = analysis.study_dynamics(results)
    updates = dyn[dyn["event"] == "update"].set_index("component")
    assert updates.loc["query", "flip_frac"] == pytest.approx(2 / 8)
    assert updates.loc["ffn1", "flip_frac"] == pytest.approx(4 / 16)
    assert analysis.module_sizes(run) == {Q0: 8, F1: 16}


# ---------------------------------------------------------------------- GLUE table & claims
@pytest.fixture
def table_results():
    rows = []
    scores = {"dense": (80, 70), "magnitude": (70, 60), "admm": (74, 63), "admm+kd": (75, 62)}
    for label, (rte, stsb) in scores.items():
        method, kd = label.split("+")[0], label.endswith("+kd")
        for seed, shift in ((42, 0.0), (43, 2.0)):
            rows.append({"task": "rte", "method": method, "kd": kd, "seed": seed, "score": rte + shift})
            rows.append({"task": "stsb", "method": method, "kd": kd, "seed": seed, "score": stsb + shift})
    return _results(rows)


def test_glue_summary_mean_std_and_average(table_results):
    s = analysis.glue_summary(table_results, ["rte", "stsb"]).set_index(["label", "task"])
    assert s.loc[("dense", "rte"), "mean"] == 81.0
    assert s.loc[("dense", "rte"), "std"] == pytest.approx(math.sqrt(2))
    assert s.loc[("dense", "avg"), "mean"] == 76.0 and s.loc[("dense", "avg"), "n"] == 2
    labels = list(dict.fromkeys(s.index.get_level_values(0)))
    assert labels == ["dense", "magnitude", "admm", "admm+kd"]


def test_gaps_differences_and_claims_are_computed(table_results):
    summary = analysis.glue_summary(table_results, ["rte", "stsb"])
    gaps = analysis.gap_table(summary)
    assert gaps.loc["magnitude", "avg"] == -10.0 and "dense" not in gaps.index
    assert list(gaps.columns) == ["rte", "stsb", "avg"]
    diff = analysis.difference_table(summary)
    assert diff.loc["admm − magnitude", "avg"] == pytest.approx(3.5)
    assert "admm+kd − magnitude+kd" not in diff.index  # magnitude+kd was not run
    claims = analysis.paper_claims(summary).set_index("comparison")
    assert claims.loc["admm − magnitude", "holds"] is True
    assert claims.loc["admm − magnitude", "measured"] == pytest.approx(3.5)
    assert claims.loc["admm+kd − admm", "holds"] is False  # 68.5 vs 68.5 + 0: equal is not better
    assert claims.loc["admm+kd − magnitude+kd", "holds"] is None
    text = analysis.format_claims(analysis.paper_claims(summary))
    assert "HOLDS: +3.50" in text and "not measured" in text


def test_write_glue_table(tmp_path, table_results):
    md, csv = analysis.write_glue_table(table_results, tmp_path, ["rte", "stsb"], title="t")
    text = md.read_text()
    assert "| dense | 81.0 ± 1.4 | 71.0 ± 1.4 | 76.0 ± 1.4 |" in text
    assert "admm − magnitude" in text and "Paper claims" in text
    df = pd.read_csv(csv)
    assert list(df.columns) == ["label", "task", "mean", "std", "n"]
    assert df[(df.label == "admm") & (df.task == "avg")]["mean"].item() == pytest.approx(69.5)


# ------------------------------------------------------------------------------- rho sweep
def test_rho_frame_and_prune_drop_claim():
    rows = [{"task": "rte", "method": "admm", "rho": r, "score": f, "before_prune": b, "after_prune": a}
            for r, b, a, f in ((1e-4, 70, 50, 65), (1e-3, 70, 65, 68), (1e-2, 66, 65, 66))]
    rho_df = analysis.rho_frame(_results(rows))
    assert list(rho_df["prune_drop"]) == [20, 5, 1]
    assert list(rho_df["retrain_gain"]) == [15, 3, 1]
    claim = analysis.prune_drop_claim(rho_df)
    assert claim["holds"] is True and claim["spearman"] == pytest.approx(-1.0)
    assert "HOLDS" in claim["message"]
    assert analysis.prune_drop_claim(rho_df.iloc[:1])["holds"] is None


# --------------------------------------------------------------------------- mask studies
def test_reference_masks_and_task_seed_rho_comparisons(tmp_path):
    pre = {Q0: m(1, 1, 0, 0)}
    dense = {Q0: m(1, 0, 1, 0)}
    rows = []
    for task, seed, final in (("rte", 42, m(0, 0, 1, 1)), ("rte", 43, m(0, 1, 1, 0)), ("stsb", 42, m(1, 1, 0, 0))):
        run = _fake_run(tmp_path, task, f"admm-{seed}", {"final": {Q0: final}, "pretrained_magnitude": pre})
        rows.append({"task": task, "method": "admm", "seed": seed, "rho": 1e-3, "score": 1.0, "run_dir": run})
        mag = _fake_run(tmp_path, task, f"magnitude-{seed}", {"final": dense, "pretrained_magnitude": pre,
                                                               "dense_magnitude": dense})
        rows.append({"task": task, "method": "magnitude", "seed": seed, "score": 1.0, "run_dir": mag})
    big = _fake_run(tmp_path, "rte", "admm-rho", {"final": {Q0: m(1, 1, 0, 0)}, "pretrained_magnitude": pre})
    rows.append({"task": "rte", "method": "admm", "seed": 42, "rho": 1e-2, "score": 1.0, "run_dir": big})
    results = _results(rows)

    refs = analysis.reference_masks(results, "rte", 42, rho=1e-3)
    assert list(refs) == ["pretrained magnitude", "dense magnitude (ASP)", "ADMM final"]
    assert torch.equal(refs["ADMM final"][Q0], m(0, 0, 1, 1))
    layers = analysis.layer_distance_frame(results, rho=1e-3)
    assert set(layers["pair"]) == {"pretrained magnitude vs dense magnitude (ASP)",
                                   "pretrained magnitude vs ADMM final", "dense magnitude (ASP) vs ADMM final"}
    seeds = analysis.seed_distances(results[results["rho"].fillna(1e-3) == 1e-3])
    rte_admm = seeds[(seeds.task == "rte") & (seeds["mask"] == "ADMM final")]
    assert rte_admm["distance"].item() == 0.5  # 0011 vs 0110
    grid = analysis.task_distance_matrix(results[results["rho"].fillna(1e-3) == 1e-3])
    assert list(grid.index) == ["stsb", "rte"]  # GLUE order
    assert grid.loc["rte", "stsb"] == 1.0  # seed 42: 0011 vs 1100
    sweep = results[(results.method == "admm") & (results.task == "rte") & (results.seed == 42)]
    rho_dist = analysis.rho_distance_frame(sweep, results).set_index(["rho", "reference"])["distance"]
    assert rho_dist[(1e-2, "pretrained magnitude")] == 0.0 and rho_dist[(1e-3, "pretrained magnitude")] == 1.0
    rho_grid = analysis.rho_mask_matrix(sweep, "rte")
    assert list(rho_grid.index) == ["0.001", "0.01"] and rho_grid.iloc[0, 1] == 1.0


def test_single_seed_and_single_task_give_empty_comparisons(tmp_path):
    run = _fake_run(tmp_path, "rte", "admm", {"final": {Q0: m(1, 1, 0, 0)}})
    results = _results([{"task": "rte", "method": "admm", "rho": 1e-3, "score": 1.0, "run_dir": run}])
    assert analysis.seed_distances(results).empty
    assert analysis.task_distance_matrix(results).empty


def test_magnitude_frame_splits_by_final_mask_and_skips_zeroed_pruned():
    mask = {Q0: m(1, 0, 1, 0)}
    snaps = {"start": {Q0: torch.tensor([4.0, -1.0, 3.0, 2.0])}, "final": {Q0: torch.tensor([5.0, 0.0, -6.0, 0.0])}}
    frame = analysis.magnitude_frame(snaps, mask)
    start = frame[frame.stage == analysis.SNAPSHOT_LABELS["start"]]
    assert sorted(start[start.position == "kept"]["abs_w"]) == [3.0, 4.0]
    assert sorted(start[start.position == "pruned"]["abs_w"]) == [1.0, 2.0]
    final = frame[frame.stage == analysis.SNAPSHOT_LABELS["final"]]
    assert set(final["position"]) == {"kept"}


def test_run_magnitudes_caches_complete_snapshots_for_a_fresh_clone(tmp_path, monkeypatch):
    run = _fake_run(tmp_path, "rte", "admm", {"final": {Q0: m(1, 0, 1, 0)}})
    w = torch.tensor([4.0, -1.0, 3.0, 2.0])
    full = {stage: {Q0: w * (i + 1)} for i, stage in enumerate(analysis.SNAPSHOT_LABELS)}
    monkeypatch.setattr(analysis, "weight_snapshots", lambda run_dir: {"start": full["start"]})
    partial = analysis.run_magnitudes(run)  # incomplete snapshots: drawn, but never cached
    assert set(partial["stage"]) == {analysis.SNAPSHOT_LABELS["start"]}
    assert not (run / analysis.MAGNITUDES_FILE).exists()
    monkeypatch.setattr(analysis, "weight_snapshots", lambda run_dir: full)
    first = analysis.run_magnitudes(run)
    assert (run / analysis.MAGNITUDES_FILE).exists()
    monkeypatch.setattr(analysis, "weight_snapshots", lambda run_dir: {"start": full["start"]})  # fresh clone
    again = analysis.run_magnitudes(run)
    assert set(again["stage"]) == set(analysis.SNAPSHOT_LABELS.values())
    pd.testing.assert_frame_equal(again.reset_index(drop=True), first.reset_index(drop=True), check_dtype=False,
                                  check_categorical=False)
    assert not list(run.glob(".*.tmp"))


# ---------------------------------------------------------------------------------- plots
def test_style_savefig_and_plots_on_empty_data(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    analysis.set_style()
    empty = pd.DataFrame(columns=["task", "label", "seed", "score", "rho", "method", "kd"])
    figs = {
        "bars": analysis.plot_glue_bars(empty),
        "rho": analysis.plot_rho_scores(analysis.rho_frame(empty)),
        "stages": analysis.plot_prune_stages(analysis.rho_frame(empty)),
        "primal": analysis.plot_primal_trajectories(analysis.primal_trajectories(empty)),
        "rel": analysis.plot_rel_dist(analysis.study_dynamics(empty)),
        "heat": analysis.plot_layer_heatmap(analysis.study_dynamics(empty)),
        "flips": analysis.plot_flips(analysis.study_dynamics(empty)),
        "mags": analysis.plot_magnitudes(analysis.magnitude_frame({}, {})),
        "layers": analysis.plot_layer_distances(analysis.layer_distance_frame(empty)),
        "matrix": analysis.plot_matrix(pd.DataFrame(), "t", "task"),
        "rhod": analysis.plot_rho_distances(analysis.rho_distance_frame(empty)),
        "seeds": analysis.plot_seed_distances(analysis.seed_distances(empty)),
    }
    paths = analysis.savefig(figs["bars"], "bars", tmp_path / "figs")
    assert [p.name for p in paths] == ["bars.png", "bars.pdf"] and all(p.stat().st_size > 0 for p in paths)
    first = [p.read_bytes() for p in paths]
    time.sleep(1.1)  # a PDF creation date would now differ
    again = analysis.savefig(figs["bars"], "bars", tmp_path / "figs")
    assert [p.read_bytes() for p in again] == first  # redrawn figures do not show up as changed
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["bars.pdf", "bars.png"]  # no temporaries
    plt.close("all")


def test_plots_label_their_axes(tmp_path, table_results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = analysis.plot_glue_bars(table_results, ["rte", "stsb"])
    ax = fig.axes[0]
    assert "×100" in ax.get_ylabel() and ax.get_xlabel()
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["rte", "stsb", "avg"]
    plt.close("all")


def test_dynamics_plots_grid_tasks_by_methods_and_mark_missing_facets():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for task, labels in (("rte", ("admm", "admm+kd")), ("mrpc", ("admm",))):  # no admm+kd on mrpc
        for label in labels:
            for step, event in ((0, "init"), (5, "update"), (10, "update")):
                for component in ("query", "ffn1"):
                    rows.append({"task": task, "label": label, "step": step, "event": event, "component": component,
                                 "layer": 0, "rel_dist": 0.3 - step / 100, "flips": step, "numel": 100})
    dyn = pd.DataFrame(rows)
    for plot in (analysis.plot_rel_dist, analysis.plot_layer_heatmap, analysis.plot_flips):
        fig = plot(dyn)
        titles = [ax.get_title() for ax in fig.axes]
        assert any(t.startswith("mrpc admm:") for t in titles) and any(t.startswith("rte admm+kd:") for t in titles)
        assert not any(t.startswith("mrpc admm+kd") for t in titles)
        notes = [text.get_text() for ax in fig.axes for text in ax.texts]
        assert "no admm+kd run on mrpc" in notes
        plt.close(fig)
