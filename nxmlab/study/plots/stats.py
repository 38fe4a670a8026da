"""The paired differences of the powered study: a forest plot and its table files.

:func:`nxmlab.study.results.stats.paired_bootstrap` gives the frame; :func:`write_differences`
writes it as ``paired_differences.csv`` (numeric) and ``.md`` (with the verdicts), and
:func:`plot_forest` draws each comparison's per-task and average difference with its
95 % interval.  :func:`side_by_side` puts the task-average answers of several studies (the
matched-budget ``cpu`` study and the authors' ``protocol``) in one table.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..results.stats import COMPARISONS, VERDICTS, Comparison
from .core import _empty, _subplots

__all__ = ["plot_forest", "write_differences", "read_differences", "format_verdicts", "claims_table",
           "side_by_side", "write_side_by_side", "ANSWERS"]

#: A verdict as the plain answer to a claim ("is a better than b?").
ANSWERS = {"supported": "supported", "contradicted": "not supported: resolved the other way",
           "unresolved": "unresolved with this power"}


def plot_forest(diffs: pd.DataFrame):
    """One row per (comparison, task): the observed difference (points, a - b) and its
    two-level paired-bootstrap 95 % interval (seeds, then examples); averages drawn as filled
    diamonds, tasks as open circles; a dotted line at 0.  Where a row pools several seeds, red
    ticks mark its smallest and largest single-seed difference.  A
    blue star on an average row marks the paper's reported difference (BERT-base), where
    :data:`~nxmlab.study.results.stats.COMPARISONS` holds one."""
    paper = {c.name: c.paper for c in COMPARISONS if c.paper is not None}
    rows = list(diffs.itertuples(index=False)) if not diffs.empty else []
    fig, axes = _subplots(width=6.4, height=max(2.4, 0.28 * len(rows) + 1.0))
    ax = axes[0, 0]
    if not rows:
        _empty(ax, "no paired runs to compare")
        return fig
    labels = []
    for y, row in enumerate(reversed(rows)):
        avg = row.task == "average"
        ax.errorbar(row.diff, y, xerr=[[row.diff - row.ci_low], [row.ci_high - row.diff]], fmt="D" if avg else "o",
                    color="black" if avg else "0.35", mfc="black" if avg else "white", ms=6 if avg else 5, capsize=2,
                    lw=1.4 if avg else 1.0)
        seed_min, seed_max = getattr(row, "seed_min", None), getattr(row, "seed_max", None)
        if row.n_seeds > 1 and pd.notna(seed_min) and pd.notna(seed_max):
            ax.plot([seed_min, seed_max], [y, y], ls="none", marker="|", ms=9, mew=1.5, color="tab:red",
                    label="smallest / largest single seed" if "smallest / largest single seed" not in
                    ax.get_legend_handles_labels()[1] else None)
        if avg and row.comparison in paper:
            ax.plot([paper[row.comparison]], [y], ls="none", marker="*", ms=9, color="tab:blue",
                    label="the paper's difference (BERT-base)")
        labels.append(f"{row.comparison} | {row.task}" + (f" ({row.tasks})" if avg else "") + f", {row.n_seeds} seed(s)")
    ax.axvline(0.0, color="0.5", ls=":", lw=1)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=True)  # above the rows
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("difference a - b (score points x100), 95 % CI over seeds and examples")
    ax.set_ylim(-0.7, len(labels) - 0.3)
    return fig


def format_verdicts(diffs: pd.DataFrame) -> str:
    """One line per comparison's average: difference, interval and verdict."""
    out = []
    for row in diffs[diffs["task"] == "average"].itertuples(index=False):
        out.append(f"{row.comparison} (average of {row.tasks}): {row.diff:+.2f} points, 95 % CI "
                   f"[{row.ci_low:+.2f}, {row.ci_high:+.2f}] -> {row.verdict} ({VERDICTS[row.verdict]})")
    return "\n".join(out) if out else "no paired runs to compare"


def claims_table(diffs: pd.DataFrame, comparisons: Sequence[Comparison] = COMPARISONS) -> pd.DataFrame:
    """The answer to each claim of ``comparisons`` (those with a ``claim``) on the task
    average: ``claim, comparison, paper, tasks, n_seeds, diff, seed_min, seed_max, ci_low,
    ci_high, verdict, answer`` (:data:`ANSWERS`, and whether the paper's reported difference
    lies in the interval, where it reports one, and whether the single seeds agree in sign,
    where there are several); a claim without an average row is left out."""
    columns = ["claim", "comparison", "paper", "tasks", "n_seeds", "diff", "seed_min", "seed_max", "ci_low",
               "ci_high", "verdict", "answer"]
    avg = diffs[diffs["task"] == "average"].set_index("comparison") if not diffs.empty else pd.DataFrame()
    rows = []
    for comp in comparisons:
        if comp.claim and comp.name in avg.index:
            row = avg.loc[comp.name]
            answer = ANSWERS[row["verdict"]]
            if comp.paper is not None:
                inside = row["ci_low"] <= comp.paper <= row["ci_high"]
                answer += f"; the paper's {comp.paper:+.2f} is {'inside' if inside else 'outside'} the interval"
            if row.get("interval") == "examples":
                answer += "; one seed: the interval covers the validation examples only"
            split = _seeds_split(row)
            if split is not None:
                answer += "; the single seeds differ in sign" if split else "; every single seed has the same sign"
            rows.append([comp.claim, comp.name, comp.paper, *(row[c] for c in columns[3:-1]), answer])
    return pd.DataFrame(rows, columns=columns)


def _has_seed_range(row) -> bool:
    """Whether a pooled row (a Series or a named tuple) has a range of several single seeds."""
    return row.n_seeds > 1 and pd.notna(row.seed_min) and pd.notna(row.seed_max)


def _seeds_split(row) -> bool | None:
    """Whether a pooled row's single-seed differences straddle 0 (``None`` for one seed): the
    two-level interval resamples them, this says so plainly."""
    return bool(row.seed_min <= 0 <= row.seed_max) if _has_seed_range(row) else None


def _per_seed(row) -> str:
    """The single seeds' range of a pooled row, ``–`` for one seed."""
    return f"{row.seed_min:+.2f} to {row.seed_max:+.2f}" if _has_seed_range(row) else "–"


def write_differences(diffs: pd.DataFrame, figures_dir: str | os.PathLike[str] = "figures",
                      name: str = "paired_differences") -> list[Path]:
    """Write ``<name>.csv`` (the frame, 4 decimals) and ``<name>.md`` (with the verdicts);
    ``name`` defaults to ``paired_differences`` (the n:m sweep writes ``nm_differences``)."""
    folder = Path(figures_dir)
    folder.mkdir(parents=True, exist_ok=True)
    csv, md = folder / f"{name}.csv", folder / f"{name}.md"
    diffs.to_csv(csv, index=False, float_format="%.4f")
    lines = ["# Paired differences (points x100, a - b)\n",
             "Two-level paired bootstrap (nxmlab.study.stats): each replicate resamples the training seeds "
             "with replacement, then the validation examples within each drawn seed, so the `95 % CI` covers "
             "the seed-to-seed variance as well as the examples'; with one seed it covers the examples only "
             "(`examples`). The verdict follows that interval: " + "; ".join(f"{k}: {v}" for k, v in VERDICTS.items())
             + ". `examples-only CI` resamples the examples with the seeds fixed (the interval before issue "
             "#28). `per seed` is the range of the single seeds' differences (the average's: each seed "
             "averaged over the tasks, when every task has the same seeds); `seeds differ in sign` marks a "
             "range that holds 0.\n",
             "| comparison | task | seeds | diff | per seed | 95 % CI | verdict | examples-only CI |",
             "|---|---|---|---|---|---|---|---|"]
    for row in diffs.itertuples(index=False):
        task = f"average ({row.tasks})" if row.task == "average" else row.task
        covers = "" if getattr(row, "interval", "seeds+examples") == "seeds+examples" else " (examples)"
        ex = (f"[{row.ex_ci_low:+.2f}, {row.ex_ci_high:+.2f}] {row.ex_verdict}" if hasattr(row, "ex_ci_low")
              else "–")
        lines.append(f"| {row.comparison} | {task} | {row.n_seeds} | {row.diff:+.2f} | {_per_seed(row)} | "
                     f"[{row.ci_low:+.2f}, {row.ci_high:+.2f}]{covers} | {row.verdict}"
                     f"{'; seeds differ in sign' if _seeds_split(row) else ''} | {ex} |")
    claims = claims_table(diffs)
    if not claims.empty:
        lines += ["", "## The claims, answered on the task average\n",
                  "| claim | comparison | paper (BERT-base) | average of | seeds | diff | per seed | 95 % CI | answer |",
                  "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {row.claim} | {row.comparison} | {'–' if pd.isna(row.paper) else f'{row.paper:+.2f}'} | "
                  f"{row.tasks} | {row.n_seeds} | {row.diff:+.2f} | "
                  f"{_per_seed(row)} | [{row.ci_low:+.2f}, {row.ci_high:+.2f}] | {row.answer} |"
                  for row in claims.itertuples(index=False)]
    md.write_text("\n".join(lines) + "\n")
    return [csv, md]


def read_differences(figures_dir: str | os.PathLike[str], name: str = "paired_differences") -> pd.DataFrame | None:
    """The ``<name>.csv`` :func:`write_differences` wrote in ``figures_dir`` (``None`` when absent)."""
    path = Path(figures_dir) / f"{name}.csv"
    if not path.is_file():
        return None
    frame = pd.read_csv(path, dtype={"tasks": str, "seeds": str})
    return frame


def side_by_side(studies: dict[str, pd.DataFrame], comparisons: Sequence[Comparison] = COMPARISONS) -> pd.DataFrame:
    """The task-average row of each comparison in several studies, tidy: one row per
    ``(comparison, study)`` with ``paper, tasks, n_seeds, diff, seed_min, seed_max, ci_low,
    ci_high, interval, verdict``.

    Args:
        studies: ``{study name: paired-differences frame}`` (:func:`write_differences`'s
            columns), in the order the columns of :func:`write_side_by_side` take.
        comparisons: Their order; a comparison no study measured is left out.
    """
    columns = ["comparison", "paper", "study", "tasks", "n_seeds", "diff", "seed_min", "seed_max", "ci_low",
               "ci_high", "interval", "verdict"]
    rows = []
    for comp in comparisons:
        for study, diffs in studies.items():
            avg = diffs[(diffs["task"] == "average") & (diffs["comparison"] == comp.name)] if diffs is not None \
                and not diffs.empty else pd.DataFrame()
            if avg.empty:
                continue
            row = avg.iloc[0]
            rows.append([comp.name, comp.paper, study, row["tasks"], int(row["n_seeds"]), row["diff"],
                         row.get("seed_min"), row.get("seed_max"), row["ci_low"], row["ci_high"],
                         row.get("interval", "seeds+examples"), row["verdict"]])
    return pd.DataFrame(rows, columns=columns)


def _answer_cell(row) -> str:
    """``-1.59 [-3.28, +0.09] unresolved; seeds -2.67 to -0.08 (3 seeds: cola,mrpc,stsb)``."""
    seeds = f"; seeds {_per_seed(row)}" if _has_seed_range(row) else ""
    covers = "; one seed: examples only" if row.interval == "examples" else ""
    return (f"{row.diff:+.2f} [{row.ci_low:+.2f}, {row.ci_high:+.2f}] {row.verdict}{seeds}{covers} "
            f"({row.n_seeds} seed{'s' if row.n_seeds != 1 else ''}: {row.tasks})")


def write_side_by_side(answers: pd.DataFrame, figures_dir: str | os.PathLike[str], descriptions: dict[str, str],
                       name: str = "answers_side_by_side") -> list[Path]:
    """Write :func:`side_by_side`'s frame as ``<name>.csv`` and ``<name>.md``: one row per
    comparison, one column per study (``descriptions``: ``{study: what its setting is}``,
    in column order); ``–`` where a study did not measure a comparison."""
    folder = Path(figures_dir)
    folder.mkdir(parents=True, exist_ok=True)
    csv, md = folder / f"{name}.csv", folder / f"{name}.md"
    answers.to_csv(csv, index=False, float_format="%.4f")
    studies = list(descriptions)
    lines = ["# The answers, study beside study (task average, points x100, a - b)\n",
             "Each cell: the difference, its 95 % two-level paired-bootstrap interval (seeds, then examples) "
             "and the verdict (" + "; ".join(f"{k}: {v}" for k, v in VERDICTS.items()) + "), the single "
             "seeds' range, and the seeds and tasks of the average. `–`: not measured in that study.\n",
             *(f"- `{study}`: {text}" for study, text in descriptions.items()), "",
             "| comparison | paper (BERT-base) | " + " | ".join(f"`{s}`" for s in studies) + " |",
             "|---|---|" + "---|" * len(studies)]
    for comparison, group in answers.groupby("comparison", sort=False):
        cells = {row.study: _answer_cell(row) for row in group.itertuples(index=False)}
        paper = group["paper"].iloc[0]
        lines.append(f"| {comparison} | {'–' if pd.isna(paper) else f'{paper:+.2f}'} | "
                     + " | ".join(cells.get(s, "–") for s in studies) + " |")
    md.write_text("\n".join(lines) + "\n")
    return [csv, md]
