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
