"""The study layer: the method layer (:mod:`nxmlab.nxm`, :mod:`nxmlab.admm`,
:mod:`nxmlab.masking`...) run as the paper's experiments on GLUE.  It is never imported
by the method layer.  Its folders, each owning one part:

================  ===========================================================================
``data/``         a run's inputs: the GLUE tasks and files (``glue.py``), their metrics and
                  scores (``metrics.py``), the models (``models.py``)
``train/``        one run: its config and hash (``config.py``), the method registry
                  (``methods.py``), the methods' phase hooks (``hooks.py``), the recipe that
                  runs it (``recipe.py``), ``torchrun`` (``distributed.py``)
``results/``      the results store (``store.py``: run folders and every results file name),
                  its checks (``integrity.py``, ``verify.py``), the runs as tidy frames
                  (``frames.py``) and paired bootstrap intervals (``stats.py``)
``studies/``      the experiments: ``presets.py``, a preset's runs (``runs.py``), the choices
                  made from them (``tuning.py``, ``selection.py``, ``convergence.py``), their
                  projected cost (``cost.py``), the notebooks' setup (``notebook.py``)
``plots/``        every figure; the notebooks call ``plots.<function>`` for all of them
``cli/``          the ``nxmlab`` command: every verb (``commands.py``), ``reproduce.py``,
                  ``exporting.py`` (``nxmlab export``), ``trainhelp.py``
================  ===========================================================================

Beside them, two modules of the standard library only, which every folder may use:
:mod:`~nxmlab.study.inputs` (the one validation of user input) and
:mod:`~nxmlab.study.catalog` (the names and folders the command line knows before it
imports torch).

Where to look:

* **a results file** (``metrics.json``, ``masks.npz``, ``dynamics.parquet``...): its name
  in ``results/store.py`` (:class:`~nxmlab.study.results.store.RunFolder`); it is written
  by ``train/recipe.py`` and ``train/hooks.py`` and read by ``results/frames.py``;
* **a plot**: ``plots/<subject>.py``, named after the frames it draws;
* **a method**: its algorithm in the method layer (``nxmlab/admm.py``, ``nxmlab/wanda.py``
  ...), its entry in ``train/methods.py`` (steps, options, mask rule), its phase hooks in
  ``train/hooks.py``;
* **a CLI verb**: ``cli/commands.py`` parses it and calls the module that does the work:
  ``train`` -> ``train/recipe.py``, ``table`` -> ``results/frames.py``, ``verify`` ->
  ``results/verify.py``, ``reproduce`` -> ``cli/reproduce.py``, ``export`` and
  ``verify-export`` -> ``cli/exporting.py``.

Imports point down the folders in this order: ``cli`` -> ``studies`` -> ``plots`` ->
``train`` and ``results`` -> ``data`` -> ``inputs`` and ``catalog``.  ``train`` and
``results`` use each other: a run writes through ``results/store.py`` (with
``results/integrity.py``'s checksums and ``results/frames.py``'s mask distances), and
``results/frames.py`` and ``results/verify.py`` read the registry (``train/methods.py``).
No module imports another that imports it back (``tests/test_layers.py``, type-checking
imports included).

**Old names.** Before issue #30 the study layer was 33 flat modules.  Each old name still
works, as the same module object: ``from nxmlab.study import frames, maskplots`` (through
this package's ``__getattr__``), ``import nxmlab.study.frames`` and ``from
nxmlab.study.store import RunFolder`` (through a finder for the old names), and pickles
that name them.  :data:`MOVED` maps each to its module; nothing is imported before it is
asked for.  ``data``, ``plots`` and ``cli`` are folders now, whose packages answer their
old module's names.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
from types import ModuleType
from typing import Any

#: Each module of the flat layout (before issue #30) that moved into a folder: old name -> new module.
MOVED: dict[str, str] = {
    "metrics": "data.metrics", "models": "data.models",
    "config": "train.config", "methods": "train.methods", "hooks": "train.hooks", "recipe": "train.recipe",
    "distributed": "train.distributed", "timing": "train.timing", "progress": "train.progress",
    "store": "results.store", "integrity": "results.integrity", "frames": "results.frames",
    "stats": "results.stats", "verify": "results.verify",
    "presets": "studies.presets", "runs": "studies.runs", "tuning": "studies.tuning",
    "selection": "studies.selection", "convergence": "studies.convergence", "notebook": "studies.notebook",
    "maskplots": "plots.masks", "statplots": "plots.stats", "sweepplots": "plots.sweeps",
    "convplots": "plots.convergence", "moveplots": "plots.movement",
    "trainhelp": "cli.trainhelp", "reproduce": "cli.reproduce", "exporting": "cli.exporting",
}
_FOLDERS = ("data", "train", "results", "studies", "plots", "cli")


def __getattr__(name: str) -> Any:
    """An old flat module name (:data:`MOVED`), or a folder, imported on first use."""
    if name in MOVED:
        return importlib.import_module(f"{__name__}.{MOVED[name]}")
    if name in _FOLDERS:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *MOVED, *_FOLDERS})


class _OldNames:
    """``import nxmlab.study.<old name>``: the module it moved to, under both names (a
    meta path finder and its loader; ``importlib.abc`` is not imported, it costs 0.1 s)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        package, _, name = fullname.rpartition(".")
        if package != __name__ or name not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(f"{__name__}.{MOVED[spec.name.rpartition('.')[2]]}")
        spec.loader_state = module.__spec__  # the import system sets __spec__ to the old name's: see exec_module
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = module.__spec__.loader_state  # already executed under its new name; keep its own spec


if not any(isinstance(finder, _OldNames) for finder in sys.meta_path):
    sys.meta_path.append(_OldNames())
