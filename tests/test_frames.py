"""Result frames: the score frame of a store, seed averaging in one place, and the GLUE table."""

import io
import json
import logging

import pandas as pd
import pytest

from nxmlab.study.cli import main
from nxmlab.study.results.frames import (
    SCORE_COLUMNS,
    format_claims,
    glue_table,
    load_scores,
    paper_claims,
    seed_summary,
    to_markdown,
)
from nxmlab.study.results.store import STORE_VERSION


def _row(label, task, seed, score, epochs=3.0, rho=None):
    method, kd = label.split("+")[0], label.endswith("+kd")
    setting = json.dumps({"training.num_train_epochs": epochs})
    return {"run": f"{task}/{label}-{seed}-{epochs}", "task": task, "method": method, "kd": kd, "label": label,
            "model": "m", "pattern": "4:2", "rho": rho, "seed": seed, "epochs": epochs, "score": score,
            "setting": setting}


def test_seeds_pool_into_mean_and_std_and_average():
    df = pd.DataFrame([_row("dense", "rte", 1, 60.0), _row("dense", "rte", 2, 62.0),
                       _row("dense", "mrpc", 1, 80.0), _row("dense", "mrpc", 2, 84.0),
                       _row("admm", "rte", 1, 55.0, rho=1e-3)])
    table = glue_table(df)
    assert list(table.columns) == ["mrpc", "rte", "avg"]  # GLUE's task order
    assert table.loc["dense", "rte"] == "61.0 ± 1.4"
    assert table.loc["dense", "avg"] == "71.5 ± 2.1"  # per-seed averages 70 and 73
    assert table.loc["admm", "mrpc"] == "–" and table.loc["admm", "avg"] == "–"
    assert list(table.index) == ["dense", "admm"]
    summary = seed_summary(df)
    avg = summary[(summary["label"] == "dense") & (summary["task"] == "avg")].iloc[0]
    assert (avg["mean"], avg["n"]) == (71.5, 2) and avg["std"] == pytest.approx(2.1213, abs=1e-4)


def test_average_tasks_leave_a_task_out_of_the_average_only():
    """A task at chance level (RTE in cpu) keeps its column but leaves the average, in the
    summary, the table (and its unscored-run marks) and the gaps alike."""
    df = pd.DataFrame([_row("dense", "rte", 1, 60.0), _row("dense", "rte", 2, 62.0),
                       _row("dense", "mrpc", 1, 80.0), _row("dense", "mrpc", 2, 84.0),
                       _row("dense", "stsb", 1, 70.0), _row("dense", "stsb", 2, 72.0),
                       _row("admm", "mrpc", 1, 78.0, rho=1e-3), _row("admm", "stsb", 1, 68.0, rho=1e-3),
                       _row("admm", "rte", 1, float("nan"), rho=1e-3)])
    summary = seed_summary(df, average_tasks=["mrpc", "stsb"]).set_index(["label", "task"])
    assert summary.loc[("dense", "avg"), "mean"] == 76.5  # per-seed (80+70)/2 and (84+72)/2
    assert summary.loc[("dense", "rte"), "mean"] == 61.0  # still reported, apart
    assert summary.loc[("admm", "avg"), "mean"] == 73.0
    assert seed_summary(df).set_index(["label", "task"]).loc[("dense", "avg"), "mean"] == pytest.approx(71.3333, abs=1e-4)
    table = glue_table(df, average_tasks=["mrpc", "stsb"])
    assert list(table.columns) == ["mrpc", "stsb", "rte", "avg"]
    assert table.loc["admm", "rte"] == "–*" and table.loc["admm", "avg"] == "73.0"
    assert glue_table(df).loc["admm", "avg"] == "–*"  # RTE in the average: no average


def test_paper_claims_without_an_average_use_only_the_average_tasks():
    """With no ``avg`` (a task unfinished), the claim's basis is the tasks both labels have,
    among the average's tasks: a task reported apart (RTE in cpu) never enters it."""
    df = pd.DataFrame([_row("magnitude", "mrpc", 1, 80.0), _row("magnitude", "rte", 1, 50.0),
                       _row("admm", "mrpc", 1, 78.0, rho=1e-3), _row("admm", "rte", 1, 60.0, rho=1e-3)])
    tasks = ["mrpc", "stsb", "rte"]
    claims = paper_claims(seed_summary(df, tasks, average_tasks=["mrpc", "stsb"]), ["mrpc", "stsb"]).set_index("comparison")
    assert claims.loc["admm − magnitude", "measured"] == -2.0
    assert claims.loc["admm − magnitude", "basis"] == "mean over mrpc" and not claims.loc["admm − magnitude", "holds"]
    assert paper_claims(seed_summary(df, tasks)).set_index("comparison").loc["admm − magnitude", "measured"] == 4.0
    assert claims.loc["admm+kd − admm", "holds"] is None
    assert "AGAINST the claim: -2.00 points (mean over mrpc)" in format_claims(claims.reset_index())


def test_other_settings_are_not_pooled_as_seeds():
    df = pd.DataFrame([_row("dense", "rte", 42, 57.4, epochs=3.0), _row("dense", "rte", 42, 54.9, epochs=2.0),
                       _row("admm", "rte", 42, 57.0, epochs=3.0, rho=1e-3),
                       _row("admm", "rte", 42, 50.0, epochs=3.0, rho=1e-2)])
    table = glue_table(df)
    assert table.loc["dense [2 ep]", "rte"] == "54.9" and table.loc["dense [3 ep]", "rte"] == "57.4"
    assert table.loc["admm [rho=0.001]", "rte"] == "57.0"
    assert table.loc["admm [rho=0.01]", "rte"] == "50.0"
    assert "| dense [2 ep] | 54.9 | 54.9 |" in to_markdown(table)


def test_a_setting_fixed_per_task_does_not_split_rows():
    """cpu trains STS-B at lr 1e-4 and the other tasks at 5e-5: one row per method; a setting
    that differs within one task still splits."""
    df = pd.DataFrame([_row("dense", "stsb", 42, 85.0, epochs=3.0), _row("dense", "mrpc", 42, 80.0, epochs=2.0),
                       _row("dense", "mrpc", 43, 82.0, epochs=2.0)])
    table = glue_table(df, ["mrpc", "stsb"])
    assert list(table.index) == ["dense"] and table.loc["dense", "mrpc"] == "81.0 ± 1.4"
    assert table.loc["dense", "stsb"] == "85.0"
    split = glue_table(pd.concat([df, pd.DataFrame([_row("dense", "stsb", 43, 70.0, epochs=6.0)])], ignore_index=True), ["mrpc", "stsb"])
    assert set(split.index) == {"dense [2 ep]", "dense [3 ep]", "dense [6 ep]"}


def _write_run(root, name, seed, retrain, score, version=STORE_VERSION):
    folder = root / "rte" / name
    folder.mkdir(parents=True)
    config = {"store_version": version, "task": "rte", "method": "admm", "kd": False, "rho": 1e-3, "model": "m",
              "retrain_epochs": retrain, "training": {"num_train_epochs": 2.0, "seed": seed, "learning_rate": 5e-5}}
    metrics = {"status": "finished", "task": "rte", "method": "admm", "kd": False, "model": "m", "rho": 1e-3,
               "pattern": "4:2", "seed": seed, "score": score,
               "eval": {"final": {"validation": {"accuracy": score}},
                        "after_prune": {"validation": {"accuracy": score - 0.1}}},
               "diagnostics": {"rel_dist_at_prune": 0.04, "flips_last_update": 0.001, "updates": 8},
               "mask_distance": {"pretrained_magnitude": 0.02}}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_any_differing_config_key_splits_rows_and_v1_runs_are_skipped(tmp_path, caplog):
    _write_run(tmp_path, "a", 1, 1.0, 0.50)
    _write_run(tmp_path, "b", 2, 1.0, 0.54)
    _write_run(tmp_path, "c", 1, 2.0, 0.60)
    _write_run(tmp_path, "old", 3, 1.0, 0.99, version=1)
    with caplog.at_level(logging.WARNING):
        scores = load_scores(tmp_path)
    assert "store version 1" in caplog.text and "old" in caplog.text
    assert list(scores.columns) == SCORE_COLUMNS and len(scores) == 3
    row = scores.set_index("run").loc["rte/a"]
    assert row["after_prune"] == pytest.approx(40.0) and row["rel_dist_at_prune"] == 0.04
    assert row["mask_dist_pretrained_magnitude"] == 0.02
    table = glue_table(scores)
    assert table.loc["admm [+1 retrain]", "rte"] == "52.0 ± 2.8"  # seeds pool
    assert table.loc["admm [+2 retrain]", "rte"] == "60.0"  # a longer retraining does not
    assert len(table) == 2


def test_table_csv_is_the_score_frame(tmp_path, capsys):
    _write_run(tmp_path, "a", 1, 1.0, 0.50)
    assert main(["table", str(tmp_path), "--csv"]) == 0
    frame = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert list(frame.columns) == [*SCORE_COLUMNS, "studies", "row"]  # and the studies that list each run
    assert frame.loc[0, "run"] == "rte/a" and frame.loc[0, "score"] == 50.0
    assert {"task", "method", "kd", "pattern", "seed", "score", "rel_dist_at_prune", "flips_last_update",
            "mask_dist_pretrained_magnitude"} <= set(frame.columns)
    assert main(["table", str(tmp_path / "nope")]) == 2
