"""Pure helpers behind the study notebooks: run studies, load results and dynamics, mask distances, plots.

The notebooks in ``notebooks/`` stay thin: a parameters cell, then one call per table
or figure into this module.  Training only happens through
:func:`nxmlab.recipes.run_experiment` (via :func:`run_study`), which reuses finished
runs, so re-executing a notebook only re-draws.

Every figure goes through :func:`set_style` (one seaborn theme) and is written by
:func:`savefig` as PNG and PDF.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .nxm import NxM
from .presets import Preset, preset_runs, resolve_preset
from .report import glue_table, load_results, method_label
from .store import is_finished, load_masks, read_json, read_jsonl
from .targets import COMPONENTS, describe_target

__all__ = [
    "resolve_preset", "describe_preset", "set_style", "savefig",
    "run_study", "study_status",
    "glue_summary", "render_glue_table", "gap_table", "difference_table", "paper_claims", "write_glue_table",
    "plot_glue_bars",
    "rho_frame", "prune_drop_claim", "primal_trajectories", "plot_rho_scores", "plot_prune_stages",
    "plot_primal_trajectories",
    "DYNAMICS_COLUMNS", "load_dynamics", "study_dynamics", "module_sizes", "plot_rel_dist", "plot_layer_heatmap",
    "plot_flips", "weight_snapshots", "magnitude_frame", "first_run", "run_magnitudes", "plot_magnitudes",
    "mask_distance", "mask_distance_table", "overall_distance", "random_mask_distance", "reference_masks",
    "pairwise_distances", "layer_distance_frame", "seed_distances", "task_distance_matrix", "rho_distance_frame",
    "rho_mask_matrix", "format_claims",
    "plot_layer_distances", "plot_matrix", "plot_rho_distances", "plot_seed_distances",
]

#: Label order of tables and plots (the GLUE table's order).
LABEL_ORDER: tuple[str, ...] = ("dense", "magnitude", "magnitude+kd", "admm", "admm+kd", "unstructured",
                                "unstructured+kd")
SCORE_AXIS = "GLUE task score (×100)"
STEP_AXIS = "optimizer step (ADMM phase)"
RHO_AXIS = "ρ (ADMM penalty weight, log scale)"
DIST_AXIS = "mask distance (fraction of kept positions that differ)"


def _order(labels: Iterable[str]) -> list[str]:
    labels = list(dict.fromkeys(labels))
    return sorted(labels, key=lambda s: (LABEL_ORDER.index(s) if s in LABEL_ORDER else len(LABEL_ORDER), s))


def _task_order(tasks: Iterable[str]) -> list[str]:
    from .glue import GLUE_TASKS

    names = list(GLUE_TASKS)
    return sorted(set(tasks), key=lambda t: names.index(t) if t in names else len(names))


# ----------------------------------------------------------------------------- presets
def describe_preset(preset: Preset) -> str:
    """A few lines describing what a preset trains (for the notebooks' first output)."""
    table = len(preset_runs(preset, "table"))
    rho = len(preset_runs(preset, "rho"))
    return (
        f"preset {preset.name!r}: {preset.description}\n"
        f"  model {preset.model}, pattern {preset.pattern} (keep {NxM.parse(preset.pattern).m} of every "
        f"{NxM.parse(preset.pattern).n}), tasks {', '.join(preset.tasks)}, seeds {', '.join(map(str, preset.seeds))}\n"
        f"  methods {', '.join(preset.labels)}; {preset.epochs:g} epochs (+{preset.retrain_epochs:g} retrain for "
        f"ADMM), lr {preset.learning_rate:g}, batch {preset.batch_size}, rho {preset.rho:g}\n"
        f"  rho grid {', '.join(f'{r:g}' for r in preset.rho_grid)} on {', '.join(preset.rho_tasks)}\n"
        f"  limits: train {preset.train_limit or 'all'}, eval {preset.eval_limit or 'all'}; "
        f"{table} table runs, {rho} rho-sweep runs"
    )


# ------------------------------------------------------------------------------- style
def set_style() -> None:
    """The one plotting style of every notebook figure."""
    import matplotlib as mpl
    import seaborn as sns

    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")
    mpl.rcParams.update({
        "figure.dpi": 100, "savefig.dpi": 200, "savefig.bbox": "tight", "pdf.fonttype": 42, "ps.fonttype": 42,
        "axes.titlesize": "medium", "legend.fontsize": "small", "legend.title_fontsize": "small",
    })


def savefig(fig, name: str, figures_dir: str | os.PathLike[str] = "figures") -> list[Path]:
    """Save ``fig`` as ``<figures_dir>/<name>.png`` and ``.pdf``; returns both paths.

    Each file is written under a temporary name and renamed, and carries no creation date,
    so redrawing a figure from the same results gives the same bytes (no spurious diffs
    in a committed ``figures/``).
    """
    folder = Path(figures_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext, metadata in (("png", {"Software": None}), ("pdf", {"CreationDate": None, "Producer": None})):
        path = folder / f"{name}.{ext}"
        tmp = folder / f".{name}.{ext}.tmp"
        fig.savefig(tmp, format=ext, metadata=metadata)
        os.replace(tmp, path)
        paths.append(path)
    return paths


def _subplots(ncols: int = 1, nrows: int = 1, width: float = 5.0, height: float = 3.6, **kwargs):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False,
                             constrained_layout=True, **kwargs)
    return fig, axes


def _task_panels(frame: pd.DataFrame, width: float, empty_message: str):
    """One panel per task of ``frame``: ``(fig, axes, tasks)``; an empty frame gets one panel
    saying ``empty_message`` and no tasks."""
    tasks = _task_order(frame["task"]) if not frame.empty else []
    fig, axes = _subplots(ncols=max(1, len(tasks)), width=width)
    if not tasks:
        _empty(axes[0, 0], empty_message)
    return fig, axes, tasks


def _integer_x(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _readable_log_y(ax) -> None:
    """Plain tick labels on a log y axis that spans less than a decade."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    low, high = ax.get_ylim()
    if low > 0 and high / low < 10:
        fmt = FuncFormatter(lambda v, _: f"{v:.3g}")
        ax.yaxis.set_major_formatter(fmt)
        ax.yaxis.set_minor_formatter(fmt)
    else:
        ax.yaxis.set_minor_formatter(NullFormatter())


def _empty(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


# ----------------------------------------------------------------------------- studies
def _run_key(run_dir: str | os.PathLike[str]) -> str:
    parts = Path(run_dir).parts
    return "/".join(parts[-2:])


def study_status(preset: Preset, study: str | Sequence[str], results_dir: str | os.PathLike[str] = "results",
                 glue_dir: str | None = None) -> pd.DataFrame:
    """The planned runs of a study and whether each already finished (reads only)."""
    from .recipes import run_dir_for

    rows = []
    for cfg, args in preset_runs(preset, study, str(results_dir), glue_dir):
        run_dir = run_dir_for(cfg, args)
        rows.append({"task": cfg.task, "label": method_label(cfg.method, cfg.kd), "seed": args.seed,
                     "rho": cfg.rho if cfg.method == "admm" else None, "run": _run_key(run_dir),
                     "finished": is_finished(run_dir)})
    return pd.DataFrame(rows, columns=["task", "label", "seed", "rho", "run", "finished"])


def run_study(preset: Preset | str, study: str | Sequence[str], results_dir: str | os.PathLike[str] = "results",
              glue_dir: str | None = None, train: bool = True, log: Callable[[str], None] | None = print
              ) -> pd.DataFrame:
    """Train (or reuse) every run of a study and return its rows of :func:`nxmlab.report.load_results`.

    Args:
        preset: A :class:`~nxmlab.presets.Preset` or a preset name.
        study: ``"table"``, ``"rho"``, ``"dynamics"`` or a list of them (see :mod:`nxmlab.presets`).
        results_dir: Results store root.
        glue_dir: GLUE mirror (``None``: ``$NXMLAB_GLUE_DIR``, else the Hub).
        train: ``False`` only loads finished runs (missing ones are reported, not trained).
        log: Progress printer (one line per run); ``None`` for silence.

    Returns:
        One row per finished run of the study, with the extra column ``run_dir`` (a Path).
    """
    from .recipes import run_dir_for, run_experiment

    preset = resolve_preset(preset)
    runs = preset_runs(preset, study, str(results_dir), glue_dir)
    with _quiet_datasets():
        keys, missing = _run_all(runs, train, log, run_dir_for, run_experiment)
    df = load_results(results_dir)
    df = df[df["run"].map(lambda r: Path(r).as_posix()).isin(set(keys))].copy()
    df["run_dir"] = [Path(results_dir) / r for r in df["run"]]
    if missing and log:
        log(f"{missing} of {len(runs)} runs are missing; tables and plots show the finished ones")
    return df.reset_index(drop=True)


@contextlib.contextmanager
def _quiet_datasets():
    """No per-map progress bars from ``datasets`` while runs load their data (restored afterwards)."""
    from datasets.utils import logging as ds_logging

    enabled = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            ds_logging.enable_progress_bar()


def _run_all(runs, train, log, run_dir_for, run_experiment) -> tuple[list[str], int]:
    keys, missing = [], 0
    for i, (cfg, args) in enumerate(runs, 1):
        run_dir = run_dir_for(cfg, args)
        keys.append(_run_key(run_dir))
        what = f"[{i}/{len(runs)}] {cfg.task} {method_label(cfg.method, cfg.kd)} seed {args.seed}" + (
            f" rho {cfg.rho:g}" if cfg.method == "admm" else "")
        if is_finished(run_dir):
            metrics = read_json(run_dir / "metrics.json")
            if log:
                log(f"{what}: reused, score {100 * metrics['score']:.1f}")
            continue
        if not train:
            missing += 1
            if log:
                log(f"{what}: not run yet (train=False)")
            continue
        if log:
            log(f"{what}: training ...")
        tic = time.perf_counter()
        metrics = run_experiment(cfg, args)
        if log:
            log(f"{what}: done in {time.perf_counter() - tic:.0f} s, score {100 * metrics['score']:.1f}")
    return keys, missing


# --------------------------------------------------------------------------- GLUE table
def glue_summary(results: pd.DataFrame, tasks: Sequence[str] | None = None) -> pd.DataFrame:
    """Numeric GLUE summary: one row per (label, task) with ``mean, std, n`` over seeds (×100).

    The ``avg`` task is the mean over tasks per seed (seeds that have every task), then
    over seeds, as in :func:`nxmlab.report.glue_table`.
    """
    columns = ["label", "task", "mean", "std", "n"]
    if results.empty:
        return pd.DataFrame(columns=columns)
    tasks = list(tasks) if tasks else _task_order(results["task"])
    df = results[results["task"].isin(tasks)]
    rows = []
    for label in _order(df["label"]):
        group = df[df["label"] == label]
        for task in tasks:
            values = group.loc[group["task"] == task, "score"].dropna()
            if not values.empty:
                rows.append({"label": label, "task": task, "mean": values.mean(),
                             "std": values.std(ddof=1) if len(values) > 1 else float("nan"), "n": len(values)})
        per_seed = group.pivot_table(index="seed", columns="task", values="score", aggfunc="mean")
        if set(tasks) <= set(per_seed.columns):
            avg = per_seed[tasks].dropna().mean(axis=1)
            if not avg.empty:
                rows.append({"label": label, "task": "avg", "mean": avg.mean(),
                             "std": avg.std(ddof=1) if len(avg) > 1 else float("nan"), "n": len(avg)})
    return pd.DataFrame(rows, columns=columns)


def render_glue_table(results: pd.DataFrame, tasks: Sequence[str] | None = None) -> pd.DataFrame:
    """The GLUE table as strings (``mean ± std`` with several seeds); see :func:`nxmlab.report.glue_table`."""
    return glue_table(results, list(tasks) if tasks else None)


def _means(summary: pd.DataFrame) -> pd.DataFrame:
    if summary.empty:
        return pd.DataFrame()
    wide = summary.pivot(index="label", columns="task", values="mean")
    tasks = [t for t in dict.fromkeys(summary["task"]) if t != "avg"]  # the summary's (the caller's) order
    cols = tasks + (["avg"] if "avg" in wide else [])
    return wide.reindex(index=_order(wide.index), columns=cols)


def gap_table(summary: pd.DataFrame, baseline: str = "dense") -> pd.DataFrame:
    """Each other label's mean score minus ``baseline``'s, per task and on the average (points)."""
    wide = _means(summary)
    if wide.empty or baseline not in wide.index:
        return pd.DataFrame()
    return wide.drop(index=baseline) - wide.loc[baseline]


#: The comparisons behind the paper's claims: (better, worse).
COMPARISONS: tuple[tuple[str, str], ...] = (
    ("admm", "magnitude"), ("admm+kd", "magnitude+kd"), ("magnitude+kd", "magnitude"), ("admm+kd", "admm"),
)


def difference_table(summary: pd.DataFrame, pairs: Sequence[tuple[str, str]] = COMPARISONS) -> pd.DataFrame:
    """``a − b`` of mean scores per task and average, for each pair whose labels both exist."""
    wide = _means(summary)
    rows = {f"{a} − {b}": wide.loc[a] - wide.loc[b] for a, b in pairs if a in wide.index and b in wide.index}
    return pd.DataFrame(rows).T if rows else pd.DataFrame()


_CLAIMS = (
    ("ADMM beats one-shot magnitude pruning (ASP)", "admm", "magnitude",
     "+1.7 GLUE average points (BERT-base, 4:2)"),
    ("ADMM beats magnitude pruning, both with KD", "admm+kd", "magnitude+kd", "ADMM ahead"),
    ("KD helps ADMM", "admm+kd", "admm", "KD improves the sparse model"),
    ("KD helps magnitude pruning", "magnitude+kd", "magnitude", "KD improves the sparse model"),
)


def paper_claims(summary: pd.DataFrame) -> pd.DataFrame:
    """Whether the paper's qualitative claims hold in ``summary`` (computed, never hard-coded).

    Each claim compares the GLUE average of two labels (``avg`` when both have it, else
    the mean over the tasks both have).  ``holds`` is ``None`` when a label is missing.
    """
    wide = _means(summary)
    rows = []
    for claim, a, b, paper in _CLAIMS:
        delta, basis = None, "missing runs"
        if not wide.empty and a in wide.index and b in wide.index:
            if "avg" in wide and pd.notna(wide.at[a, "avg"]) and pd.notna(wide.at[b, "avg"]):
                delta, basis = float(wide.at[a, "avg"] - wide.at[b, "avg"]), "GLUE average"
            else:
                common = [t for t in wide.columns if t != "avg" and pd.notna(wide.at[a, t]) and pd.notna(wide.at[b, t])]
                if common:
                    delta = float((wide.loc[a, common] - wide.loc[b, common]).mean())
                    basis = f"mean over {', '.join(common)}"
        rows.append({"claim": claim, "comparison": f"{a} − {b}", "paper": paper, "measured": delta,
                     "basis": basis, "holds": None if delta is None else bool(delta > 0)})
    return pd.DataFrame(rows, columns=["claim", "comparison", "paper", "measured", "basis", "holds"])


def format_claims(claims: pd.DataFrame, tie: float = 0.5) -> str:
    """One line per claim: holds / does not hold / not measured (``|Δ| < tie`` points is flagged as a near tie)."""
    lines = []
    for row in claims.itertuples():
        if row.holds is None:
            verdict = "not measured (needs both methods)"
        else:
            verdict = f"{'HOLDS' if row.holds else 'does NOT hold'}: {row.measured:+.2f} points ({row.basis})"
            if abs(row.measured) < tie:
                verdict += f"; |Δ| < {tie:g}: a near tie, within run-to-run noise"
        lines.append(f"{row.claim} [{row.comparison}; paper: {row.paper}] -> {verdict}")
    return "\n".join(lines)


def _md(table: pd.DataFrame, index_name: str, fmt: str = "{:+.1f}") -> str:
    from .report import to_markdown

    if table.empty:
        return "_not available_\n"
    return to_markdown(table.apply(lambda col: col.map(lambda v: "–" if pd.isna(v) else fmt.format(v))), index_name)


def write_glue_table(results: pd.DataFrame, figures_dir: str | os.PathLike[str] = "figures",
                     tasks: Sequence[str] | None = None, title: str = "") -> list[Path]:
    """Write ``glue_table.md`` (table, gaps to dense, differences, claims) and ``glue_table.csv``.

    The CSV is numeric and long: ``label, task, mean, std, n`` (×100; ``task == "avg"``
    is the GLUE average).
    """
    from .report import to_markdown

    folder = Path(figures_dir)
    folder.mkdir(parents=True, exist_ok=True)
    summary = glue_summary(results, tasks)
    claims = paper_claims(summary)
    parts = [f"# GLUE table{': ' + title if title else ''}\n",
             "Task scores ×100 (CoLA MCC, STS-B mean of Pearson/Spearman, MRPC/QQP mean of F1/accuracy, "
             "accuracy elsewhere); `mean ± std` over seeds.\n",
             to_markdown(render_glue_table(results, tasks)),
             "\n## Gap to dense (points)\n", _md(gap_table(summary), "method"),
             "\n## Differences (points)\n", _md(difference_table(summary), "comparison"),
             "\n## Paper claims\n"]
    parts += [f"- {line}" for line in format_claims(claims).splitlines()]
    md, csv = folder / "glue_table.md", folder / "glue_table.csv"
    md.write_text("\n".join(parts) + "\n")
    summary.to_csv(csv, index=False, float_format="%.4f")
    return [md, csv]


def plot_glue_bars(results: pd.DataFrame, tasks: Sequence[str] | None = None):
    """Left: score per task (and GLUE average), one bar per method, error bars = std over seeds.
    Right (when a dense run exists): each sparse method's gap to dense, in points.

    The gap panel is where the differences between methods are visible; on the absolute
    axis they are a few percent of the bar height.
    """
    import seaborn as sns
    from matplotlib.patches import Patch

    n_groups = len(tasks or set(results["task"])) + 1 if not results.empty else 1
    has_dense = not results.empty and "dense" in set(results["label"])
    fig, axes = _subplots(ncols=2 if has_dense else 1, width=max(5.0, 1.4 * n_groups + 1.5), height=4.0)
    ax = axes[0, 0]
    if results.empty:
        _empty(ax, "no finished runs")
        return fig
    tasks = list(tasks) if tasks else _task_order(results["task"])
    df = results[results["task"].isin(tasks)][["label", "task", "seed", "score"]]
    per_seed = df.pivot_table(index=["label", "seed"], columns="task", values="score", aggfunc="mean")
    if set(tasks) <= set(per_seed.columns):
        avg = per_seed[tasks].dropna().mean(axis=1).rename("score").reset_index().assign(task="avg")
        df = pd.concat([df, avg], ignore_index=True)
    order = [t for t in [*tasks, "avg"] if t in set(df["task"])]
    labels = _order(df["label"])
    palette = dict(zip(labels, sns.color_palette(n_colors=len(labels)), strict=True))
    several = df.groupby(["label", "task"]).size().max() > 1
    sns.barplot(data=df, x="task", y="score", hue="label", order=order, hue_order=labels, palette=palette,
                errorbar=("sd") if several else None, ax=ax, legend=not has_dense)
    ax.set_xlabel("GLUE task (avg = mean over tasks)")
    ax.set_ylabel(SCORE_AXIS)
    ax.set_title("Final validation score per method")
    if not has_dense:
        ax.legend(title="method", loc="upper left", bbox_to_anchor=(1.0, 1.0))
        return fig
    dense = df[df["label"] == "dense"].groupby(["task", "seed"])["score"].mean()
    gaps = df[df["label"] != "dense"].join(dense.rename("dense"), on=["task", "seed"]).dropna(subset=["dense"])
    gaps = gaps.assign(gap=gaps["score"] - gaps["dense"])
    ax = axes[0, 1]
    if gaps.empty:
        _empty(ax, "no sparse run with a dense run of the same task and seed")
        return fig
    sparse = [label for label in labels if label != "dense"]
    sns.barplot(data=gaps, x="task", y="gap", hue="label", order=[t for t in order if t in set(gaps["task"])],
                hue_order=[label for label in sparse if label in set(gaps["label"])], palette=palette,
                errorbar=("sd") if several else None, ax=ax)
    ax.axhline(0.0, color="0.2", linewidth=1.0)
    ax.set_xlabel("GLUE task (avg = mean over tasks)")
    ax.set_ylabel("score − dense score (points)")
    ax.set_title("Gap to dense (same task and seed)")
    handles, names = ax.get_legend_handles_labels()
    ax.get_legend().remove()
    fig.legend([Patch(color=palette["dense"]), *handles], ["dense", *names], title="method",
               loc="outside right upper")
    return fig


# ----------------------------------------------------------------------------- rho sweep
def rho_frame(results: pd.DataFrame) -> pd.DataFrame:
    """ADMM runs of a rho sweep: score before the prune, after it, and after retraining (×100)."""
    cols = ["task", "seed", "rho", "before_prune", "after_prune", "final", "prune_drop", "retrain_gain"]
    df = results[(results["method"] == "admm") & ~results["kd"].astype(bool)] if not results.empty else results
    if df.empty:
        return pd.DataFrame(columns=cols)
    out = df[["task", "seed", "rho", "before_prune", "after_prune", "score"]].rename(columns={"score": "final"})
    out = out.astype({"rho": float})
    out["prune_drop"] = out["before_prune"] - out["after_prune"]
    out["retrain_gain"] = out["final"] - out["after_prune"]
    return out.sort_values(["task", "seed", "rho"]).reset_index(drop=True)[cols]


def prune_drop_claim(rho_df: pd.DataFrame) -> dict[str, Any]:
    """Does a too small rho lose accuracy at the hard prune?  (computed from ``rho_frame``)

    Compares the mean prune drop (score before − after the hard prune, over tasks and
    seeds) at the smallest and at the largest rho; also gives Spearman's correlation
    between log rho and the drop over all runs.
    """
    if rho_df.empty or rho_df["rho"].nunique() < 2:
        return {"holds": None, "message": "needs ADMM runs at two or more rho values"}
    by_rho = rho_df.groupby("rho")["prune_drop"].mean().sort_index()
    small, large = by_rho.index[0], by_rho.index[-1]
    corr = float(rho_df[["rho", "prune_drop"]].corr(method="spearman").iloc[0, 1]) if len(rho_df) > 2 else float("nan")
    holds = bool(by_rho.iloc[0] > by_rho.iloc[-1])
    message = (f"prune drop at rho={small:g}: {by_rho.iloc[0]:+.1f} points, at rho={large:g}: {by_rho.iloc[-1]:+.1f} "
               f"(Spearman(rho, drop) = {corr:+.2f}) -> 'too small rho loses accuracy at the prune' "
               f"{'HOLDS' if holds else 'does NOT hold'} here")
    return {"holds": holds, "drop_by_rho": by_rho.to_dict(), "spearman": corr, "message": message}


def primal_trajectories(results: pd.DataFrame) -> pd.DataFrame:
    """``||W − Z||_F`` over all targets (``sqrt(Σ primal²)``) per dynamics record of each ADMM run."""
    frames = []
    for row in results.itertuples():
        if row.method != "admm":
            continue
        dyn = load_dynamics(row.run_dir)
        if dyn.empty:
            continue
        total = dyn.groupby(["step", "event"], sort=True)["primal"].apply(lambda s: math.sqrt(float((s ** 2).sum())))
        frame = total.rename("primal_norm").reset_index()
        frame = frame.assign(task=row.task, seed=row.seed, rho=float(row.rho), label=row.label)
        frames.append(frame)
    cols = ["task", "seed", "rho", "label", "step", "event", "primal_norm"]
    if not frames:
        return pd.DataFrame(columns=cols)
    return pd.concat(frames, ignore_index=True)[cols]


def _rho_palette(values: Iterable[float]):
    import seaborn as sns

    values = sorted(set(values))
    return dict(zip(values, sns.color_palette("viridis", len(values)), strict=True))


def plot_rho_scores(rho_df: pd.DataFrame):
    """Final score vs rho (log x), one line per task (mean ± std over seeds)."""
    import seaborn as sns

    fig, axes = _subplots(width=5.5)
    ax = axes[0, 0]
    if rho_df.empty:
        _empty(ax, "no ADMM runs")
        return fig
    sns.lineplot(data=rho_df, x="rho", y="final", hue="task", marker="o", errorbar="sd", ax=ax)
    ax.set_xscale("log")
    ax.set_xlabel(RHO_AXIS)
    ax.set_ylabel(SCORE_AXIS)
    ax.set_title("ADMM: final score vs ρ")
    return fig


def plot_prune_stages(rho_df: pd.DataFrame):
    """Score before the hard prune, right after it, and after retraining, vs rho; one panel per task."""
    import seaborn as sns

    fig, axes, tasks = _task_panels(rho_df, 5.0, "no ADMM runs")
    if not tasks:
        return fig
    stages = {"before_prune": "end of ADMM (before prune)", "after_prune": "after hard prune",
              "final": "after retraining"}
    long = rho_df.melt(id_vars=["task", "seed", "rho"], value_vars=list(stages), var_name="stage",
                       value_name="score")
    long["stage"] = long["stage"].map(stages)
    for ax, task in zip(axes[0], tasks, strict=True):
        sns.lineplot(data=long[long["task"] == task], x="rho", y="score", hue="stage", hue_order=list(stages.values()),
                     marker="o", errorbar="sd", ax=ax)
        ax.set_xscale("log")
        ax.set_xlabel(RHO_AXIS)
        ax.set_ylabel(SCORE_AXIS)
        ax.set_title(f"{task}: score around the hard prune")
    return fig


def plot_primal_trajectories(traj: pd.DataFrame):
    """``||W − Z||_F`` (all targets) vs step, one line per rho (log y); one panel per task."""
    import seaborn as sns

    fig, axes, tasks = _task_panels(traj, 5.5, "no ADMM dynamics recorded")
    if not tasks:
        return fig
    palette = _rho_palette(traj["rho"])
    for ax, task in zip(axes[0], tasks, strict=True):
        data = traj[(traj["task"] == task) & (traj["primal_norm"] > 0)]
        sns.lineplot(data=data, x="step", y="primal_norm", hue="rho", palette=palette, errorbar=None,
                     marker=".", ax=ax)
        ax.set_yscale("log")
        _readable_log_y(ax)
        _integer_x(ax)
        ax.set_xlabel(STEP_AXIS)
        ax.set_ylabel("‖W − Z‖_F over all targets (weight units)")
        ax.set_title(f"{task}: primal residual (steps = Z/U updates)")
        handles, labels = ax.get_legend_handles_labels()
        ax.legend(handles, [f"{float(x):g}" for x in labels], title="ρ")
    return fig


# ------------------------------------------------------------------------------ dynamics
DYNAMICS_COLUMNS: tuple[str, ...] = (
    "phase", "step", "epoch", "event", "target", "component", "layer", "rho", "primal", "rel_dist", "near_zero",
    "penalty", "dual", "flips", "rho_used",
)


def load_dynamics(path: str | os.PathLike[str]) -> pd.DataFrame:
    """``dynamics.jsonl`` of a run (folder or file) as a DataFrame with :data:`DYNAMICS_COLUMNS`.

    Missing files give an empty frame; update-only columns (``dual, flips, rho_used``) are
    NaN on ``init``/``log`` rows; ``component``/``layer`` are filled from the target name
    when absent.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "dynamics.jsonl"
    rows = read_jsonl(path)
    df = pd.DataFrame(rows)
    for col in DYNAMICS_COLUMNS:
        if col not in df:
            df[col] = np.nan if col not in ("phase", "event", "target", "component") else None
    if df.empty:
        return df[list(DYNAMICS_COLUMNS)]
    missing = df["component"].isna() | df["layer"].isna()
    if missing.any():
        described = df.loc[missing, "target"].map(describe_target)
        df.loc[missing, "component"] = described.map(lambda d: d[0])
        df.loc[missing, "layer"] = described.map(lambda d: d[1])
    df["step"] = df["step"].astype(int)
    extra = [c for c in df.columns if c not in DYNAMICS_COLUMNS]
    return df[[*DYNAMICS_COLUMNS, *extra]]


def module_sizes(run_dir: str | os.PathLike[str]) -> dict[str, int]:
    """Number of weights of each target, from the run's ``masks.npz`` (empty if absent)."""
    path = Path(run_dir) / "masks.npz"
    if not path.exists():
        return {}
    sets = load_masks(path)
    masks = sets.get("final") or next(iter(sets.values()), {})
    return {name: int(mask.numel()) for name, mask in masks.items()}


def study_dynamics(results: pd.DataFrame, labels: Sequence[str] = ("admm", "admm+kd"),
                   rho: float | None = None) -> pd.DataFrame:
    """Dynamics of the study's ADMM runs (optionally one rho), with ``task, label, seed`` and
    ``flip_frac`` (flips / weights of the target) columns."""
    frames = []
    for row in results.itertuples():
        if row.label not in labels or (rho is not None and not math.isclose(float(row.rho), rho)):
            continue
        dyn = load_dynamics(row.run_dir)
        if dyn.empty:
            continue
        sizes = module_sizes(row.run_dir)
        dyn = dyn.assign(task=row.task, label=row.label, seed=row.seed, run=row.run)
        dyn["numel"] = dyn["target"].map(sizes).astype(float)
        dyn["flip_frac"] = dyn["flips"].astype(float) / dyn["numel"]
        frames.append(dyn)
    if not frames:
        return pd.DataFrame(columns=[*DYNAMICS_COLUMNS, "task", "label", "seed", "run", "numel", "flip_frac"])
    return pd.concat(frames, ignore_index=True)


def _facet_grid(dyn: pd.DataFrame) -> tuple[list[str], list[str]]:
    """Tasks (one row each) and method labels (one column each) of a dynamics frame."""
    if dyn.empty:
        return [], []
    return _task_order(dyn["task"]), _order(dyn["label"])


def _each_facet(dyn: pd.DataFrame, tasks: Sequence[str], labels: Sequence[str], axes, rows_per_task: int = 1):
    """Yield ``(row, col, task, label, data)`` for each (task, method) facet that has data;
    facets without data get an "no ... run" note in their axes and are skipped."""
    for i, task in enumerate(tasks):
        for col, label in enumerate(labels):
            data = dyn[(dyn["task"] == task) & (dyn["label"] == label)]
            if data.empty:
                for k in range(rows_per_task):
                    _empty(axes[rows_per_task * i + k, col], f"no {label} run on {task}" if k == 0 else "")
                continue
            yield rows_per_task * i, col, task, label, data


def _legend_right(ax, title: str) -> None:
    import seaborn as sns

    if ax.get_legend() is not None:
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.0, 1.0), title=title)


def plot_rel_dist(dyn: pd.DataFrame):
    """Relative distance to the NxM set vs step, per component and per layer (means over seeds
    and over the other grouping); two rows per task, one column per method."""
    import seaborn as sns

    tasks, labels = _facet_grid(dyn)
    fig, axes = _subplots(ncols=max(1, len(labels)), nrows=2 * max(1, len(tasks)), width=4.6, height=3.2,
                          sharey="row")
    if dyn.empty:
        _empty(axes[0, 0], "no ADMM dynamics recorded")
        _empty(axes[1, 0], "")
        return fig
    for row, col, task, label, data in _each_facet(dyn, tasks, labels, axes, rows_per_task=2):
        top, bottom = axes[row, col], axes[row + 1, col]
        last = col == len(labels) - 1
        by_comp = data.groupby(["step", "component"], as_index=False)["rel_dist"].mean()
        sns.lineplot(data=by_comp, x="step", y="rel_dist", hue="component",
                     hue_order=[c for c in COMPONENTS if c in set(by_comp["component"])], ax=top, legend=last)
        by_layer = data.groupby(["step", "layer"], as_index=False)["rel_dist"].mean()
        sns.lineplot(data=by_layer, x="step", y="rel_dist", hue="layer", palette="crest", ax=bottom, legend=last)
        top.set_title(f"{task} {label}: per component")
        bottom.set_title(f"{task} {label}: per layer (0 = bottom)")
        for ax in (top, bottom):
            _integer_x(ax)
            ax.set_xlabel(STEP_AXIS)
            ax.set_ylabel("‖W − Proj(W)‖ / ‖W‖ (fraction)")
        if last:
            _legend_right(top, "component")
            _legend_right(bottom, "layer")
    return fig


def plot_layer_heatmap(dyn: pd.DataFrame, stat: str = "rel_dist"):
    """Heatmap layer × component of ``stat`` at the last record of the ADMM phase (mean over runs);
    one row per task, one column per method."""
    import seaborn as sns

    tasks, labels = _facet_grid(dyn)
    layers = dyn["layer"].nunique() if not dyn.empty else 1
    fig, axes = _subplots(ncols=max(1, len(labels)), nrows=max(1, len(tasks)), width=4.8,
                          height=max(3.0, 0.45 * layers + 2.2))
    if dyn.empty:
        _empty(axes[0, 0], "no ADMM dynamics recorded")
        return fig
    for row, col, task, label, data in _each_facet(dyn, tasks, labels, axes):
        ax = axes[row, col]
        last = data[data["step"] == data["step"].max()]
        grid = last.pivot_table(index="layer", columns="component", values=stat, aggfunc="mean")
        grid = grid.reindex(columns=[c for c in COMPONENTS if c in grid.columns]).sort_index()
        sns.heatmap(grid, annot=True, fmt=".3f", cmap="rocket_r", ax=ax,
                    cbar_kws={"label": "‖W − Proj(W)‖ / ‖W‖ (fraction)"})
        ax.set_title(f"{task} {label}: end of ADMM (step {int(last['step'].max())})")
        ax.tick_params(axis="x", labelrotation=45)
        ax.set_xlabel("component")
        ax.set_ylabel("layer (0 = bottom)")
    return fig


def plot_flips(dyn: pd.DataFrame):
    """Mask flips per Z/U update (% of each component's weights); one row per task, one column per method."""
    import seaborn as sns

    updates = dyn[dyn["event"] == "update"] if not dyn.empty else dyn
    tasks, labels = _facet_grid(updates)
    fig, axes = _subplots(ncols=max(1, len(labels)), nrows=max(1, len(tasks)), width=4.6, sharey=True)
    if updates.empty:
        _empty(axes[0, 0], "no Z/U updates recorded")
        return fig
    for row, col, task, label, data in _each_facet(updates, tasks, labels, axes):
        ax = axes[row, col]
        agg = data.groupby(["step", "component"], as_index=False)[["flips", "numel"]].sum()
        agg["percent"] = 100 * agg["flips"] / agg["numel"]
        sns.lineplot(data=agg, x="step", y="percent", hue="component", marker="o",
                     hue_order=[c for c in COMPONENTS if c in set(agg["component"])], ax=ax,
                     legend=col == len(labels) - 1)
        _integer_x(ax)
        ax.set_xlabel("optimizer step of the Z/U update")
        ax.set_ylabel("mask flips (% of the component's weights)")
        ax.set_title(f"{task} {label}: flips per update")
        if col == len(labels) - 1:
            _legend_right(ax, "component")
    return fig


#: Honest names of the weight snapshots available to :func:`weight_snapshots`.
SNAPSHOT_LABELS = {
    "start": "start: pretrained W",
    "admm_mid": "middle: W half-way through ADMM",
    "admm_end": "end of ADMM: W before the hard prune",
    "final": "end: final W (after hard prune + retraining)",
}


def weight_snapshots(run_dir: str | os.PathLike[str]) -> dict[str, dict[str, torch.Tensor]]:
    """Target weights of an ADMM run at the times the store allows, keyed by :data:`SNAPSHOT_LABELS`.

    * ``start``: the pretrained weights (rebuilt with the run's model and seed);
    * ``admm_mid``: W at the first Z/U update past half of the ADMM phase
      (``weights_admm_mid.safetensors``);
    * ``admm_end``: W at the end of ADMM, before the hard prune (``admm_state.pt``);
    * ``final``: the final model (pruned positions are exactly zero).

    Missing pieces (e.g. a fresh clone without ``model/`` or ``admm_state.pt``) are skipped.
    """
    from safetensors.torch import load_file

    from .glue import get_task
    from .models import load_model_and_tokenizer
    from .recipes import MID_WEIGHTS_FILE
    from .trainer import ADMM_STATE_FILE

    run_dir = Path(run_dir)
    metrics = read_json(run_dir / "metrics.json") or {}
    masks = load_masks(run_dir / "masks.npz", "final").get("final", {}) if (run_dir / "masks.npz").exists() else {}
    names = list(masks)
    out: dict[str, dict[str, torch.Tensor]] = {}
    if metrics and names:
        task = get_task(metrics["task"])
        model, _ = load_model_and_tokenizer(metrics["model"], task.num_labels, task.is_regression, metrics["seed"])
        modules = dict(model.named_modules())
        out["start"] = {n: modules[n].weight.detach().clone() for n in names if n in modules}
    mid_file = run_dir / MID_WEIGHTS_FILE
    if mid_file.exists():
        out["admm_mid"] = load_file(mid_file)
    state_file = run_dir / ADMM_STATE_FILE
    if state_file.exists():
        state = torch.load(state_file, weights_only=True)
        if "W" in state:
            out["admm_end"] = dict(state["W"])
    weights_file = run_dir / "model" / "model.safetensors"
    if weights_file.exists() and names:
        weights = load_file(weights_file)
        out["final"] = {n: weights[f"{n}.weight"] for n in names if f"{n}.weight" in weights}
    return out


def magnitude_frame(snapshots: Mapping[str, Mapping[str, torch.Tensor]], masks: Mapping[str, torch.Tensor],
                    max_per_group: int = 20000, seed: int = 0) -> pd.DataFrame:
    """Long frame ``stage, position (kept/pruned), abs_w`` of |w| at the final mask's kept and pruned
    positions, subsampled to at most ``max_per_group`` values per (stage, position).

    Pruned positions of the final model are exactly zero and are left out (nothing to show).
    """
    rng = np.random.default_rng(seed)
    rows = []
    for stage, weights in snapshots.items():
        kept, pruned = [], []
        for name, mask in masks.items():
            if name not in weights:
                continue
            w = weights[name].detach().abs().float().flatten().numpy()
            m = mask.flatten().numpy()
            kept.append(w[m])
            pruned.append(w[~m])
        for position, parts in (("kept", kept), ("pruned", pruned)):
            if not parts or (stage == "final" and position == "pruned"):
                continue
            values = np.concatenate(parts)
            if len(values) > max_per_group:
                values = rng.choice(values, max_per_group, replace=False)
            rows.append(pd.DataFrame({"stage": SNAPSHOT_LABELS.get(stage, stage), "position": position,
                                      "abs_w": values}))
    if not rows:
        return pd.DataFrame(columns=["stage", "position", "abs_w"])
    return pd.concat(rows, ignore_index=True)


def first_run(results: pd.DataFrame, labels: Sequence[str] = ("admm", "admm+kd"), rho: float | None = None):
    """The first run (a row, in task and seed order) with one of ``labels`` (in that preference), or None."""
    if results.empty:
        return None
    for label in labels:
        df = results[results["label"] == label]
        if rho is not None and not df.empty:
            df = df[df["rho"].astype(float).map(lambda r: math.isclose(r, rho))]
        if not df.empty:
            df = df.assign(_t=df["task"].map(_task_order(results["task"]).index)).sort_values(["_t", "seed"])
            return df.drop(columns="_t").iloc[0]
    return None


MAGNITUDES_FILE = "magnitudes.parquet"


def run_magnitudes(run_dir: str | os.PathLike[str], max_per_group: int = 20000) -> pd.DataFrame:
    """:func:`magnitude_frame` of a run's :func:`weight_snapshots` against its final mask.

    The middle and end-of-ADMM snapshots and the final model are large and not committed,
    so the subsampled frame is cached in the run folder as ``magnitudes.parquet`` (a few
    hundred kB) the first time all four snapshots are there; later calls, e.g. on a fresh
    clone, read the cache instead of drawing a figure with stages missing.
    """
    run_dir = Path(run_dir)
    path = run_dir / "masks.npz"
    if not path.exists():
        return magnitude_frame({}, {})
    cache = run_dir / MAGNITUDES_FILE
    if cache.exists():
        frame = pd.read_parquet(cache)
        frame["abs_w"] = frame["abs_w"].astype(np.float32)
        return frame
    masks = load_masks(path, "final").get("final", {})
    snapshots = weight_snapshots(run_dir)
    frame = magnitude_frame(snapshots, masks, max_per_group)
    if set(snapshots) == set(SNAPSHOT_LABELS):
        tmp = cache.with_name(f".{cache.name}.tmp")
        frame.astype({"abs_w": np.float16}).to_parquet(tmp, index=False)
        os.replace(tmp, cache)
    return frame


def plot_magnitudes(frame: pd.DataFrame, title: str = ""):
    """Histograms of |w| at kept vs pruned positions (of the final mask), one panel per snapshot."""
    import seaborn as sns

    stages = list(dict.fromkeys(frame["stage"])) if not frame.empty else []
    fig, axes = _subplots(ncols=max(1, len(stages)), width=4.8)
    if frame.empty:
        _empty(axes[0, 0], "no weights available (model/ or admm_state.pt missing)")
        return fig
    for ax, stage in zip(axes[0], stages, strict=True):
        data = frame[frame["stage"] == stage]
        upper = float(np.quantile(data["abs_w"], 0.995)) or 1.0
        sns.histplot(data=data, x="abs_w", hue="position", hue_order=["kept", "pruned"], bins=60,
                     binrange=(0.0, upper), stat="density", common_norm=False, element="step", ax=ax)
        ax.set_xlabel("|w| (weight units)")
        ax.set_ylabel("density (per unit |w|)")
        ax.set_title(stage if len(stage) < 48 else stage.replace(": ", ":\n", 1))
    if title:
        fig.suptitle(title)
    return fig


# --------------------------------------------------------------------------- mask distance
def mask_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Normalised Hamming distance of two keep-masks: ``|A △ B| / (|A| + |B|)``.

    For masks of equal density this is the fraction of kept positions that differ,
    ``|A ∧ ¬B| / |A|``: 0 for identical masks, 1 for disjoint ones, ``1 − m/n`` expected
    for two independent random n:m masks.
    """
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    a, b = a.bool(), b.bool()
    total = int(a.sum()) + int(b.sum())
    return 0.0 if total == 0 else int((a ^ b).sum()) / total


def random_mask_distance(pattern: str | NxM) -> float:
    """Expected :func:`mask_distance` of two independent uniformly random n:m masks (``1 − m/n``)."""
    p = NxM.parse(pattern)
    return 1.0 - p.m / p.n


def mask_distance_table(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> pd.DataFrame:
    """Per target: ``module, component, layer, kept, differ, distance`` for the modules both sets have."""
    rows = []
    for name in a:
        if name not in b:
            continue
        ma, mb = a[name].bool(), b[name].bool()
        component, layer = describe_target(name)
        rows.append({"module": name, "component": component, "layer": layer,
                     "kept": int(ma.sum()) + int(mb.sum()), "differ": int((ma ^ mb).sum()),
                     "distance": mask_distance(ma, mb)})
    return pd.DataFrame(rows, columns=["module", "component", "layer", "kept", "differ", "distance"])


def overall_distance(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """Weight-count-weighted :func:`mask_distance` over every module both sets have (NaN if none)."""
    table = mask_distance_table(a, b)
    return float("nan") if table.empty or table["kept"].sum() == 0 else table["differ"].sum() / table["kept"].sum()


#: Names of the masks compared by :func:`reference_masks`.
MASK_NAMES = ("pretrained magnitude", "dense magnitude (ASP)", "ADMM final", "ADMM+KD final")


def reference_masks(results: pd.DataFrame, task: str, seed: int, rho: float | None = None
                    ) -> dict[str, dict[str, torch.Tensor]]:
    """The masks of one task and seed (default-rho ADMM unless ``rho`` is given):

    ``pretrained magnitude`` (one-shot NxM of the pretrained weights), ``dense magnitude (ASP)``
    (of the dense fine-tuned weights), ``ADMM final`` and ``ADMM+KD final``; absent ones
    are left out.
    """
    df = results[(results["task"] == task) & (results["seed"] == seed) & (results["method"] != "dense")]
    out: dict[str, dict[str, torch.Tensor]] = {}
    for row in df.itertuples():
        path = Path(row.run_dir) / "masks.npz"
        if not path.exists():
            continue
        sets = load_masks(path)
        if "pretrained magnitude" not in out and "pretrained_magnitude" in sets:
            out["pretrained magnitude"] = sets["pretrained_magnitude"]
        if "dense magnitude (ASP)" not in out and "dense_magnitude" in sets:
            out["dense magnitude (ASP)"] = sets["dense_magnitude"]
        if row.method == "admm" and (rho is None or math.isclose(float(row.rho), rho)) and "final" in sets:
            out.setdefault("ADMM+KD final" if row.kd else "ADMM final", sets["final"])
    return {name: out[name] for name in MASK_NAMES if name in out}


def pairwise_distances(named: Mapping[str, Mapping[str, torch.Tensor]]) -> pd.DataFrame:
    """Square matrix of :func:`overall_distance` between named mask sets."""
    names = list(named)
    grid = pd.DataFrame(np.zeros((len(names), len(names))), index=names, columns=names)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            if j > i:
                grid.iloc[i, j] = grid.iloc[j, i] = overall_distance(named[a], named[b])
    return grid


def layer_distance_frame(results: pd.DataFrame, pairs: Sequence[tuple[str, str]] | None = None,
                         rho: float | None = None) -> pd.DataFrame:
    """Per-target distances for mask pairs, over every (task, seed): columns ``pair, task, seed`` +
    :func:`mask_distance_table`'s."""
    pairs = pairs or [("pretrained magnitude", "dense magnitude (ASP)"), ("pretrained magnitude", "ADMM final"),
                      ("dense magnitude (ASP)", "ADMM final")]
    frames = []
    if results.empty:
        return pd.DataFrame(columns=["pair", "task", "seed", "module", "component", "layer", "kept", "differ",
                                     "distance"])
    for task in _task_order(results["task"]):
        for seed in sorted(set(results.loc[results["task"] == task, "seed"])):
            masks = reference_masks(results, task, seed, rho)
            for a, b in pairs:
                if a in masks and b in masks:
                    frames.append(mask_distance_table(masks[a], masks[b]).assign(pair=f"{a} vs {b}", task=task,
                                                                                 seed=seed))
    if not frames:
        return pd.DataFrame(columns=["pair", "task", "seed", "module", "component", "layer", "kept", "differ",
                                     "distance"])
    df = pd.concat(frames, ignore_index=True)
    return df[["pair", "task", "seed", *[c for c in df.columns if c not in ("pair", "task", "seed")]]]


def seed_distances(results: pd.DataFrame, names: Sequence[str] = ("ADMM final", "dense magnitude (ASP)")
                   ) -> pd.DataFrame:
    """Distance between the masks of two seeds, for every task and seed pair (empty with < 2 seeds)."""
    rows = []
    for task in _task_order(results["task"]) if not results.empty else []:
        seeds = sorted(set(results.loc[results["task"] == task, "seed"]))
        masks = {s: reference_masks(results, task, s) for s in seeds}
        for i, s1 in enumerate(seeds):
            for s2 in seeds[i + 1:]:
                for name in names:
                    if name in masks[s1] and name in masks[s2]:
                        rows.append({"task": task, "mask": name, "seeds": f"{s1} vs {s2}",
                                     "distance": overall_distance(masks[s1][name], masks[s2][name])})
    return pd.DataFrame(rows, columns=["task", "mask", "seeds", "distance"])


def task_distance_matrix(results: pd.DataFrame, name: str = "ADMM final") -> pd.DataFrame:
    """Task × task distance of the ``name`` masks, mean over the seeds both tasks have (empty with < 2 tasks)."""
    if results.empty:
        return pd.DataFrame()
    tasks = _task_order(results["task"])
    masks = {(t, s): reference_masks(results, t, s).get(name) for t in tasks
             for s in sorted(set(results.loc[results["task"] == t, "seed"]))}
    tasks = [t for t in tasks if any(m is not None for (tt, _), m in masks.items() if tt == t)]
    if len(tasks) < 2:
        return pd.DataFrame()
    grid = pd.DataFrame(np.zeros((len(tasks), len(tasks))), index=tasks, columns=tasks)
    for i, a in enumerate(tasks):
        for j, b in enumerate(tasks):
            if j <= i:
                continue
            values = [overall_distance(masks[(a, s)], masks[(b, s)]) for (t, s) in masks
                      if t == a and masks[(a, s)] is not None and masks.get((b, s)) is not None]
            grid.iloc[i, j] = grid.iloc[j, i] = float(np.mean(values)) if values else float("nan")
    return grid


def rho_distance_frame(rho_results: pd.DataFrame, reference_results: pd.DataFrame | None = None) -> pd.DataFrame:
    """For each ADMM run of a rho sweep: distance of its final mask to the pretrained and to the dense
    magnitude masks of the same task and seed (the latter from ``reference_results`` when needed)."""
    rows = []
    pool = rho_results if reference_results is None else pd.concat([rho_results, reference_results],
                                                                    ignore_index=True)
    admm = rho_results[(rho_results["method"] == "admm") & ~rho_results["kd"].astype(bool)] \
        if not rho_results.empty else rho_results
    for row in admm.itertuples():
        path = Path(row.run_dir) / "masks.npz"
        if not path.exists():
            continue
        final = load_masks(path, "final").get("final")
        refs = reference_masks(pool, row.task, row.seed)
        for name in ("pretrained magnitude", "dense magnitude (ASP)"):
            if name in refs and final is not None:
                rows.append({"task": row.task, "seed": row.seed, "rho": float(row.rho), "reference": name,
                             "distance": overall_distance(final, refs[name])})
    return pd.DataFrame(rows, columns=["task", "seed", "rho", "reference", "distance"])


def rho_mask_matrix(rho_results: pd.DataFrame, task: str) -> pd.DataFrame:
    """rho × rho distance of ADMM final masks on one task (mean over seeds)."""
    admm = rho_results[(rho_results["task"] == task) & (rho_results["method"] == "admm")
                       & ~rho_results["kd"].astype(bool)] if not rho_results.empty else rho_results
    masks: dict[float, list[tuple[int, dict]]] = {}
    for row in admm.itertuples():
        path = Path(row.run_dir) / "masks.npz"
        if path.exists():
            masks.setdefault(float(row.rho), []).append((row.seed, load_masks(path, "final")["final"]))
    rhos = sorted(masks)
    grid = pd.DataFrame(np.zeros((len(rhos), len(rhos))), index=[f"{r:g}" for r in rhos],
                        columns=[f"{r:g}" for r in rhos])
    for i, a in enumerate(rhos):
        for j, b in enumerate(rhos):
            if j > i:
                by_seed = dict(masks[b])
                values = [overall_distance(m, by_seed[s]) for s, m in masks[a] if s in by_seed]
                grid.iloc[i, j] = grid.iloc[j, i] = float(np.mean(values)) if values else float("nan")
    return grid


def _dist_max(values, pattern: str | NxM | None) -> float:
    """Upper end of distance colour scales and axes: the random-mask level or the data, whichever is larger."""
    values = pd.Series(np.asarray(values, dtype=float)).dropna()
    top = float(values.max()) if not values.empty else 0.0
    ref = random_mask_distance(pattern) if pattern is not None else 1.0
    return min(1.0, max(ref, top) * 1.05)


def plot_layer_distances(frame: pd.DataFrame, pattern: str | NxM | None = None):
    """Heatmaps layer × component of mask distance, one per mask pair (mean over tasks and seeds)."""
    import seaborn as sns

    pairs = list(dict.fromkeys(frame["pair"])) if not frame.empty else []
    layers = frame["layer"].nunique() if not frame.empty else 1
    fig, axes = _subplots(ncols=max(1, len(pairs)), width=4.8, height=max(3.0, 0.45 * layers + 2.2))
    if frame.empty:
        _empty(axes[0, 0], "no pair of masks available")
        return fig
    for ax, pair in zip(axes[0], pairs, strict=True):
        grid = frame[frame["pair"] == pair].pivot_table(index="layer", columns="component", values="distance",
                                                         aggfunc="mean")
        grid = grid.reindex(columns=[c for c in COMPONENTS if c in grid.columns]).sort_index()
        sns.heatmap(grid, annot=True, fmt=".3f", vmin=0.0, vmax=_dist_max(frame["distance"], pattern), cmap="mako_r",
                    ax=ax, cbar_kws={"label": "fraction of kept positions that differ"})
        ax.set_title(pair.replace(" vs ", "\nvs "))
        ax.tick_params(axis="x", labelrotation=45)
        ax.set_xlabel("component")
        ax.set_ylabel("layer (0 = bottom)")
    if pattern is not None:
        fig.suptitle(f"random {NxM.parse(pattern)} masks: {random_mask_distance(pattern):.2f} expected")
    return fig


def plot_matrix(grid: pd.DataFrame, title: str, axis_label: str, pattern: str | NxM | None = None):
    """Annotated heatmap of a square distance matrix (tasks, rho values or mask names)."""
    import seaborn as sns

    size = max(3.6, 0.9 * len(grid) + 2.2)
    fig, axes = _subplots(width=size + 1.0, height=size)
    ax = axes[0, 0]
    if grid.empty:
        _empty(ax, "not enough runs for a matrix")
        return fig
    sns.heatmap(grid, annot=True, fmt=".3f", vmin=0.0, vmax=_dist_max(grid.to_numpy().ravel(), pattern),
                cmap="mako_r", square=True, ax=ax,
                cbar_kws={"label": DIST_AXIS.replace("mask distance ", "").strip("()")})
    ax.set_xlabel(axis_label)
    ax.set_ylabel(axis_label)
    extra = f" (random {NxM.parse(pattern)}: {random_mask_distance(pattern):.2f})" if pattern is not None else ""
    ax.set_title(title + extra)
    return fig


def plot_rho_distances(frame: pd.DataFrame, pattern: str | NxM | None = None):
    """ADMM final mask's distance to the pretrained / dense magnitude masks vs rho (log x)."""
    import seaborn as sns

    fig, axes = _subplots(width=6.0)
    ax = axes[0, 0]
    if frame.empty:
        _empty(ax, "no rho sweep masks")
        return fig
    sns.lineplot(data=frame, x="rho", y="distance", hue="reference", style="task", marker="o", errorbar="sd", ax=ax)
    if pattern is not None:
        ax.axhline(random_mask_distance(pattern), color="grey", linestyle=":", label="random masks")
    ax.set_xscale("log")
    ax.set_xlabel(RHO_AXIS)
    ax.set_ylabel(DIST_AXIS.replace(" (", "\n("))
    ax.set_ylim(0, _dist_max(frame["distance"], pattern))
    ax.set_title("ADMM final mask vs magnitude masks")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def plot_seed_distances(frame: pd.DataFrame, pattern: str | NxM | None = None):
    """Mask distance between seeds, per task and mask kind."""
    import seaborn as sns

    fig, axes = _subplots(width=6.0)
    ax = axes[0, 0]
    if frame.empty:
        _empty(ax, "needs two or more seeds")
        return fig
    sns.barplot(data=frame, x="task", y="distance", hue="mask", errorbar="sd", ax=ax)
    if pattern is not None:
        ax.axhline(random_mask_distance(pattern), color="grey", linestyle=":", label="random masks")
    ax.set_xlabel("GLUE task")
    ax.set_ylabel(DIST_AXIS.replace(" (", "\n("))
    ax.set_ylim(0, _dist_max(frame["distance"], pattern))
    ax.set_title("Masks of different seeds (same task)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig
