"""The study's figures, drawn from the tidy frames of :mod:`nxmlab.study.results.frames` and the
committed files of the results store (never the cache): the GLUE table
(:func:`write_glue_table`, :func:`plot_glue_bars`), the rho sweep (:func:`rho_frame`,
:func:`prune_drop_claim`, :func:`primal_trajectories` and their plots), ADMM's dynamics
(``dynamics.parquet``: :func:`plot_rel_dist`, :func:`plot_layer_heatmap`, :func:`plot_flips`)
and |w| at kept and pruned positions (``magnitudes.parquet``: :func:`plot_magnitudes`).

Mask distances are drawn by :mod:`nxmlab.study.plots.masks`.  Seeds are averaged, and labels
and tasks ordered, by :mod:`nxmlab.study.results.frames` only.  Every figure uses :func:`set_style`
and is written by :func:`savefig` (PNG and PDF, byte-deterministic).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ...targets import COMPONENTS
from ..results import frames
from ..results.store import atomic_write

__all__ = [
    "set_style", "savefig", "write_glue_table", "plot_glue_bars",
    "rho_frame", "prune_drop_claim", "primal_trajectories", "plot_rho_scores", "plot_prune_stages",
    "plot_primal_trajectories", "plot_rel_dist", "plot_layer_heatmap", "plot_flips",
    "load_magnitudes", "plot_magnitudes",
]

SCORE_AXIS = "GLUE task score (×100)"
STEP_AXIS = "optimizer step (ADMM phase)"
RHO_AXIS = "ρ (ADMM penalty weight, log scale)"
REL_DIST_AXIS = "‖W − Proj(W)‖ / ‖W‖ (fraction)"


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
    paths = []
    for ext, metadata in (("png", {"Software": None}), ("pdf", {"CreationDate": None, "Producer": None})):
        path = Path(figures_dir) / f"{name}.{ext}"
        atomic_write(path, lambda tmp, ext=ext, metadata=metadata: fig.savefig(tmp, format=ext, metadata=metadata))
        paths.append(path)
    return paths


def _subplots(ncols: int = 1, nrows: int = 1, width: float = 5.0, height: float = 3.6, **kwargs):
    import matplotlib.pyplot as plt

    return plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False,
                        constrained_layout=True, **kwargs)


def _empty(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, wrap=True)
    ax.set(xticks=[], yticks=[])


def _task_panels(frame: pd.DataFrame, width: float, empty_message: str):
    """One panel per task of ``frame``: ``(fig, axes, tasks)``; an empty frame gets one panel
    saying ``empty_message`` and no tasks."""
    tasks = frames.task_order(frame["task"]) if not frame.empty else []
    fig, axes = _subplots(ncols=max(1, len(tasks)), width=width)
    if not tasks:
        _empty(axes[0, 0], empty_message)
    return fig, axes, tasks


def _integer_x(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))  # "auto" crowds 3-digit steps


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


def _legend_right(ax, title: str) -> None:
    import seaborn as sns

    if ax.get_legend() is not None:
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.0, 1.0), title=title)


# --------------------------------------------------------------------------- GLUE table
def write_glue_table(scores: pd.DataFrame, figures_dir: str | os.PathLike[str] = "figures",
                     tasks: Sequence[str] | None = None, title: str = "",
                     average_tasks: Sequence[str] | None = None) -> list[Path]:
    """Write ``glue_table.md`` (table, gaps to dense, differences, claims) and ``glue_table.csv``.

    Every number comes from :func:`nxmlab.study.results.frames.seed_summary`; the CSV is that
    summary, numeric and long: ``label, task, mean, std, n`` (×100; ``task == "avg"`` is
    the GLUE average).
    """
    folder = Path(figures_dir)
    folder.mkdir(parents=True, exist_ok=True)
    summary = frames.seed_summary(scores, tasks, average_tasks=average_tasks)
    parts = [f"# GLUE table{': ' + title if title else ''}\n",
             "Task scores ×100 (CoLA MCC, STS-B mean of Pearson/Spearman, MRPC/QQP mean of F1/accuracy, "
             "accuracy elsewhere); `mean ± std` over seeds (a cell without ± has one seed)."
             + (f" `avg` is the mean over {', '.join(average_tasks)} only." if average_tasks else "") + "\n",
             frames.to_markdown(frames.glue_table(scores, tasks, average_tasks)),
             "\n## Gap to dense (points)\n", frames.to_markdown(frames.gap_table(summary), "method", "{:+.1f}"),
             "\n## Differences (points)\n",
             frames.to_markdown(frames.difference_table(summary), "comparison", "{:+.1f}"),
             "\n## Paper claims (point estimates)\n",
             "Differences of the means above. Whether a difference is resolved is the paired bootstrap's "
             "verdict (`paired_differences.md`), not these lines'.\n"]
    parts += [f"- {line}" for line in
              frames.format_claims(frames.paper_claims(summary, average_tasks)).splitlines()]
    md, csv = folder / "glue_table.md", folder / "glue_table.csv"
    md.write_text("\n".join(parts) + "\n")
    summary.to_csv(csv, index=False, float_format="%.4f")
    return [md, csv]


def _grouped_bars(ax, summary: pd.DataFrame, groups: Sequence[str], labels: Sequence[str], palette) -> None:
    """Bars of ``summary`` (``label, task, mean, std, n``): a group per task, a bar per label,
    error bars = std over seeds where a cell has several."""
    width = 0.8 / max(1, len(labels))
    for i, label in enumerate(labels):
        data = summary[summary["label"] == label].set_index("task").reindex(groups)
        x = np.arange(len(groups)) + (i - (len(labels) - 1) / 2) * width
        several = bool((data["n"].fillna(0) > 1).any())
        ax.bar(x, data["mean"].astype(float), width, color=palette[label], label=label,
               yerr=data["std"].astype(float).fillna(0.0) if several else None, capsize=2 if several else 0)
    ax.set_xticks(np.arange(len(groups)), list(groups))


def plot_glue_bars(scores: pd.DataFrame, tasks: Sequence[str] | None = None, baseline: str = "dense",
                   average_tasks: Sequence[str] | None = None):
    """Left: score per task (and GLUE average), one bar per label, error bars = std over seeds.
    Right (when a ``baseline`` run exists): each other label's gap to it, in points, computed
    per task and seed and then averaged by :func:`~nxmlab.study.results.frames.seed_summary`.

    The gap panel is where the differences between methods are visible; on the absolute
    axis they are a few percent of the bar height.
    """
    import seaborn as sns
    from matplotlib.patches import Patch

    summary = frames.seed_summary(scores, tasks, average_tasks=average_tasks)
    present = set(summary["task"])
    groups = [t for t in [*(tasks or frames.task_order(scores["task"])), "avg"] if t in present]
    labels = list(dict.fromkeys(summary["label"]))
    has_base = baseline in labels
    fig, axes = _subplots(ncols=2 if has_base else 1, width=max(5.0, 1.4 * max(1, len(groups)) + 1.5), height=4.0)
    ax = axes[0, 0]
    if summary.empty:
        _empty(ax, "no finished runs")
        return fig
    palette = dict(zip(labels, sns.color_palette(n_colors=len(labels)), strict=True))
    _grouped_bars(ax, summary, groups, labels, palette)
    avg_of = f"mean over {', '.join(average_tasks)}" if average_tasks else "mean over tasks"
    ax.set(xlabel=f"GLUE task (avg = {avg_of})", ylabel=SCORE_AXIS, title="Final validation score per method")
    if not has_base:
        ax.legend(title="method", loc="upper left", bbox_to_anchor=(1.0, 1.0))
        return fig
    base = scores[scores["label"] == baseline].groupby(["task", "seed"])["score"].mean().rename("base")
    others = scores[scores["label"] != baseline].join(base, on=["task", "seed"]).dropna(subset=["base"])
    gaps = frames.seed_summary(others.assign(gap=others["score"] - others["base"]), tasks, value="gap",
                               average_tasks=average_tasks)
    ax = axes[0, 1]
    if gaps.empty:
        _empty(ax, f"no run with a {baseline} run of the same task and seed")
        return fig
    gap_labels = [lb for lb in labels if lb in set(gaps["label"])]
    _grouped_bars(ax, gaps, [g for g in groups if g in set(gaps["task"])], gap_labels, palette)
    ax.axhline(0.0, color="0.2", linewidth=1.0)
    ax.set(xlabel=f"GLUE task (avg = {avg_of})", ylabel=f"score − {baseline} score (points)",
           title=f"Gap to {baseline} (same task and seed)")
    fig.legend([Patch(color=palette[lb]) for lb in labels], labels, title="method", loc="outside right upper")
    return fig


# ----------------------------------------------------------------------------- rho sweep
def rho_frame(scores: pd.DataFrame) -> pd.DataFrame:
    """The runs of ``scores`` that have a rho (the rho sweep): score before the prune, after it,
    and after retraining (×100), with ``prune_drop`` and ``retrain_gain``."""
    cols = ["task", "label", "seed", "rho", "before_prune", "after_prune", "final", "prune_drop", "retrain_gain"]
    df = scores[scores["rho"].notna()] if not scores.empty else scores
    if df.empty:
        return pd.DataFrame(columns=cols)
    out = df[cols[:6]].assign(final=df["score"])
    out = out.astype({"rho": float, "before_prune": float, "after_prune": float, "final": float})
    out["prune_drop"] = out["before_prune"] - out["after_prune"]
    out["retrain_gain"] = out["final"] - out["after_prune"]
    return out.sort_values(["task", "label", "seed", "rho"]).reset_index(drop=True)[cols]


def prune_drop_claim(rho_df: pd.DataFrame) -> dict[str, Any]:
    """Does a too small rho lose accuracy at the hard prune?  (computed from :func:`rho_frame`)

    Compares the mean prune drop (score before − after the hard prune, over tasks and
    seeds) at the smallest and at the largest rho; also gives Spearman's correlation
    between log rho and the drop over all runs.
    """
    if rho_df.empty or rho_df["rho"].nunique() < 2:
        return {"holds": None, "message": "needs runs at two or more rho values"}
    by_rho = rho_df.groupby("rho")["prune_drop"].mean().sort_index()
    small, large = by_rho.index[0], by_rho.index[-1]
    corr = float(rho_df[["rho", "prune_drop"]].corr(method="spearman").iloc[0, 1]) if len(rho_df) > 2 else float("nan")
    holds = bool(by_rho.iloc[0] > by_rho.iloc[-1])
    message = (f"prune drop at rho={small:g}: {by_rho.iloc[0]:+.1f} points, at rho={large:g}: {by_rho.iloc[-1]:+.1f} "
               f"(Spearman(rho, drop) = {corr:+.2f}) -> 'too small rho loses accuracy at the prune' "
               f"{'HOLDS' if holds else 'does NOT hold'} here")
    return {"holds": holds, "drop_by_rho": by_rho.to_dict(), "spearman": corr, "message": message}


def primal_trajectories(dyn: pd.DataFrame) -> pd.DataFrame:
    """``||W − Z||_F`` over all targets (``sqrt(Σ primal²)``) per dynamics record of each run,
    from :func:`nxmlab.study.results.frames.load_dynamics`."""
    cols = ["run", "task", "label", "seed", "rho", "step", "event", "primal_norm"]
    if dyn.empty:
        return pd.DataFrame(columns=cols)
    keys = ["run", "task", "label", "seed", "rho", "step", "event"]
    total = dyn.astype({"primal": float}).groupby(keys, sort=True, dropna=False)["primal"].apply(
        lambda s: math.sqrt(float((s ** 2).sum())))
    return total.rename("primal_norm").reset_index()[cols]


def _style(frame: pd.DataFrame) -> str | None:
    """``"label"`` when ``frame`` holds several labels (a line style per label), else ``None``."""
    return "label" if "label" in frame and frame["label"].nunique() > 1 else None


def rho_ticks(ax, rhos) -> None:
    """Log-x ticks at the grid's rho values only (matplotlib's minor labels collide there)."""
    values = sorted({float(r) for r in rhos})
    if values:
        ax.set_xticks(values, [f"{r:g}" for r in values])
        ax.minorticks_off()


def plot_rho_scores(rho_df: pd.DataFrame):
    """Final score vs rho (log x), one line per task (mean ± std over seeds)."""
    import seaborn as sns

    fig, axes = _subplots(width=5.5)
    ax = axes[0, 0]
    if rho_df.empty:
        _empty(ax, "no rho-sweep runs")
        return fig
    sns.lineplot(data=rho_df, x="rho", y="final", hue="task", style=_style(rho_df), marker="o", errorbar="sd", ax=ax)
    ax.set_xscale("log")
    rho_ticks(ax, rho_df["rho"])
    ax.set(xlabel=RHO_AXIS, ylabel=SCORE_AXIS,
           title=f"{', '.join(frames.label_order(rho_df['label']))}: final score vs ρ")
    return fig


def plot_prune_stages(rho_df: pd.DataFrame):
    """Score before the hard prune, right after it, and after retraining, vs rho; one panel per task."""
    import seaborn as sns

    fig, axes, tasks = _task_panels(rho_df, 5.0, "no rho-sweep runs")
    if not tasks:
        return fig
    stages = {"before_prune": "end of ADMM (before prune)", "after_prune": "after hard prune",
              "final": "after retraining"}
    long = rho_df.melt(id_vars=["task", "label", "seed", "rho"], value_vars=list(stages), var_name="stage",
                       value_name="score")
    long["stage"] = long["stage"].map(stages)
    for ax, task in zip(axes[0], tasks, strict=True):
        data = long[long["task"] == task]
        sns.lineplot(data=data, x="rho", y="score", hue="stage", hue_order=list(stages.values()),
                     style=_style(data), marker="o", errorbar="sd", ax=ax)
        ax.set_xscale("log")
        rho_ticks(ax, data["rho"])
        ax.set(xlabel=RHO_AXIS, ylabel=SCORE_AXIS, title=f"{task}: score around the hard prune")
    return fig


def plot_primal_trajectories(traj: pd.DataFrame):
    """``||W − Z||_F`` (all targets) vs step, one line per rho (log y); one panel per task."""
    import seaborn as sns

    fig, axes, tasks = _task_panels(traj, 5.5, "no ADMM dynamics recorded")
    if not tasks:
        return fig
    rhos = sorted(set(traj["rho"].astype(float)))
    palette = dict(zip(rhos, sns.color_palette("viridis", len(rhos)), strict=True))
    for ax, task in zip(axes[0], tasks, strict=True):
        data = traj[(traj["task"] == task) & (traj["primal_norm"] > 0)].astype({"rho": float})
        sns.lineplot(data=data, x="step", y="primal_norm", hue="rho", palette=palette, style=_style(data),
                     errorbar=None, marker=".", ax=ax)
        ax.set_yscale("log")
        _readable_log_y(ax)
        _integer_x(ax)
        ax.set(xlabel=STEP_AXIS, ylabel="‖W − Z‖_F over all targets (weight units)",
               title=f"{task}: primal residual (steps = Z/U updates)")
        handles, labels = ax.get_legend_handles_labels()
        ax.legend(handles, [_short_number(x) for x in labels], title="ρ")
    return fig


def _short_number(text: str) -> str:
    """``"0.0001"`` -> ``"0.0001"`` and ``"0.001000"`` -> ``"0.001"``; other legend entries unchanged."""
    return f"{float(text):g}" if text.replace(".", "", 1).replace("e-", "", 1).isdigit() else text


# ------------------------------------------------------------------------------ dynamics
def _facet_grid(dyn: pd.DataFrame) -> tuple[list[str], list[str]]:
    """Tasks (one row each) and labels (one column each) of a dynamics frame."""
    if dyn.empty:
        return [], []
    return frames.task_order(dyn["task"]), frames.label_order(dyn["label"])


def _each_facet(dyn: pd.DataFrame, tasks: Sequence[str], labels: Sequence[str], axes, rows_per_task: int = 1):
    """Yield ``(row, col, task, label, data)`` for each (task, label) facet that has data;
    facets without data get a "no ... run" note in their axes and are skipped."""
    for i, task in enumerate(tasks):
        for col, label in enumerate(labels):
            data = dyn[(dyn["task"] == task) & (dyn["label"] == label)]
            if data.empty:
                for k in range(rows_per_task):
                    _empty(axes[rows_per_task * i + k, col], f"no {label} run on {task}" if k == 0 else "")
                continue
            yield rows_per_task * i, col, task, label, data


def _components(values) -> list[str]:
    present = set(values)
    return [c for c in COMPONENTS if c in present] + sorted(present - set(COMPONENTS), key=str)


def plot_rel_dist(dyn: pd.DataFrame):
    """Relative distance to the n:m set vs step, per component and per layer; two rows per task,
    one column per label.  Seeds are replicates: each seed's curve is the mean over the other
    grouping, and the line is their mean with a band of ±1 std over seeds (with two or more).

    ``dyn`` is :func:`nxmlab.study.results.frames.load_dynamics` of the runs to draw.
    """
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
        data = data.astype({"rel_dist": float})
        by_comp = data.groupby(["seed", "step", "component"], as_index=False)["rel_dist"].mean()
        sns.lineplot(data=by_comp, x="step", y="rel_dist", hue="component", errorbar="sd",
                     hue_order=_components(by_comp["component"]), ax=top, legend=last)
        by_layer = data.groupby(["seed", "step", "layer"], as_index=False)["rel_dist"].mean()
        sns.lineplot(data=by_layer, x="step", y="rel_dist", hue="layer", palette="crest", errorbar="sd", ax=bottom,
                     legend=last)
        seeds = _seeds_note(data)
        top.set_title(f"{task} {label}: per component{seeds}")
        bottom.set_title(f"{task} {label}: per layer (0 = bottom){seeds}")
        for ax in (top, bottom):
            _integer_x(ax)
            ax.set(xlabel=STEP_AXIS, ylabel=REL_DIST_AXIS)
        if last:
            _legend_right(top, "component")
            _legend_right(bottom, "layer")
    return fig


def _seeds_note(data: pd.DataFrame) -> str:
    """``", 3 seeds (±1 std)"`` for a facet drawn from several seeds; ``""`` for one."""
    n = data["seed"].nunique() if "seed" in data else 1
    return f", {n} seeds (±1 std)" if n > 1 else ""


def plot_layer_heatmap(dyn: pd.DataFrame, stat: str = "rel_dist"):
    """Heatmap layer × component of ``stat`` at the last record of the ADMM phase (mean over runs);
    one row per task, one column per label."""
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
        last = data[data["step"] == data["step"].max()].astype({stat: float})
        grid = last.pivot_table(index="layer", columns="component", values=stat, aggfunc="mean")
        grid = grid.reindex(columns=_components(grid.columns)).sort_index()
        sns.heatmap(grid, annot=True, fmt=".3f", cmap="rocket_r", ax=ax,
                    cbar_kws={"label": REL_DIST_AXIS if stat == "rel_dist" else stat})
        ax.set_title(f"{task} {label}: end of ADMM (step {int(last['step'].max())})")
        ax.tick_params(axis="x", labelrotation=45)
        ax.set(xlabel="component", ylabel="layer (0 = bottom)")
    return fig


def plot_flips(dyn: pd.DataFrame, distances: pd.DataFrame | None = None):
    """Mask flips per Z/U update, per component; one row per task, one column per label.
    Seeds are replicates: the line is the mean over seeds, with a band of ±1 std over seeds
    (with two or more).

    With ``distances`` (:func:`nxmlab.study.results.frames.load_mask_distances` of the same runs),
    flips are divided by the target's kept positions of two masks (its ``kept`` column),
    which makes them the mask distance between the Z masks before and after the update:
    the fraction of kept positions that changed.  Without it, flips are counted.
    """
    import seaborn as sns

    updates = dyn[dyn["event"] == "update"] if not dyn.empty else dyn
    tasks, labels = _facet_grid(updates)
    fig, axes = _subplots(ncols=max(1, len(labels)), nrows=max(1, len(tasks)), width=4.6, sharey=True)
    if updates.empty:
        _empty(axes[0, 0], "no Z/U updates recorded")
        return fig
    has_kept = distances is not None and not distances.empty
    kept = distances.groupby(["run", "module"])["kept"].first().astype(float) if has_kept else None
    for row, col, task, label, data in _each_facet(updates, tasks, labels, axes):
        ax = axes[row, col]
        data = data.assign(flips=data["flips"].astype(float))
        data = data.join(kept, on=["run", "target"]) if has_kept else data.assign(kept=np.nan)
        keys = ["seed", "step", "component"]
        if data["kept"].notna().all():
            agg = data.groupby(keys, as_index=False)[["flips", "kept"]].sum()
            agg["value"] = 100 * agg["flips"] / agg["kept"]
            ylabel = "flips (% of kept positions that changed)"
        else:
            agg = data.groupby(keys, as_index=False)["flips"].mean().rename(columns={"flips": "value"})
            ylabel = "mask flips per target (positions, mean)"
        sns.lineplot(data=agg, x="step", y="value", hue="component", marker="o", errorbar="sd",
                     hue_order=_components(agg["component"]), ax=ax, legend=col == len(labels) - 1)
        _integer_x(ax)
        ax.set(xlabel="optimizer step of the Z/U update", ylabel=ylabel,
               title=f"{task} {label}: flips per update{_seeds_note(data)}")
        if col == len(labels) - 1:
            _legend_right(ax, "component")
    return fig


# ---------------------------------------------------------------------------- magnitudes
MAGNITUDE_COLUMNS = ["run", "task", "label", "seed", "rho", "stage", "position", "abs_w"]


def load_magnitudes(scores: pd.DataFrame) -> pd.DataFrame:
    """:func:`frames.load_magnitudes` with the columns :data:`MAGNITUDE_COLUMNS` (empty frame if none)."""
    mags = frames.load_magnitudes(scores)
    return mags[MAGNITUDE_COLUMNS] if not mags.empty else pd.DataFrame(columns=MAGNITUDE_COLUMNS)


def plot_magnitudes(mags: pd.DataFrame, run: str | None = None):
    """Histograms of |w| at kept vs pruned positions (of the final mask), one panel per snapshot.

    Args:
        mags: :func:`load_magnitudes`.
        run: The run to draw (its ``run`` key); default the first in label, task and seed order.
    """
    import seaborn as sns

    if not mags.empty and run is None:
        order = mags[["run", "task", "label", "seed"]].drop_duplicates()
        order = order.assign(_l=order["label"].map(frames.label_order(order["label"]).index),
                             _t=order["task"].map(frames.task_order(order["task"]).index))
        run = order.sort_values(["_l", "_t", "seed", "run"])["run"].iloc[0]
    frame = mags[mags["run"] == run] if not mags.empty else mags
    stages = list(dict.fromkeys(frame["stage"])) if not frame.empty else []
    fig, axes = _subplots(ncols=max(1, len(stages)), width=4.8)
    if frame.empty:
        _empty(axes[0, 0], "no |w| sample (magnitudes.parquet) in these runs")
        return fig
    for ax, stage in zip(axes[0], stages, strict=True):
        data = frame[frame["stage"] == stage]
        upper = float(np.quantile(data["abs_w"], 0.995)) or 1.0
        sns.histplot(data=data, x="abs_w", hue="position", hue_order=["kept", "pruned"], bins=60,
                     binrange=(0.0, upper), stat="density", common_norm=False, element="step", ax=ax)
        ax.set(xlabel="|w| (weight units)", ylabel="density (per unit |w|)",
               title=stage if len(stage) < 48 else stage.replace(": ", ":\n", 1))
    first = frame.iloc[0]
    fig.suptitle(f"{first['task']} {first['label']} seed {first['seed']} (a sample of the weights)")
    return fig
