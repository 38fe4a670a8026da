"""The GLUE table keeps different settings apart and pools only seeds."""

import pandas as pd

from nxmlab.report import glue_table, to_markdown


def _row(label, task, seed, score, epochs=3.0, rho=None):
    method, kd = label.split("+")[0], label.endswith("+kd")
    return {"run": f"{task}/{label}-{seed}-{epochs}", "task": task, "method": method, "kd": kd, "label": label,
            "model": "m", "pattern": "4:2", "rho": rho, "seed": seed, "epochs": epochs, "score": score,
            "before_prune": None, "after_prune": None, "seconds": 1.0, "sparsity": 0.5}


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


def test_other_settings_are_not_pooled_as_seeds():
    df = pd.DataFrame([_row("dense", "rte", 42, 57.4, epochs=3.0), _row("dense", "rte", 42, 54.9, epochs=2.0),
                       _row("admm", "rte", 42, 57.0, epochs=3.0, rho=1e-3),
                       _row("admm", "rte", 42, 50.0, epochs=3.0, rho=1e-2)])
    table = glue_table(df)
    assert table.loc["dense [3 ep]", "rte"] == "57.4" and table.loc["dense [2 ep]", "rte"] == "54.9"
    assert table.loc["admm (rho=0.001) [3 ep]", "rte"] == "57.0"
    assert table.loc["admm (rho=0.01) [3 ep]", "rte"] == "50.0"
    assert "| dense [2 ep] | 54.9 | 54.9 |" in to_markdown(table)


def test_any_differing_config_key_splits_rows_not_only_epochs(tmp_path):
    import json

    from nxmlab.report import load_results

    def run(name, seed, retrain, score):
        folder = tmp_path / "rte" / name
        folder.mkdir(parents=True)
        config = {"task": "rte", "method": "admm", "kd": False, "rho": 1e-3, "model": "m", "retrain_epochs": retrain,
                  "training": {"num_train_epochs": 2.0, "seed": seed, "learning_rate": 5e-5}}
        metrics = {"status": "finished", "task": "rte", "method": "admm", "kd": False, "model": "m", "rho": 1e-3,
                   "seed": seed, "score": score, "eval": {}}
        (folder / "config.json").write_text(json.dumps(config))
        (folder / "metrics.json").write_text(json.dumps(metrics))

    run("a", 1, 1.0, 0.50)
    run("b", 2, 1.0, 0.54)
    run("c", 1, 2.0, 0.60)
    table = glue_table(load_results(tmp_path))
    assert table.loc["admm [+1 retrain]", "rte"] == "52.0 ± 2.8"  # seeds pool
    assert table.loc["admm [+2 retrain]", "rte"] == "60.0"  # a longer retraining does not
    assert len(table) == 2
