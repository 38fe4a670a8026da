"""bench/: the --quick mode runs end to end and writes well-formed JSON (no timing asserted)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import BENCHMARKS
from nxmlab.study.studies.cost import GLUE_TRAIN_SIZES, project_preset_seconds
from nxmlab.study.studies.runs import preset_runs

REPO_ROOT = Path(__file__).resolve().parents[1]
MACHINE_KEYS = {"cpu_count", "platform", "torch", "torch_threads", "date_utc", "cpu_model", "python"}


def _run_quick(out: Path, *only: str) -> Path:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out), "--threads", "1",
                           "--only", ",".join(only)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "targets met" in proc.stdout
    return out


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory) -> Path:
    """Every benchmark but padding (which has its own fixture, so that its test runs alone)."""
    return _run_quick(tmp_path_factory.mktemp("bench"), *(k for k in BENCHMARKS if k != "padding"))


@pytest.fixture(scope="module")
def quick_padding(tmp_path_factory) -> Path:
    return _run_quick(tmp_path_factory.mktemp("bench_padding"), "padding")


def _load(folder: Path, name: str) -> dict:
    data = json.loads((folder / f"{name}.json").read_text())
    assert data["name"] == name and data["mode"] == "quick" and data["config"]["quick"] is True
    assert MACHINE_KEYS <= set(data["machine"]) and data["machine"]["torch_threads"] == 1
    assert isinstance(data["notes"], list) and all(isinstance(n, str) for n in data["notes"])
    for name_, t in data["targets"].items():
        assert set(t) == {"target", "measured", "met"}, name_
        assert isinstance(t["met"], bool)
    return data


def _is_ratio(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


@pytest.mark.slow
def test_projection_json(quick_results):
    data = _load(quick_results, "projection")
    assert data["config"]["targets"] == 6 and data["config"]["patterns"] == ["4:2", "4:1", "8:2"]
    for spec, res in data["results"].items():
        assert set(res["ratio_vs_floor"]) == {"nxmlab", "kernel", "kernel_eager", "torch_ao_mask", "torch_ao",
                                              "asp_mask", "asp"}
        assert all(_is_ratio(r["median"]) for r in res["ratio_vs_floor"].values())
        assert set(res["kernel_vs"]) == {"torch_ao_mask", "torch_ao", "asp_mask", "asp", "nxmlab"}
        assert res["seconds"]["floor"]["n"] == data["config"]["rounds"]
        assert res["mask_agreement_with_nxmlab"]["kernel"] == 1.0
        assert 0.5 < res["mask_agreement_with_nxmlab"]["asp"] <= 1.0
        assert f"{spec} kernel / floor" in data["targets"]
    # issue #30: the 4:2 kernel / floor at 1 and 2 threads, in the same process and JSON
    sweep = data["threads"]["4:2"]
    assert set(sweep) == {"1", "2"}
    for count, res in sweep.items():
        assert res["threads"] == int(count) and _is_ratio(res["kernel_vs_floor"]["median"])
        assert isinstance(res["contended"], bool)
        assert res["seconds"]["kernel"]["n"] == data["config"]["thread_rounds"]
    assert {"4:2 kernel / floor at 1 thread", "4:2 kernel / floor at 2 threads"} <= set(data["targets"])
    assert data["machine"]["torch_threads"] == 1  # the sweep restores the thread count


@pytest.mark.slow
def test_admm_overhead_json(quick_results):
    data = _load(quick_results, "admm_overhead")
    for key in ("penalty_end_to_end", "penalty_direct", "fixed_end_to_end", "fixed_direct", "update_amortised"):
        assert math.isfinite(data["overhead_pct"][key])
    assert data["seconds"]["plain"]["n"] == data["config"]["steps"]
    mem = data["memory"]
    assert mem["z_u_bytes"] == 2 * mem["target_weight_bytes"]
    assert mem["plain_peak_rss_bytes"] is None or mem["plain_peak_rss_bytes"] > mem["z_u_bytes"]
    assert len(data["targets"]) == 3


@pytest.mark.slow
def test_learned_overhead_json(quick_results):
    data = _load(quick_results, "learned_overhead")
    assert data["config"]["model"] == "tiny" and data["config"]["candidates"] == 6
    for name in ("fixed", "learned", "joint"):
        assert data["seconds"][name]["n"] == data["config"]["steps"]
    assert all(_is_ratio(r["median"]) for r in data["ratios"].values())
    trainable = data["config"]["trainable_parameters"]
    assert trainable["learned"] < trainable["fixed"] < trainable["joint"]  # frozen: only the gates train
    assert data["memory"]["gates_vs_targets"] == pytest.approx(1.5)  # C(4, 2) / 4 gates per weight
    assert len(data["targets"]) == 2


@pytest.mark.slow
def test_kd_teacher_json(quick_results):
    data = _load(quick_results, "kd_teacher")
    assert data["config"]["model"] == "tiny"
    for name in ("plain", "live", "kept"):
        assert data["seconds"][name]["n"] == data["config"]["steps"]
    assert all(_is_ratio(r["median"]) for r in data["ratios"].values())
    assert data["teacher_batches_in_rounds"] == 0  # the kept step never ran the teacher
    assert len(data["targets"]) == 1


@pytest.mark.slow
def test_study_cost_json(quick_results):
    data = _load(quick_results, "study_cost")
    assert set(data["projections"]) == {"quick", "cpu", "paper"}
    for p in data["projections"].values():
        assert p["total_hours"] > 0 and p["remaining_hours"] <= p["total_hours"]
    tables = data["seconds_per_step"]
    assert set(tables["small"]["rte"]) >= {"dense", "admm", "fixed", "admm+kd", "fixed+kd"}
    assert _is_ratio(data["scale"]["big_vs_small"]["median"])
    assert all(row["source"] in ("store",) or row["source"].startswith("estimate")
               for row in data["seconds_per_epoch"].values())


@pytest.mark.slow
def test_padding_json(quick_padding):
    from bench.padding import QUICK

    data = _load(quick_padding, "padding")
    tasks = data["tasks"]
    assert list(tasks) == QUICK["tasks"]
    measured = {t: e for t, e in tasks.items() if e["measured"]}
    if not measured:
        pytest.skip("no GLUE mirror: " + tasks[QUICK["tasks"][0]]["source"])
    for task, e in measured.items():
        r = e["real_per_padded"]
        assert set(r) == {"before", "after", "sorted"}
        assert all(isinstance(x, float) and 0 < x <= 1 for x in r.values())
        assert r["before"] <= r["sorted"] and r["after"] <= r["sorted"]  # sorted is the bound
        for case in ("before", "after", "sorted"):
            p = e["padding"][case]
            assert p["real_tokens"] == e["real_tokens"] <= p["padded_tokens"]
            assert p["batches"] == math.ceil(e["rows"] / data["config"]["batch"])
        assert data["targets"][f"{task} real tokens per padded token (group_by_length)"]["measured"] == r["after"]
        if task not in data["config"]["throughput_tasks"]:
            assert "throughput" not in e
            continue
        t = e["throughput"]
        assert t["seconds"]["matmul"]["n"] == t["seconds"]["before"]["n"] == data["config"]["rounds"]
        for case in ("before", "after"):
            f = t["fraction_of_matmul"][case]
            assert _is_ratio(f["value"]) and _is_ratio(f["median"]) and len(f["per_round"]) == data["config"]["rounds"]
            assert _is_ratio(t["padded_fraction_of_matmul"][case]["value"])
            assert len(t["batches_timed"][case]) == data["config"]["rounds"]
        assert _is_ratio(t["after_vs_before_real_token_rate"]["median"])
        goal = data["targets"][f"{task} real-token FLOP/s / fp32 matmul FLOP/s (group_by_length)"]
        assert goal["target"] == ">= 0.6" and goal["measured"] == t["fraction_of_matmul"]["after"]["value"]
    assert len(data["targets"]) == len(measured) + len([t for t in measured if t in data["config"]["throughput_tasks"]])
    assert set(data["overall"]["real_per_padded"]) == {"before", "after", "sorted"}


def test_project_preset_seconds_by_hand():
    from nxmlab.study.studies.presets import get_preset
    from nxmlab.study.studies.runs import preset_runs

    smoke = get_preset("smoke")  # rte + stsb, 1 epoch + 1 retrain, batch 8, train_limit 32, eval_limit 16
    sps = {t: {"dense": 1.0, "admm": 2.0, "fixed": 3.0, "kd_extra": 10.0} for t in ("rte", "stsb")}
    out = project_preset_seconds(smoke, sps, update_seconds=0.5)
    assert len(out["runs"]) == len(preset_runs(smoke, ["table", "rho", "dynamics", "convergence"])) == 15
    runs = {(r["task"], r["label"], r["rho"]): r for r in out["runs"]}
    evals_sparse = 3 * 16 * 1.0 / 8 / 3  # 3 passes x 16 examples at a third of a dense step per 8
    assert runs[("rte", "dense", None)]["seconds"] == pytest.approx(4 * 1.0 + 16 / 8 / 3)
    assert runs[("rte", "magnitude", None)]["seconds"] == pytest.approx(4 * 3.0 + evals_sparse)
    assert runs[("rte", "magnitude+kd", None)]["seconds"] == pytest.approx(4 * 13.0 + evals_sparse)
    assert runs[("rte", "admm", 1e-3)]["seconds"] == pytest.approx(4 * 2.0 + 0.5 + 4 * 3.0 + evals_sparse)
    assert runs[("rte", "admm+kd", 1e-3)]["seconds"] == pytest.approx(4 * 12.0 + 0.5 + 4 * 13.0 + evals_sparse)
    assert {r["rho"] for r in out["runs"] if r["label"] == "admm" and r["task"] == "rte"} == {1e-4, 1e-3, 1e-2}
    assert out["total_seconds"] == pytest.approx(sum(r["seconds"] for r in out["runs"]))
    done = project_preset_seconds(smoke, sps, finished=[("rte", "dense", 42, None)])
    assert done["total_seconds"] - done["remaining_seconds"] == pytest.approx(runs[("rte", "dense", None)]["seconds"])
    assert not out["missing"]
    partial = project_preset_seconds(smoke, {"rte": sps["rte"]})
    assert any(m.startswith("stsb") for m in partial["missing"])


def test_project_preset_seconds_full_sizes():
    out = project_preset_seconds("quick", {t: {k: 1.0 for k in ("dense", "admm", "fixed", "admm+kd", "fixed+kd")}
                                           for t in ("rte", "mrpc", "stsb")})
    mrpc = {}
    for r in out["runs"]:  # the first run of each label on mrpc: the table's
        if r["task"] == "mrpc":
            mrpc.setdefault(r["label"], r)
    per_epoch = math.ceil(GLUE_TRAIN_SIZES["mrpc"] / 32)
    assert mrpc["dense"]["steps"] == 2 * per_epoch  # quick: 2 epochs
    assert mrpc["magnitude"]["steps"] == per_epoch  # + 1 masked epoch: the matched budget of 3 passes
    assert [p["epochs"] for p in mrpc["admm"]["phases"]] == [2.0, 1.0]
    assert not any(r["task"] == "rte" for r in out["runs"])  # quick: MRPC and STS-B only
    grid = project_preset_seconds("convergence", {t: {k: 1.0 for k in ("dense", "admm", "fixed")}
                                                  for t in ("rte", "mrpc", "stsb")})
    assert len(grid["runs"]) == len(preset_runs("convergence", ["table", "rho", "dynamics", "convergence"])) and any(r["task"] == "rte" for r in grid["runs"])


def test_project_preset_seconds_prices_each_run_at_its_own_batch_setting_and_training_set():
    """protocol: the dense start at batch 32, ADMM and ASP at batch 16 with only the targets
    training, selection runs on 90 % of the training set scored on the other 10 %.  A run
    takes its own setting's column; without one, the plain kind (the preset's batch) scaled
    to its batch at a constant time per example."""
    from nxmlab.study.studies.presets import get_preset

    protocol = get_preset("protocol")
    assert protocol.batch_size == 16
    own = {"dense": 1.0, "admm": 2.0, "fixed": 3.0, "dense @ b32": 4.0, "admm @ b16 targets": 5.0,
           "fixed @ b16 targets": 6.0}
    out = project_preset_seconds(protocol, {"cola": own}, studies=["selection"], eval_fraction=0.0)
    runs = [r for r in out["runs"] if r["task"] == "cola"]
    n_train = GLUE_TRAIN_SIZES["cola"] - round(0.1 * GLUE_TRAIN_SIZES["cola"])
    dense = next(r for r in runs if r["label"] == "dense")
    assert (dense["batch_size"], dense["setting"], dense["heldout"]) == (32, "b32", 0.1)
    assert dense["steps"] == 5 * math.ceil(n_train / 32) and dense["seconds"] == pytest.approx(4.0 * dense["steps"])
    admm = next(r for r in runs if r["label"] == "admm")
    assert admm["setting"] == "b16 targets" and admm["steps"] == 10 * math.ceil(n_train / 16)
    assert admm["seconds"] == pytest.approx(5.0 * admm["steps"])
    plain = project_preset_seconds(protocol, {"cola": {"dense": 1.0, "admm": 2.0, "fixed": 3.0}},
                                   studies=["selection"], eval_fraction=0.0)
    dense = next(r for r in plain["runs"] if r["task"] == "cola" and r["label"] == "dense")
    assert dense["seconds"] == pytest.approx(1.0 * 32 / 16 * dense["steps"])  # per example as at batch 16
    assert not [m for m in plain["missing"] if m.startswith("cola")]


def test_store_step_table_fills_a_setting_from_the_tasks_that_ran_it(monkeypatch):
    """A protocol task with no batch-16 run yet gets its batch-16 step time from the two-way
    fit: its own task effect (from its batch-32 runs) times the setting's (from another task)."""
    import nxmlab.study.studies.cost as sc

    records = [{"model": "minilm-l6", "task": t, "label": "admm", "phase": "admm", "setting": "b32",
                "seconds_per_step": f} for t, f in (("cola", 0.2), ("mrpc", 0.8), ("stsb", 0.6))]
    records.append({"model": "minilm-l6", "task": "cola", "label": "admm", "phase": "admm",
                    "setting": "b16 targets", "seconds_per_step": 0.1})
    monkeypatch.setattr(sc, "store_records", lambda _dir: records)
    table_, source = sc.store_step_table("protocol", "unused")
    assert table_["mrpc"]["admm @ b16 targets"] == pytest.approx(0.8 * 0.1 / 0.2, rel=1e-2)  # median polish: approximate
    assert "admm @ b16 targets fitted" in source["mrpc"] and source["cola"] == "store"
    assert table_["cola"]["admm @ b16 targets"] == pytest.approx(0.1)


def test_cli_rejects_unknown_benchmark():
    proc = subprocess.run([sys.executable, "-m", "bench", "--only", "nope"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0 and "unknown benchmark" in proc.stderr


def test_live_projection_costs_the_preset_from_the_committed_store():
    """`nxmlab reproduce --dry-run`'s hours: the store's own step times; every run of the n:m
    sweep is costed, and finished runs (by folder, pattern included) cost nothing."""
    from nxmlab.study.studies.cost import live_projection
    from nxmlab.study.studies.runs import preset_runs

    results = Path(__file__).resolve().parents[1] / "results"
    proj = live_projection("baselines", results, ["table", "patterns"])
    specs = preset_runs("baselines", ["table", "patterns"], str(results))
    assert len(proj["runs"]) == len(specs) == 41 and not proj["missing"]
    assert all(s.startswith("store") for s in proj["source"].values())
    unfinished = sum(r["seconds"] for r, s in zip(proj["runs"], specs, strict=True) if not s.folder().finished)
    assert proj["remaining_seconds"] == pytest.approx(unfinished) and proj["total_seconds"] > 0
    cost = json.loads((results.parent / "bench" / "results" / "study_cost.json").read_text())
    cpu = live_projection("cpu", results, ["table"], cost)
    assert len(cpu["runs"]) == 120 and not cpu["missing"]  # CoLA from make bench x the store/bench ratio
    assert not any("b16" in note for note in cpu["source"].values())  # protocol's settings: not cpu's business
    protocol = live_projection("protocol", results, ["table"])
    assert "admm @ b16 targets" in protocol["step_table"]["cola"]  # priced at its own setting
    assert 2 * 3600 < cpu["total_seconds"] < 20 * 3600


def test_median_polish_recovers_an_additive_table_despite_one_aberrant_cell():
    from nxmlab.study.studies.cost import median_polish

    rows, cols = {"a": 0.0, "b": 1.0, "c": 2.0}, {"x": 0.0, "y": 0.5, "z": 3.0}
    cells = {(r, c): rv + cv for r, rv in rows.items() for c, cv in cols.items()}
    cells["c", "z"] += 4.0  # one cell slowed by other work
    overall, row, col = median_polish(cells)
    for (r, c), v in cells.items():
        fit = overall + row[r] + col[c]
        assert fit == pytest.approx(rows[r] + cols[c]), (r, c)


def test_store_step_table_replaces_contended_cells_and_fills_missing_kinds(monkeypatch):
    """A (task, kind) timed while the cores were shared (5x the two-way fit) is replaced by
    the fit; a kind a task never ran is fitted; clean cells keep their store median."""
    import nxmlab.study.studies.cost as sc

    task_f = {"cola": 0.2, "mrpc": 0.8, "rte": 1.2}
    kind_f = {"dense": 1.0, "admm": 1.2, "fixed": 1.1, "fixed+kd": 1.4}
    label_of = {"dense": ("dense", "finetune"), "admm": ("admm", "admm"), "fixed": ("magnitude", "finetune"),
                "fixed+kd": ("magnitude+kd", "finetune")}
    records = []
    for task, tf in task_f.items():
        for kind, kf in kind_f.items():
            label, phase = label_of[kind]
            slow = 5.0 if (task, kind) == ("rte", "fixed") else 1.0
            records.append({"model": "minilm-l6", "task": task, "label": label, "phase": phase,
                            "seconds_per_step": tf * kf * slow})
    monkeypatch.setattr(sc, "store_records", lambda _dir: records)
    table_, source = sc.store_step_table("cpu", "unused")
    assert table_["mrpc"]["fixed"] == pytest.approx(0.88)  # clean: the store's own time
    assert table_["rte"]["fixed"] == pytest.approx(1.2 * 1.1)  # 6.6 s contended -> the fit
    assert "fixed 6.60 s -> fit 1.32 s" in source["rte"] and source["cola"] == "store (admm+kd = admm x 1.27)"
    # no stored admm+kd anywhere: admm's time times the store's KD factor (fixed+kd / fixed)
    assert table_["cola"]["admm+kd"] == pytest.approx(table_["cola"]["admm"] * 1.4 / 1.1)
    assert source["stsb"] == "none" and not table_["stsb"]  # no store, no bench json


def test_table_runs_waiting_for_a_choice_are_priced_at_their_grid_setting_and_named_apart():
    """A protocol task without a recorded choice has its sparse table runs in no study yet:
    ``pending_runs`` lists them (at the grid's batch size, never held out), and the dry run
    prices them on a line of their own; with every choice recorded, nothing waits."""
    import dataclasses

    from nxmlab.study.studies.cost import live_cost
    from nxmlab.study.studies.presets import get_preset
    from nxmlab.study.studies.runs import pending_runs, preset_runs

    protocol = get_preset("protocol")
    nothing_chosen = dataclasses.replace(protocol, chosen=())
    waiting = pending_runs(nothing_chosen)
    sparse = [lb for lb in protocol.labels if lb != "dense"]
    assert len(waiting) == len(protocol.tasks) * len(protocol.seeds) * len(sparse)
    assert {s.seed for s in waiting} == set(protocol.seeds) and not any(s.cfg.heldout for s in waiting)
    assert {int(s.args.per_device_train_batch_size) for s in waiting} == {16}
    assert {s.label for s in preset_runs(nothing_chosen, "table")} == {"dense"}  # none of them is in the table
    cola = dict(dict(protocol.chosen)["cola"])
    all_chosen = dataclasses.replace(protocol, chosen={t: cola for t in protocol.tasks})
    assert pending_runs(all_chosen) == []
    results = Path(__file__).resolve().parents[1] / "results"
    line = [ln for ln in live_cost(nothing_chosen, results, ["table"]) if "wait for the selection" in ln]
    assert len(line) == 1 and f"{len(waiting)} table run(s)" in line[0]
    assert not [ln for ln in live_cost(all_chosen, results, ["table"]) if "wait for the selection" in ln]
