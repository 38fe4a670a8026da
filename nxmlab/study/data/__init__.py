"""A run's inputs: the GLUE tasks and their data, their metrics, and the models.

* :mod:`~nxmlab.study.data.glue`: the GLUE tasks (:class:`GlueTask`), loading them from the
  offline Parquet mirror or the Hub, tokenising, and the held-out split of selection runs;
* :mod:`~nxmlab.study.data.metrics`: GLUE's metrics from raw outputs, and each task's score;
* :mod:`~nxmlab.study.data.models`: model names (``minilm-l6``, ``tiny``, ``bert-base``, a
  Hub id or a folder) to a model and its tokenizer.

Before issue #30 ``nxmlab.study.data`` was one module, today's ``glue``; its public names
still answer here (``from nxmlab.study.data import get_task``).
"""

from __future__ import annotations

from . import glue
from .glue import (
    GLUE_DIR_ENV,
    GLUE_HUB_ID,
    GLUE_TASKS,
    HELDOUT_SEED,
    GlueTask,
    check_labels,
    get_task,
    glue_file,
    heldout_split,
    load_glue,
    resolve_glue_dir,
    tokenize_glue,
)

__all__ = list(glue.__all__)

