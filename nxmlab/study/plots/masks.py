"""Mask-distance figures: how different are the masks of methods, seeds, tasks and rho values?

Mask distance is :func:`nxmlab.masking.mask_distance`, ``|A △ B| / (|A| + |B|)``: for masks
of equal density the fraction of kept positions that differ (0 identical, 1 disjoint,
``1 − m/n`` expected for two random n:m masks).  Two sources, both committed:

* **exact**, within a run: :func:`nxmlab.study.results.frames.load_mask_distances`, the distance of
  each run's final mask to its reference masks (the magnitude masks of the pretrained and
  of the dense fine-tuned weights), per target, computed on the full masks;
* **sampled**, across runs: :meth:`nxmlab.study.results.store.RunFolder.mask_sample`, every run's
  final and reference masks on a fixed 1/64 sample of groups.  The sampled positions
  depend only on the target's name and shape, so runs of one model are compared at the
  same positions; the distances are estimates of the full-mask ones.
"""

from __future__ import annotations

import math
import numpy as np
import pandas as pd

from ...nxm import NxM
from ..results import frames
from ..results.store import SAMPLE_EVERY
from .core import _components, _empty, _subplots, rho_ticks

__all__ = [
    "SAMPLE_NOTE", "random_mask_distance", "distance_summary", "plot_layer_distances",
    "mask_samples", "sampled_distance", "method_distances", "seed_distances", "task_distances",
    "rho_distances", "rho_mask_distances", "as_matrix", "plot_matrices", "plot_seed_distances",
    "plot_rho_distances",
]

#: What every cross-run figure says about its numbers.
SAMPLE_NOTE = f"estimated on a fixed 1/{SAMPLE_EVERY} sample of groups"
DIST_AXIS = "mask distance (fraction of kept positions that differ)"
RHO_AXIS = "ρ (ADMM penalty weight, log scale)"
SAMPLE_COLUMNS = ["run", "task", "label", "seed", "rho", "set", "mask", "masks"]
PAIR_COLUMNS = ["group", "a", "b", "distance"]


def random_mask_distance(pattern: str | NxM) -> float:
    """Expected mask distance of two independent uniformly random n:m masks (``1 − m/n``)."""
    p = NxM.parse(pattern)
    return 1.0 - p.m / p.n


def _dist_max(values, pattern: str | NxM | None) -> float:
    """Upper end of distance colour scales and axes: the random-mask level or the data, whichever is larger."""
    values = pd.Series(np.asarray(values, dtype=float)).dropna()
    top = float(values.max()) if not values.empty else 0.0
    ref = random_mask_distance(pattern) if pattern is not None else 1.0
    return min(1.0, max(ref, top) * 1.05)


def _random_note(pattern: str | NxM | None) -> str:
    return f"random {NxM.parse(pattern)} masks: {random_mask_distance(pattern):.2f} expected" if pattern else ""


# ------------------------------------------------------------------- exact, within a run
def _pooled(distances: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """``differ / kept`` summed over the rows of each ``keys`` group (the count-weighted distance)."""
    sums = distances.groupby(keys, sort=False, as_index=False)[["differ", "kept"]].sum()
    return sums.assign(distance=sums["differ"] / sums["kept"].where(sums["kept"] > 0))


def distance_summary(distances: pd.DataFrame) -> pd.DataFrame:
    """Per label and reference mask: ``runs``, the pooled ``distance`` over all targets and runs,
    ``std_runs`` (the std over runs, seeds and tasks as replicates, of each run's pooled
    distance; NaN for one run), and the smallest and largest per-target distance (from
    :func:`frames.load_mask_distances`)."""
    cols = ["label", "reference", "runs", "distance", "std_runs", "min_target", "max_target"]
    if distances.empty:
        return pd.DataFrame(columns=cols)
    out = _pooled(distances, ["label", "reference"])
    stats = distances.groupby(["label", "reference"], sort=False).agg(
        runs=("run", "nunique"), min_target=("distance", "min"), max_target=("distance", "max")).reset_index()
    per_run = _pooled(distances, ["label", "reference", "run"])
    spread = per_run.groupby(["label", "reference"], sort=False)["distance"].std(ddof=1).rename("std_runs")
    out = out.merge(stats, on=["label", "reference"]).join(spread, on=["label", "reference"])
    out = out.assign(_l=out["label"].map(frames.label_order(out["label"]).index)).sort_values(["_l", "reference"])
    return out[cols].reset_index(drop=True)


def plot_layer_distances(distances: pd.DataFrame, pattern: str | NxM | None = None):
    """Heatmaps layer × component of the exact distance of the final mask to each reference mask:
    one row per label, one column per reference, pooled over tasks and seeds.

    ``distances`` is :func:`nxmlab.study.results.frames.load_mask_distances` of the runs to draw.
    """
    import seaborn as sns

    labels = frames.label_order(distances["label"]) if not distances.empty else []
    refs = sorted(set(distances["reference"])) if not distances.empty else []
    layers = distances["layer"].nunique() if not distances.empty else 1
    fig, axes = _subplots(ncols=max(1, len(refs)), nrows=max(1, len(labels)), width=4.8,
                          height=max(3.0, 0.45 * layers + 2.2))
    if distances.empty:
        _empty(axes[0, 0], "no run with a mask (mask_distances.parquet)")
        return fig
    vmax = _dist_max(distances["distance"], pattern)
    for i, label in enumerate(labels):
        for j, ref in enumerate(refs):
            ax, data = axes[i, j], distances[(distances["label"] == label) & (distances["reference"] == ref)]
            if data.empty:
                _empty(ax, f"{label} has no {ref.replace('_', ' ')} mask")
                continue
            grid = _pooled(data, ["layer", "component"]).pivot(index="layer", columns="component", values="distance")
            grid = grid.reindex(columns=_components(grid.columns)).sort_index()
            sns.heatmap(grid, annot=True, fmt=".3f", vmin=0.0, vmax=vmax, cmap="mako_r", ax=ax,
                        cbar_kws={"label": "fraction of kept positions that differ"})
            ax.set_title(f"{label} final vs {ref.replace('_', ' ')}")
            ax.tick_params(axis="x", labelrotation=45)
            ax.set_xlabel("component")
            ax.set_ylabel("layer (0 = bottom)")
    note = f"\n{_random_note(pattern)}" if pattern else ""
    fig.suptitle(f"Final mask vs reference masks (exact, on the full masks){note}")
    return fig


# ------------------------------------------------------------------- sampled, across runs
def _mask_name(set_name: str, label: str) -> str:
    return f"{label} final" if set_name == "final" else set_name.replace("_", " ")


def mask_samples(scores: pd.DataFrame) -> pd.DataFrame:
    """The committed mask samples of every run in ``scores``: one row per (run, mask set) with
    ``run, task, label, seed, rho, set, mask`` (a display name: ``"<label> final"``,
    ``"pretrained magnitude"``, ``"dense magnitude"``) and ``masks`` (``{target: sampled mask}``)."""
    rows = []
    for row, folder in frames.run_folders(scores):
        for set_name, masks in folder.mask_sample().items():
            rows.append({**row._asdict(), "set": set_name, "mask": _mask_name(set_name, row.label), "masks": masks})
    return pd.DataFrame(rows, columns=SAMPLE_COLUMNS)


def sampled_distance(a, b) -> float:
    """Mask distance of two mask sets (``{target: mask}``) pooled over the targets both have:
    differing kept positions / kept positions (NaN when they share no target)."""
    table = frames.mask_distance_table(a, b)
    kept = table["kept"].sum()
    return float(table["differ"].sum() / kept) if kept > 0 else float("nan")


def _named(samples: pd.DataFrame) -> dict[str, dict]:
    """``{mask name: masks}`` of some samples: the reference masks first, then each label's final
    mask in label order; the first row of each name wins."""
    if samples.empty:
        return {}
    first = samples.drop_duplicates("mask")
    refs = first[first["set"] != "final"]
    finals = first[first["set"] == "final"]
    finals = finals.assign(_l=finals["label"].map(frames.label_order(finals["label"]).index)).sort_values("_l")
    return {row.mask: row.masks for row in pd.concat([refs, finals]).itertuples()}


def _pairs(group: str, named: dict[str, dict]) -> list[dict]:
    """Every ordered pair of ``named`` (diagonal 0) as rows ``group, a, b, distance``."""
    names, dist = list(named), {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            dist[a, b] = dist[b, a] = sampled_distance(named[a], named[b])
    return [{"group": group, "a": a, "b": b, "distance": 0.0 if a == b else dist[a, b]} for a in names for b in names]


def _frame(rows: list[dict], columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=columns)


def method_distances(samples: pd.DataFrame, task: str | None = None, seed: int | None = None) -> pd.DataFrame:
    """Every mask of one task against every other (sampled): the reference masks and each
    label's final mask; rows ``group, a, b, distance`` (default: the first task).

    With ``seed``, the masks of that seed; without, seeds are replicates: each pair's distance
    is computed within each seed and averaged over the seeds that have both masks.
    """
    if samples.empty:
        return _frame([], PAIR_COLUMNS)
    task = task if task is not None else frames.task_order(samples["task"])[0]
    sub = samples[samples["task"] == task]
    seeds = [seed] if seed is not None else sorted(set(sub["seed"]))
    per_seed = [pd.DataFrame(_pairs("", named), columns=PAIR_COLUMNS)
                for named in (_named(sub[sub["seed"] == s]) for s in seeds) if named]
    if not per_seed:
        return _frame([], PAIR_COLUMNS)
    names = list(dict.fromkeys(n for frame in per_seed for n in frame["a"]))
    pooled = pd.concat(per_seed).groupby(["a", "b"], sort=False)["distance"].mean()
    group = f"{task}, seed {seeds[0]}" if len(seeds) == 1 else f"{task}, mean over seeds {', '.join(map(str, seeds))}"
    rows = [{"group": group, "a": a, "b": b, "distance": float(pooled[a, b])}
            for a in names for b in names if (a, b) in pooled.index]
    return _frame(rows, PAIR_COLUMNS)


def seed_distances(samples: pd.DataFrame) -> pd.DataFrame:
    """Distance between the same mask of two seeds, per task, mask and seed pair (sampled);
    empty with fewer than two seeds."""
    rows = []
    for task in frames.task_order(samples["task"]) if not samples.empty else []:
        sub = samples[samples["task"] == task]
        seeds = sorted(set(sub["seed"]))
        named = {s: _named(sub[sub["seed"] == s]) for s in seeds}
        for i, s1 in enumerate(seeds):
            for s2 in seeds[i + 1:]:
                for name in named[s1]:
                    if name in named[s2]:
                        rows.append({"task": task, "mask": name, "seeds": f"{s1} vs {s2}",
                                     "distance": sampled_distance(named[s1][name], named[s2][name])})
    return _frame(rows, ["task", "mask", "seeds", "distance"])


def task_distances(samples: pd.DataFrame) -> pd.DataFrame:
    """Task × task distance of each mask (a group per mask), mean over the seeds both tasks have
    (sampled); rows ``group, a, b, distance``, empty with fewer than two tasks."""
    if samples.empty:
        return _frame([], PAIR_COLUMNS)
    tasks = frames.task_order(samples["task"])
    named = {(t, s): _named(samples[(samples["task"] == t) & (samples["seed"] == s)])
             for t in tasks for s in sorted(set(samples.loc[samples["task"] == t, "seed"]))}
    rows = []
    for name in _named(samples):
        have = [t for t in tasks if any(name in m for (tt, _), m in named.items() if tt == t)]
        if len(have) < 2:
            continue
        for a in have:
            for b in have:
                values = [sampled_distance(m[name], named[(b, s)][name]) for (t, s), m in named.items()
                          if t == a and name in m and name in named.get((b, s), {})]
                rows.append({"group": name, "a": a, "b": b, "distance": float(np.mean(values)) if values else math.nan})
    return _frame(rows, PAIR_COLUMNS)


def rho_distances(samples: pd.DataFrame, references: pd.DataFrame | None = None) -> pd.DataFrame:
    """For each run with a rho: distance of its final mask to every reference mask of the same
    task and seed (sampled), the references taken from ``samples`` and ``references``."""
    cols = ["task", "seed", "label", "rho", "reference", "distance"]
    if samples.empty:
        return _frame([], cols)
    pool = pd.concat([samples, references], ignore_index=True) if references is not None else samples
    refs = pool[pool["set"] != "final"].drop_duplicates(["task", "seed", "set"])
    finals = samples[(samples["set"] == "final") & samples["rho"].notna()]
    rows = []
    for row in finals.itertuples():
        for ref in refs[(refs["task"] == row.task) & (refs["seed"] == row.seed)].itertuples():
            rows.append({"task": row.task, "seed": row.seed, "label": row.label, "rho": float(row.rho),
                         "reference": ref.mask, "distance": sampled_distance(row.masks, ref.masks)})
    return _frame(rows, cols).sort_values(["task", "label", "reference", "rho", "seed"]).reset_index(drop=True)


def rho_mask_distances(samples: pd.DataFrame, task: str) -> pd.DataFrame:
    """rho × rho distance of the final masks on ``task`` (a group per label), mean over the seeds
    both rho values have (sampled); empty unless a label has two or more rho values."""
    finals = samples[(samples["task"] == task) & (samples["set"] == "final") & samples["rho"].notna()] \
        if not samples.empty else samples
    rows = []
    for label in frames.label_order(finals["label"]) if not finals.empty else []:
        sub = finals[finals["label"] == label]
        by_rho = {float(r): dict(zip(g["seed"], g["masks"], strict=True)) for r, g in sub.groupby("rho")}
        if len(by_rho) < 2:
            continue
        for a, ma in sorted(by_rho.items()):
            for b, mb in sorted(by_rho.items()):
                values = [sampled_distance(m, mb[s]) for s, m in ma.items() if s in mb]
                rows.append({"group": f"{task}: {label} final", "a": f"{a:g}", "b": f"{b:g}",
                             "distance": float(np.mean(values)) if values else math.nan})
    return _frame(rows, PAIR_COLUMNS)


def as_matrix(pairs: pd.DataFrame, group: str | None = None) -> pd.DataFrame:
    """One group of a pairs frame (``group, a, b, distance``) as a square matrix (default: the first)."""
    if pairs.empty:
        return pd.DataFrame()
    group = group if group is not None else pairs["group"].iloc[0]
    data = pairs[pairs["group"] == group]
    order = list(dict.fromkeys(data["a"]))
    return data.pivot(index="a", columns="b", values="distance").reindex(index=order, columns=order).rename_axis(
        index=None, columns=None)


def plot_matrices(pairs: pd.DataFrame, axis_label: str, title: str = "", pattern: str | NxM | None = None,
                  columns: int = 4):
    """Annotated heatmaps of square distance matrices, one panel per group of ``pairs`` (from
    :func:`method_distances`, :func:`task_distances` or :func:`rho_mask_distances`), ``columns``
    panels a row."""
    import seaborn as sns

    groups = list(dict.fromkeys(pairs["group"])) if not pairs.empty else []
    size = max(3.6, 0.9 * max((len(as_matrix(pairs, g)) for g in groups), default=1) + 2.2)
    ncols = max(1, min(len(groups), columns))
    fig, axes = _subplots(ncols=ncols, nrows=max(1, math.ceil(len(groups) / ncols)), width=size + 1.0, height=size)
    if not groups:
        _empty(axes[0, 0], "not enough runs for a matrix")
        return fig
    for ax in axes.flat[len(groups):]:
        ax.set_axis_off()
    vmax = _dist_max(pairs["distance"], pattern)
    for ax, group in zip(axes.flat, groups, strict=False):
        sns.heatmap(as_matrix(pairs, group), annot=True, fmt=".3f", vmin=0.0, vmax=vmax, cmap="mako_r",
                    square=True, ax=ax, cbar_kws={"label": "fraction of kept positions that differ"})
        ax.set_xlabel(axis_label)
        ax.set_ylabel(axis_label)
        ax.set_title(group)
        ax.tick_params(axis="x", labelrotation=45)
    notes = [SAMPLE_NOTE] + ([_random_note(pattern)] if pattern else [])
    fig.suptitle(f"{title + ': ' if title else ''}mask distance, {'; '.join(notes)}")
    return fig


def plot_seed_distances(frame: pd.DataFrame, pattern: str | NxM | None = None):
    """Mask distance between seeds (same task), per task and mask (:func:`seed_distances`)."""
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
    ax.set_ylabel(f"{DIST_AXIS},\n{SAMPLE_NOTE}")
    ax.set_ylim(0, _dist_max(frame["distance"], pattern))
    ax.set_title("Masks of different seeds (same task)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def plot_rho_distances(frame: pd.DataFrame, pattern: str | NxM | None = None):
    """Final mask's distance to the reference masks vs rho (log x), from :func:`rho_distances`."""
    import seaborn as sns

    fig, axes = _subplots(width=6.0)
    ax = axes[0, 0]
    if frame.empty:
        _empty(ax, "no rho-sweep masks")
        return fig
    hue = frame["reference"] if frame["label"].nunique() == 1 else frame["label"] + " vs " + frame["reference"]
    sns.lineplot(data=frame, x="rho", y="distance", hue=hue.rename("reference"), style="task", marker="o",
                 errorbar="sd", ax=ax)
    if pattern is not None:
        ax.axhline(random_mask_distance(pattern), color="grey", linestyle=":", label="random masks")
    ax.set_xscale("log")
    rho_ticks(ax, frame["rho"])
    ax.set_xlabel(RHO_AXIS)
    ax.set_ylabel(f"{DIST_AXIS},\n{SAMPLE_NOTE}")
    ax.set_ylim(0, _dist_max(frame["distance"], pattern))
    ax.set_title(f"{', '.join(frames.label_order(frame['label']))} final mask vs reference masks")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig
