"""Every figure of the study, drawn from the results' tidy frames; the notebooks call
``plots.<function>`` for all of them.

* :mod:`~nxmlab.study.plots.core`: the style (:func:`set_style`), :func:`savefig`, the GLUE
  table and bars, the rho sweep, ADMM's dynamics and the weight magnitudes;
* :mod:`~nxmlab.study.plots.masks`: mask distances (across methods, seeds, tasks, rho);
* :mod:`~nxmlab.study.plots.stats`: the paired bootstrap's forest plot and claims table, and
  the answers of several studies side by side;
* :mod:`~nxmlab.study.plots.sweeps`: the n:m pattern sweep;
* :mod:`~nxmlab.study.plots.convergence`: the ADMM convergence study;
* :mod:`~nxmlab.study.plots.movement`: how far masks move (the protocol study);
* :mod:`~nxmlab.study.plots.tuning`: the dense tuning sweep.

:mod:`~nxmlab.study.plots.core`'s public names are imported with the package, as the old
``nxmlab.study.plots`` module's were; the other modules' public names answer here too,
imported on first use (:mod:`~nxmlab.study.plots.convergence` loads torch and transformers).
"""

from __future__ import annotations

import importlib
from typing import Any

from . import core
from .core import (
    MAGNITUDE_COLUMNS,
    REL_DIST_AXIS,
    RHO_AXIS,
    SCORE_AXIS,
    STEP_AXIS,
    load_magnitudes,
    plot_flips,
    plot_glue_bars,
    plot_layer_heatmap,
    plot_magnitudes,
    plot_primal_trajectories,
    plot_prune_stages,
    plot_rel_dist,
    plot_rho_scores,
    primal_trajectories,
    prune_drop_claim,
    rho_frame,
    rho_ticks,
    savefig,
    set_style,
    write_glue_table,
)

#: The public names of the other plotting modules, each imported on first use.
LAZY: dict[str, tuple[str, ...]] = {
    "masks": ("SAMPLE_NOTE", "random_mask_distance", "distance_summary", "plot_layer_distances", "mask_samples",
              "sampled_distance", "method_distances", "seed_distances", "task_distances", "rho_distances",
              "rho_mask_distances", "as_matrix", "plot_matrices", "plot_seed_distances", "plot_rho_distances"),
    "stats": ("plot_forest", "write_differences", "read_differences", "format_verdicts", "claims_table",
              "side_by_side", "write_side_by_side", "ANSWERS"),
    "sweeps": ("density_frame", "plot_density", "pattern_comparisons"),
    "convergence": ("plot_trajectories", "plot_stage_scores", "plot_mask_sources", "criteria_table"),
    "movement": ("plot_mask_movement", "plot_update_movement", "movement_summary"),
    "tuning": ("plot_tuning",),
}
_SOURCES = {name: module for module, names in LAZY.items() for name in names}

__all__ = [*core.__all__, *_SOURCES]


def __getattr__(name: str) -> Any:
    """A plotting module, or a public name of one, imported on first use."""
    module = name if name in LAZY else _SOURCES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    loaded = importlib.import_module(f".{module}", __name__)
    return loaded if module == name else getattr(loaded, name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_SOURCES, *LAZY})
