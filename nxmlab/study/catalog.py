"""What the command line needs before it imports torch: the verbs' choices and the repository's folders.

``nxmlab --help`` and ``nxmlab <verb> --help`` are built from this module alone (the
standard library only), so that they answer at once; torch and transformers are imported
inside the verbs.  :data:`NOTEBOOKS` and :data:`DTYPES` are defined here and re-exported by
:mod:`~nxmlab.study.cli.reproduce` and :mod:`~nxmlab.study.cli.exporting`; :data:`PRESET_NAMES`
mirrors :data:`nxmlab.study.studies.presets.PRESETS` (``tests/test_cli.py`` checks that they agree).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PRESET_NAMES", "NOTEBOOKS", "DTYPES", "repo_root", "resolve_dir"]

#: The study presets' names, in :data:`nxmlab.study.studies.presets.PRESETS` order.
PRESET_NAMES: tuple[str, ...] = ("smoke", "quick", "baselines", "convergence", "cpu", "protocol", "paper")
#: The study notebooks, in execution order (``nxmlab reproduce``).
NOTEBOOKS: tuple[str, ...] = ("glue_table", "dense_tuning", "nm_sweep", "convergence", "rho_analysis",
                              "sparsity_dynamics", "mask_distance", "protocol")
#: ``nxmlab export --dtype`` choices: ``auto`` keeps the dtype the run was trained in.
DTYPES: tuple[str, ...] = ("auto", "float32", "float16", "bfloat16")


def repo_root() -> Path | None:
    """The source checkout this nxmlab is imported from, or ``None`` for an installed package."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "notebooks").is_dir() else None


def resolve_dir(value: str | os.PathLike[str] | None, default: str) -> Path:
    """An absolute folder for a notebook path parameter (or a default of ``nxmlab reproduce``).

    ``None`` is the repository's ``<default>/`` and a relative path is taken from the
    repository root, so the kernel's working directory (``notebooks/`` in JupyterLab)
    never matters.  Outside a source checkout both are taken from the working directory.
    """
    path = Path(default if value is None else value).expanduser()
    if not path.is_absolute():
        path = (repo_root() or Path.cwd()) / path
    return Path(os.path.abspath(path))
