"""The ``nxmlab`` command line.

* :mod:`~nxmlab.study.cli.commands`: the parser and every verb (``train``, ``table``,
  ``verify``, ``reproduce``, ``export``, ``verify-export``); each verb calls the folder that
  owns its work (``train`` -> :mod:`nxmlab.study.train.recipe`, ``table`` ->
  :mod:`nxmlab.study.results.frames`, ``verify`` -> :mod:`nxmlab.study.results.verify`);
* :mod:`~nxmlab.study.cli.reproduce`: ``nxmlab reproduce``, the study notebooks executed
  in order with papermill;
* :mod:`~nxmlab.study.cli.exporting`: ``nxmlab export`` and ``verify-export``, a finished
  run as a Hugging Face folder;
* :mod:`~nxmlab.study.cli.trainhelp`: ``nxmlab train --help``, cached.

Nothing here imports torch before a verb runs.  Before issue #30 ``nxmlab.study.cli`` was
one module, today's ``commands``; its public names still answer here.
"""

from __future__ import annotations

from . import commands
from .commands import EXIT_INTERRUPTED, EXIT_USAGE, UsageError, build_parser, main, system_fault

__all__ = list(commands.__all__)

