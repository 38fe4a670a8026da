"""Figures of the ADMM convergence study (frames from :mod:`nxmlab.study.studies.convergence`).

* :func:`plot_trajectories`: per Z/U update, the relative distance to the n:m set, the
  flips and the distance of the Z mask to the final mask, one line per variant; the
  loss-free control dashed;
* :func:`plot_stage_scores`: the validation score before the prune, right after it and
  after retraining, per task and variant;
* :func:`plot_mask_sources`: how far the last Z mask moved from the start weights'
  magnitude mask and from the ASP mask, with the data and without it (loss-free).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from ..train.hooks import CONVERGENCE
from .core import _empty, _readable_log_y, _subplots

__all__ = ["plot_trajectories", "plot_stage_scores", "plot_mask_sources", "criteria_table"]

_FLOOR = 1e-6  # log axes: zero flips and distances are drawn at this floor


def _variants(frame: pd.DataFrame, order: Sequence[str] | None) -> list[str]:
    present = list(dict.fromkeys(frame["variant"]))
    return [v for v in order if v in present] if order else present


def plot_trajectories(updates: pd.DataFrame, task: str, order: Sequence[str] | None = None):
    """Three panels for ``task``: relative distance, flips and Z-vs-final mask distance per update."""
    import seaborn as sns

    fig, axes = _subplots(ncols=3, width=5.0, height=3.8)
    axes = axes[0]
    frame = updates[updates["task"] == task] if not updates.empty else updates
    if frame.empty:
        for ax in axes:
            _empty(ax, f"no finished convergence runs on {task}")
        return fig
    variants = _variants(frame, order)
    palette = dict(zip(variants, sns.color_palette("colorblind", len(variants)), strict=False))
    panels = [("rel_dist", "‖W − Proj(W)‖ / ‖W‖ (rms over targets)", CONVERGENCE.rel_dist),
              ("flips", "flips per update (fraction of positions)", CONVERGENCE.flips),
              ("dist_final", "Z mask vs final mask (distance)", CONVERGENCE.z_mask_distance)]
    for ax, (column, title, criterion) in zip(axes, panels, strict=True):
        for variant in variants:
            for source, dashes in (("training", "-"), ("loss-free", "--")):
                part = frame[(frame["variant"] == variant) & (frame["source"] == source)]
                if column not in part or part[column].dropna().empty:
                    continue
                part = part.dropna(subset=[column])
                ax.plot(part["step"], part[column].clip(lower=_FLOOR), dashes, color=palette[variant],
                        marker="o", markersize=3, label=variant if source == "training" else None,
                        alpha=1.0 if source == "training" else 0.6)
        ax.axhline(criterion, color="0.3", lw=0.8, ls=":")
        ax.set_yscale("log")
        _readable_log_y(ax)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("optimizer step of the ADMM phase")
    axes[0].legend(title="variant (solid: training, dashed: loss-free)", fontsize=7, title_fontsize=7)
    fig.suptitle(f"{task}: ADMM convergence per Z/U update (dotted: the convergence criterion; "
                 f"values below {_FLOOR:g} drawn at {_FLOOR:g})", fontsize=9)
    return fig


def plot_stage_scores(convergence: pd.DataFrame, order: Sequence[str] | None = None):
    """Score before the prune, right after it (no retraining) and final, per task and variant."""
    import seaborn as sns

    tasks = list(dict.fromkeys(convergence["task"])) if not convergence.empty else []
    fig, axes = _subplots(ncols=max(1, len(tasks)), width=4.2, height=3.8)
    axes = list(axes[0])
    if not tasks:
        _empty(axes[0], "no finished convergence runs")
        return fig
    stages = {"before_prune": "before the prune", "after_prune": "right after the prune", "score": "after retraining"}
    long = convergence.melt(id_vars=["task", "variant"], value_vars=list(stages), var_name="stage", value_name="value")
    long["stage"] = long["stage"].map(stages)
    for ax, task in zip(axes, tasks, strict=True):
        part = long[long["task"] == task]
        sns.pointplot(data=part, x="variant", y="value", hue="stage", order=_variants(part, order),
                      hue_order=list(stages.values()), ax=ax, dodge=0.3, linestyles="none", markersize=4,
                      palette="colorblind", legend=ax is axes[0])
        ax.set_title(task)
        ax.set_xlabel("")
        ax.set_ylabel("validation score (x100)")
        ax.tick_params(axis="x", rotation=45, labelsize=7)
    return fig


def plot_mask_sources(updates: pd.DataFrame, order: Sequence[str] | None = None):
    """Distance of the last Z mask to the start weights' magnitude mask and to ASP's, training vs loss-free."""
    import seaborn as sns

    fig, axes = _subplots(ncols=2, width=5.0, height=3.8)
    axes = axes[0]
    if updates.empty:
        for ax in axes:
            _empty(ax, "no finished convergence runs")
        return fig
    last = updates.sort_values("step").groupby(["task", "variant", "source"]).tail(1)
    for ax, column, title in ((axes[0], "dist_start_magnitude", "last Z mask vs start-weights magnitude mask"),
                              (axes[1], "dist_asp", "last Z mask vs ASP mask (dense fine-tuned)")):
        part = last.dropna(subset=[column]) if column in last else last.iloc[0:0]
        if part.empty:
            _empty(ax, "not recorded")
            continue
        sns.barplot(data=part, x="variant", y=column, hue="source", order=_variants(part, order), ax=ax,
                    palette="colorblind", errorbar=None)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("")
        ax.set_ylabel("mask distance")
        ax.tick_params(axis="x", rotation=45, labelsize=7)
    return fig


def criteria_table(convergence: pd.DataFrame) -> pd.DataFrame:
    """The diagnostics at the prune against the criteria, rounded for display."""
    columns = ["task", "variant", "penalty", "rho", "rho_factor", "updates_per_epoch", "admm_epochs", "u_init",
               "rel_dist_at_prune", "max_flips_last_two", "z_final_mask_distance", "prune_cost_points",
               "train_loss", "before_prune", "after_prune", "score", "converged"]
    if convergence.empty:
        return pd.DataFrame(columns=columns)
    table = convergence[columns].copy()
    return table.round({"rel_dist_at_prune": 4, "max_flips_last_two": 6, "z_final_mask_distance": 5,
                        "prune_cost_points": 2, "train_loss": 4, "before_prune": 1, "after_prune": 1, "score": 1})
