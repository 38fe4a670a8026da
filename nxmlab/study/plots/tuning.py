"""The dense tuning sweep's figure: validation score against learning rate, per task.

The sweep and the rule that picks each task's dense setting are
:mod:`nxmlab.study.studies.tuning`'s (:func:`~nxmlab.study.studies.tuning.load_tuning`,
:func:`~nxmlab.study.studies.tuning.choose_dense`); this module only draws them.
"""

from __future__ import annotations

import pandas as pd

from ..results.frames import task_order
from .core import _empty, _subplots

__all__ = ["plot_tuning"]


def plot_tuning(tuning: pd.DataFrame, summary: pd.DataFrame):
    """One panel per task: validation score against learning rate (log axis), a line per
    epoch count (mean over seeds), each seed's run as a small dot, the chosen point ringed."""
    tasks = task_order(summary["task"]) if not summary.empty else []
    fig, axes = _subplots(ncols=max(1, len(tasks)), width=3.4, height=3.2)
    axes = list(axes[0])
    if not tasks:
        _empty(axes[0], "no finished runs of the dense tuning sweep")
        return fig
    epochs = sorted(dict.fromkeys(summary["epochs"]))
    colors = dict(zip(epochs, ("#0173b2", "#de8f05", "#029e73", "#d55e00", "#cc78bc"), strict=False))
    for ax, task in zip(axes, tasks, strict=True):
        part, runs = summary[summary["task"] == task], tuning[tuning["task"] == task]
        for ep in epochs:
            line = part[part["epochs"] == ep].sort_values("learning_rate")
            dots = runs[runs["epochs"] == ep]
            ax.plot(line["learning_rate"], line["mean"], "-o", color=colors[ep], ms=4, lw=1.2, label=f"{ep:g} epochs")
            ax.plot(dots["learning_rate"], dots["score"], ".", color=colors[ep], ms=3, alpha=0.5)
        chosen = part[part["chosen"].astype(bool)]
        if not chosen.empty:
            ax.plot(chosen["learning_rate"], chosen["mean"], "o", ms=11, mfc="none", mec="black", mew=1.2,
                    label="chosen")
        ax.set_xscale("log")
        rates = sorted(dict.fromkeys(part["learning_rate"]))
        ax.set_xticks(rates, [f"{r:g}" for r in rates])
        ax.minorticks_off()
        ax.set_title(task)
        ax.set_xlabel("learning rate")
        ax.set_ylabel("validation score (x100)")
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return fig
