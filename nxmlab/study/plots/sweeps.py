"""The n:m sweep figure: score against density, one line per method, a marker per pattern."""

from __future__ import annotations

import pandas as pd

from ...nxm import NxM
from ..results.frames import label_order
from ..results.stats import Comparison
from ..train.methods import parse_label
from .core import _empty, _subplots

__all__ = ["density_frame", "plot_density", "pattern_comparisons"]

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def density_frame(scores: pd.DataFrame) -> pd.DataFrame:
    """``task, label, pattern, density, mean, std, n``: seeds averaged per (task, label, pattern)."""
    columns = ["task", "label", "pattern", "density", "mean", "std", "n"]
    sparse = scores[scores["pattern"].notna()] if not scores.empty else scores
    if sparse.empty:
        return pd.DataFrame(columns=columns)
    out = (sparse.groupby(["task", "label", "pattern"])["score"].agg(["mean", "std", "count"])
           .rename(columns={"count": "n"}).reset_index())
    out["density"] = [NxM.parse(p).density for p in out["pattern"]]
    return out.sort_values(["task", "label", "density", "pattern"]).reset_index(drop=True)[columns]


def _pattern_label(label: str, pattern: str) -> str:
    """``"magnitude 8:4"`` for an n:m rule, ``"unstructured 50%"`` for a rule that only keeps a density."""
    if parse_label(label)[0].rule.structured:
        return f"{label} {pattern}"
    return f"{label} {NxM.parse(pattern).density:.0%}"


def pattern_comparisons(scores: pd.DataFrame) -> tuple[pd.DataFrame, tuple[Comparison, ...]]:
    """The sweep's runs relabelled by pattern, and the paired comparisons between patterns.

    Args:
        scores: The ``patterns`` study's runs (:func:`nxmlab.study.studies.notebook.run_study`).

    Returns:
        ``(runs, comparisons)``: the sparse runs with ``label`` set to ``"<label> <n:m>"``
        (``"<label> <density>"`` for a rule that is not n:m, e.g. ``unstructured 50%``),
        ready for :func:`nxmlab.study.results.stats.paired_bootstrap`; and, for every n:m method,
        (1) each longer group against the shorter one at the same density (``magnitude 8:4
        - magnitude 4:2``: what a longer group buys), then (2) each pattern against the
        unstructured rule at its density (``magnitude 4:2 - unstructured 50%``: what the
        structure costs).
    """
    sparse = scores[scores["pattern"].notna()].copy() if not scores.empty else scores.copy()
    if sparse.empty:
        return sparse, ()
    sparse["label"] = [_pattern_label(lb, p) for lb, p in zip(sparse["label"], sparse["pattern"], strict=True)]
    kinds = {}  # label -> (base label, structured, pattern)
    for lb, p, new in zip(scores.loc[sparse.index, "label"], sparse["pattern"], sparse["label"], strict=True):
        kinds[new] = (lb, parse_label(lb)[0].rule.structured, NxM.parse(p))
    present = list(dict.fromkeys(sparse["label"]))
    structured = [lb for lb in present if kinds[lb][1]]
    references = [lb for lb in present if not kinds[lb][1]]
    longer, against = [], []
    for a in structured:
        base, _, pa = kinds[a]
        for b in structured:
            bb, _, pb = kinds[b]
            if bb == base and pa.density == pb.density and pa.n > pb.n:
                longer.append(Comparison(f"{a} - {b}", a, b))
        for b in references:
            if kinds[b][2].density == pa.density:
                against.append(Comparison(f"{a} - {b}", a, b))
    return sparse, tuple(longer + against)


def plot_density(frame: pd.DataFrame, dense: pd.DataFrame | None = None):
    """One panel per task: score (x100) against density (kept fraction), a line per method
    (patterns of one density share a point per marker), error bars = std over seeds; the
    dense score is a dotted line."""
    import seaborn as sns

    tasks = list(dict.fromkeys(frame["task"])) if not frame.empty else []
    fig, axes = _subplots(ncols=max(1, len(tasks)), width=4.6, height=3.8)
    axes = list(axes[0])
    if not tasks:
        _empty(axes[0], "no finished runs of the n:m sweep")
        return fig
    labels = label_order(frame["label"])
    patterns = sorted(dict.fromkeys(frame["pattern"]), key=lambda p: (NxM.parse(p).n, -NxM.parse(p).m))
    colors = _colors(labels)
    markers = dict(zip(patterns, _MARKERS, strict=False))
    for ax, task in zip(axes, tasks, strict=True):
        part = frame[frame["task"] == task]
        for label in labels:
            line = part[part["label"] == label].sort_values("density")
            if line.empty:
                continue
            ax.plot(line["density"], line["mean"], "-", color=colors[label], lw=1, label=label)
            for row in line.itertuples(index=False):
                ax.errorbar(row.density, row.mean, yerr=0 if pd.isna(row.std) else row.std, color=colors[label],
                            marker=markers[row.pattern], markersize=6, capsize=2, ls="none")
        if dense is not None and not dense.empty and task in set(dense["task"]):
            ax.axhline(float(dense.loc[dense["task"] == task, "score"].mean()), color="0.3", ls=":", lw=1,
                       label="dense")
        ax.set_title(task)
        ax.set_xlabel("density (kept fraction m/n)")
        ax.set_ylabel("validation score (x100)")
    # both legends outside the panels, right of the last one: inside they hid points
    handles = [axes[-1].plot([], [], ls="none", marker=markers[p], color="0.3")[0] for p in patterns]
    entries = {}  # every method of every panel, once
    for ax in axes:
        for line, name in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(name, line)
    lines, names = list(entries.values()), list(entries)
    first = axes[-1].legend(lines, names, title="method", fontsize=7, title_fontsize=7, loc="upper left",
                            bbox_to_anchor=(1.02, 1.0))
    axes[-1].add_artist(first)
    axes[-1].legend(handles, [f"{p} (keep {NxM.parse(p).m} of {NxM.parse(p).n})" for p in patterns],
                    title="pattern", fontsize=7, title_fontsize=7, loc="lower left", bbox_to_anchor=(1.02, 0.0))
    return fig


def _colors(labels) -> dict:
    """One colour per base method, in registry order (``+kd`` shares its method's), so that a
    method has the same colour here as in the baselines' GLUE table."""
    import seaborn as sns

    from ..results.frames import LABELS

    bases = list(dict.fromkeys(lb.removesuffix("+kd") for lb in LABELS()))
    palette = sns.color_palette("colorblind", len(bases))
    return {lb: palette[bases.index(lb.removesuffix("+kd"))] if lb.removesuffix("+kd") in bases
            else palette[len(bases) % len(palette)] for lb in labels}
