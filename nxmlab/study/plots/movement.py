"""Mask movement: does a method's mask move away from magnitude pruning's, and does it pay?

:func:`plot_mask_movement` draws :func:`nxmlab.study.results.frames.mask_movement` (one point per
run: its final mask's distance to a magnitude mask against its gain over ASP on the same
seed); :func:`plot_update_movement` draws ADMM's Z mask per Z/U update
(:func:`nxmlab.study.studies.convergence.updates_of`) against ASP's mask and the start weights'
magnitude mask (one panel when they are one mask), beside the flips.  Issues #28 (the authors' protocol) and #29 (every method).
"""

from __future__ import annotations

import pandas as pd

from ..results import frames
from .core import _empty, _subplots

__all__ = ["plot_mask_movement", "plot_update_movement", "movement_summary"]


def plot_mask_movement(movement: pd.DataFrame, reference: str = "dense_magnitude", baseline: str = "magnitude"):
    """One panel per task: x the distance of each run's final mask to ``reference``
    (``dense_magnitude``: ASP's mask of the same dense model; ``pretrained_magnitude``),
    in % of kept positions (log scale), y its score minus ``baseline``'s on the same seed
    (points); one colour per label, one marker per seed."""
    import seaborn as sns

    part = movement[(movement["reference"] == reference) & movement["gain"].notna()] if not movement.empty \
        else movement
    tasks = frames.task_order(part["task"]) if not part.empty else []
    fig, axes = _subplots(ncols=max(1, len(tasks)), width=4.2, height=3.6)
    if not tasks:
        _empty(axes[0, 0], "no sparse runs with a magnitude baseline on the same seed")
        return fig
    labels = frames.label_order(part["label"])
    palette = dict(zip(labels, sns.color_palette("colorblind", len(labels)), strict=False))
    floor = 1e-6  # identical masks are drawn at 1e-4 %
    for ax, task in zip(axes[0], tasks, strict=True):
        data = part[part["task"] == task].assign(percent=lambda d: 100 * d["distance"].clip(lower=floor))
        sns.scatterplot(data=data, x="percent", y="gain", hue="label", hue_order=labels, palette=palette,
                        style="seed", s=45, ax=ax, legend=ax is axes[0, -1])
        ax.set_xscale("log")
        ax.axhline(0.0, color="0.5", ls=":", lw=1)
        ax.set_title(task)
        ax.set_xlabel("")
        ax.set_ylabel(f"score − {baseline} (same seed, points)" if ax is axes[0, 0] else "")
    if axes[0, -1].get_legend() is not None:
        sns.move_legend(axes[0, -1], "upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, title_fontsize=7)
    fig.supxlabel(f"final mask vs the {reference.replace('_', ' ')} mask (% of kept positions that differ)",
                  fontsize=9)
    fig.suptitle(f"Mask movement against the gain over {baseline} (one point per run; masks that never left the "
                 f"reference are drawn at {100 * floor:g} %)", fontsize=9)
    return fig


def movement_summary(movement: pd.DataFrame) -> pd.DataFrame:
    """Per (task, label, reference): the mean distance (% of kept positions), the mean gain over
    the baseline, and the seeds; the table beside :func:`plot_mask_movement`."""
    if movement.empty:
        return pd.DataFrame(columns=["task", "label", "reference", "distance_pct", "gain", "seeds"])
    out = (movement.assign(distance_pct=100 * movement["distance"])
           .groupby(["task", "label", "reference"], sort=False)
           .agg(distance_pct=("distance_pct", "mean"), gain=("gain", "mean"), seeds=("seed", "nunique"))
           .reset_index())
    out["task"] = pd.Categorical(out["task"], frames.task_order(out["task"]))
    return out.sort_values(["task", "reference", "label"]).reset_index(drop=True)


def _asp_is_the_start(updates: pd.DataFrame) -> bool:
    """Every training record's distance to ASP's mask equals its distance to the start weights'
    magnitude mask: ADMM started from the dense model ASP prunes (the authors' protocol)."""
    if "dist_asp" not in updates or "dist_start_magnitude" not in updates:
        return False
    both = updates[(updates["source"] == "training")].dropna(subset=["dist_asp", "dist_start_magnitude"])
    return not both.empty and bool(((both["dist_asp"] - both["dist_start_magnitude"]).abs() < 1e-12).all())


def plot_update_movement(updates: pd.DataFrame):
    """Rows of panels, one column per task: ADMM's Z mask against ASP's mask (``dist_asp``)
    and against the start weights' magnitude mask, per Z/U update, and the flips per update;
    one colour per label, one line per seed; the loss-free control dashed.  When ADMM starts
    from the dense model ASP prunes (the two masks are one), the first two rows are one."""
    import seaborn as sns

    tasks = frames.task_order(updates["task"]) if not updates.empty else []
    merged = bool(tasks) and _asp_is_the_start(updates)
    fig, axes = _subplots(ncols=max(1, len(tasks)), nrows=2 if merged else 3, width=4.2, height=3.0)
    if not tasks:
        for ax in axes.ravel():
            _empty(ax, "no ADMM runs with per-update records")
        return fig
    labels = frames.label_order(updates["label"])
    palette = dict(zip(labels, sns.color_palette("colorblind", len(labels)), strict=False))
    panels = [("dist_asp", "Z mask vs ASP's mask"), ("dist_start_magnitude", "Z mask vs start magnitude mask"),
              ("flips", "flips at the update (fraction of positions)")]
    if merged:  # the loss-free control records its distance to the start mask, which is ASP's here
        updates = updates.assign(dist_asp=updates["dist_asp"].fillna(updates["dist_start_magnitude"]))
        panels = [("dist_asp", "Z mask vs ASP's mask (= the start's magnitude mask)"), panels[2]]
    for col, task in enumerate(tasks):
        data = updates[updates["task"] == task]
        for row, (column, title) in enumerate(panels):
            ax = axes[row, col]
            for (label, seed, source), part in data.groupby(["label", "seed", "source"], sort=False):
                if column not in part or part[column].dropna().empty:
                    continue
                part = part.dropna(subset=[column])
                ax.plot(part["update"], part[column].clip(lower=1e-6), "--" if source == "loss-free" else "-",
                        marker="o", ms=3, color=palette[label], alpha=0.55 if source == "loss-free" else 0.9,
                        label=label if (source == "training" and seed == data["seed"].min()) else None)
            ax.set_yscale("log")
            ax.set_title(f"{task}: {title}", fontsize=9)
            ax.set_xlabel("Z/U update")
    handles, names = axes[0, 0].get_legend_handles_labels()
    if handles:
        axes[0, -1].legend(handles, names, title="label (dashed: loss-free)", fontsize=7, title_fontsize=7,
                           loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle("ADMM's Z mask per Z/U update (one line per seed; values below 1e-6 drawn at 1e-6)", fontsize=9)
    return fig
