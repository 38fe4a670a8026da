"""Read the results store into tables: one row per finished run, and the GLUE table.

GLUE conventions: the task score is CoLA's MCC, STS-B's mean of Pearson and Spearman,
MRPC/QQP's mean of F1 and accuracy, and accuracy elsewhere; tables show it x100.
With several seeds a cell reads ``mean ± std`` (sample std, ddof=1).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from .glue import GLUE_TASKS
from .store import is_finished, iter_runs, read_json

__all__ = ["load_results", "glue_table", "to_markdown", "method_label"]


def method_label(method: str, kd: bool) -> str:
    """``"admm+kd"``-style label."""
    return method + ("+kd" if kd else "")


def load_results(results_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """One row per finished run under ``results_dir``.

    Columns: ``run, task, method, kd, label, model, pattern, rho, seed, epochs, score`` (x100),
    ``before_prune, after_prune`` (x100, where recorded), ``seconds``, ``sparsity`` and
    ``setting``: the run's config as JSON without its task, seed, method and rho, so that
    runs that differ in anything else (epochs, learning rate, retraining, ...) are never
    pooled as if they were seeds.
    """
    rows = []
    for run_dir in iter_runs(results_dir):
        if not is_finished(run_dir):
            continue
        m = read_json(run_dir / "metrics.json")
        config = read_json(run_dir / "config.json") or {}
        evals = m.get("eval", {})

        def score(key: str) -> float | None:
            from .metrics import glue_score

            result = evals.get(key)
            if not result:
                return None
            return 100 * sum(glue_score(m["task"], v) for v in result.values()) / len(result)

        rows.append({
            "run": str(Path(run_dir).relative_to(results_dir)),
            "task": m["task"], "method": m["method"], "kd": bool(m["kd"]), "label": method_label(m["method"], m["kd"]),
            "model": m["model"], "pattern": m.get("pattern"), "rho": m.get("rho"), "seed": m["seed"],
            "epochs": config.get("training", {}).get("num_train_epochs"),
            "score": 100 * m["score"], "before_prune": score("before_prune"), "after_prune": score("after_prune"),
            "seconds": m.get("seconds"), "sparsity": m.get("sparsity", {}).get("mean"),
            "setting": json.dumps(_setting(config), sort_keys=True),
        })
    return pd.DataFrame(rows, columns=["run", "task", "method", "kd", "label", "model", "pattern", "rho", "seed",
                                       "epochs", "score", "before_prune", "after_prune", "seconds", "sparsity",
                                       "setting"])


#: Config keys that identify a cell of the table rather than a setting of it.
_NOT_SETTINGS = {"store_version", "task", "method", "kd", "rho", "training.seed", "training.data_seed"}


def _setting(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The config flattened to ``a.b`` keys, without :data:`_NOT_SETTINGS`."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_setting(value, f"{name}."))
        elif name not in _NOT_SETTINGS:
            out[name] = value
    return out


def _describe(key: str, value: Any) -> str:
    short = key.removeprefix("training.")
    if short == "num_train_epochs" and isinstance(value, int | float):
        return f"{value:g} ep"
    if short == "retrain_epochs" and isinstance(value, int | float):
        return f"+{value:g} retrain"
    return f"{short}={value:g}" if isinstance(value, float) else f"{short}={value}"


def _setting_suffixes(df: pd.DataFrame) -> pd.Series:
    """`` [key=value, ...]`` per row for the setting keys that differ inside some label, else ``""``."""
    if "setting" in df:
        settings = df["setting"].map(lambda s: json.loads(s) if isinstance(s, str) else {})
    elif "epochs" not in df:  # rows built by hand with no setting at all
        return pd.Series("", index=df.index)
    else:  # rows built by hand: epochs is the only setting known
        settings = df["epochs"].map(lambda e: {} if pd.isna(e) else {"training.num_train_epochs": e})
    differing: list[str] = []
    for _, group in settings.groupby(df["label"], sort=False):
        for key in sorted(set().union(*group.tolist())):
            values = {json.dumps(s.get(key), sort_keys=True) for s in group}
            if len(values) > 1 and key not in differing:
                differing.append(key)
    if not differing:
        return pd.Series("", index=df.index)
    first = ["training.num_train_epochs", "retrain_epochs"]
    differing.sort(key=lambda k: (first.index(k) if k in first else len(first), k))
    return settings.map(lambda s: " [" + ", ".join(_describe(k, s[k]) for k in differing if k in s) + "]"
                        if any(k in s for k in differing) else "")


def _cell(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return "–"
    if len(values) == 1:
        return f"{values.iloc[0]:.1f}"
    return f"{values.mean():.1f} ± {values.std(ddof=1):.1f}"


def glue_table(results: pd.DataFrame, tasks: list[str] | None = None) -> pd.DataFrame:
    """The GLUE table: one row per method (label), one column per task, plus the average.

    Cells are strings (``mean ± std`` over seeds).  The average is taken per seed over
    the tasks present, then over seeds, for rows that have every task.
    """
    if results.empty:
        return pd.DataFrame()
    order = [t for t in GLUE_TASKS if t in set(results["task"])]
    tasks = tasks or order
    df = results[results["task"].isin(tasks)].copy()
    if df["rho"].nunique(dropna=True) > 1:  # a rho sweep: keep the rows apart
        df.loc[df["method"] == "admm", "label"] = df["label"] + " (rho=" + df["rho"].map("{:g}".format) + ")"
    df["label"] = df["label"] + _setting_suffixes(df)  # other settings are not more seeds
    table = {}
    for label, group in df.groupby("label", sort=False):
        row = {task: _cell(group.loc[group["task"] == task, "score"]) for task in tasks}
        per_seed = group.pivot_table(index="seed", columns="task", values="score", aggfunc="mean")
        complete = per_seed.dropna(subset=[t for t in tasks if t in per_seed.columns])
        row["avg"] = _cell(complete.mean(axis=1)) if set(tasks) <= set(per_seed.columns) else "–"
        table[label] = row
    preferred = ["dense", "magnitude", "magnitude+kd", "admm", "admm+kd", "unstructured", "unstructured+kd"]
    def order(label: str) -> tuple[int, str]:
        base = label.split(" (")[0].split(" [")[0]
        return (preferred.index(base) if base in preferred else len(preferred), label)

    labels = sorted(table, key=order)
    return pd.DataFrame.from_dict({k: table[k] for k in labels}, orient="index", columns=[*tasks, "avg"])


def to_markdown(table: pd.DataFrame, index_name: str = "method") -> str:
    """A GitHub-flavoured markdown table (no extra dependency)."""
    if table.empty:
        return "_no finished runs_\n"
    header = [index_name, *map(str, table.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(table.columns)) + "|"]
    for idx, row in table.iterrows():
        lines.append("| " + " | ".join([str(idx), *map(str, row.tolist())]) + " |")
    return "\n".join(lines) + "\n"
