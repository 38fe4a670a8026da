"""GLUE task registry, loading (local Parquet mirror or Hugging Face Hub) and tokenisation.

The loader reads either a local mirror laid out like the Hub dataset ``nyu-mll/glue``
(``<glue_dir>/<task>/<split>.parquet``, e.g. ``glue/rte/validation.parquet``) or the Hub
itself. The mirror directory is taken from the ``glue_dir`` argument or, failing that, from
the environment variable ``NXMLAB_GLUE_DIR``; when neither is set the Hub is used.

Nothing here changes global state at import time: offline mode (``HF_HUB_OFFLINE`` /
``HF_DATASETS_OFFLINE``) is left to the user. Reading the local mirror works offline.

Tokenised datasets are *not* padded; batch them with
``transformers.DataCollatorWithPadding(tokenizer)`` so each batch is padded only to its
own longest sequence (dynamic padding).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # keep `import nxmlab.study.data.glue` cheap; datasets is imported on use
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "GLUE_DIR_ENV",
    "GLUE_HUB_ID",
    "GLUE_TASKS",
    "HELDOUT_SEED",
    "heldout_split",
    "GlueTask",
    "check_labels",
    "get_task",
    "glue_file",
    "load_glue",
    "resolve_glue_dir",
    "tokenize_glue",
]

#: Environment variable naming the local GLUE Parquet mirror.
GLUE_DIR_ENV = "NXMLAB_GLUE_DIR"
#: Seed of the held-out split of a training set (:func:`heldout_split`): fixed, so every
#: selection run of a task holds out the same examples, whatever its training seed.
HELDOUT_SEED = 20211206
#: Hub dataset used when no local mirror is configured.
GLUE_HUB_ID = "nyu-mll/glue"


@dataclass(frozen=True)
class GlueTask:
    """Static description of one GLUE task.

    Attributes:
        name: Task name as used by ``nyu-mll/glue`` (``"cola"``, ``"mnli"``, ...).
        keys: Text column(s) fed to the tokenizer: one name or a (first, second) pair.
        num_labels: Size of the classifier head (1 for the STS-B regression task).
        is_regression: True for STS-B (float similarity score 0-5).
        metric: Human-readable description of the official GLUE metric.
        train_split: Name of the training split.
        eval_splits: Labelled evaluation split(s) (MNLI: matched and mismatched).
        test_splits: Unlabelled test split(s) (labels are -1).
        main_metric: Key of the GLUE task score in :func:`nxmlab.study.data.metrics.glue_metrics`'s
            output. It is ``"score"`` for every task, which also works as
            ``TrainingArguments(metric_for_best_model="score")``.
        score_keys: Metric keys whose mean is the GLUE task score
            (CoLA: mcc; STS-B: pearson, spearmanr; MRPC/QQP: f1, accuracy; else accuracy).
        label_names: Class names by label id (``None`` for regression).
    """

    name: str
    keys: tuple[str] | tuple[str, str]
    num_labels: int
    is_regression: bool
    metric: str
    train_split: str = "train"
    eval_splits: tuple[str, ...] = ("validation",)
    test_splits: tuple[str, ...] = ("test",)
    main_metric: str = "score"
    score_keys: tuple[str, ...] = ("accuracy",)
    label_names: tuple[str, ...] | None = None

    @property
    def splits(self) -> tuple[str, ...]:
        """All splits of the task: train, then evaluation, then test splits."""
        return (self.train_split, *self.eval_splits, *self.test_splits)


GLUE_TASKS: dict[str, GlueTask] = {
    t.name: t
    for t in (
        GlueTask(
            "cola", ("sentence",), 2, False, "Matthews corr.",
            score_keys=("mcc",), label_names=("unacceptable", "acceptable"),
        ),
        GlueTask(
            "sst2", ("sentence",), 2, False, "accuracy",
            label_names=("negative", "positive"),
        ),
        GlueTask(
            "mrpc", ("sentence1", "sentence2"), 2, False, "F1 / accuracy",
            score_keys=("f1", "accuracy"), label_names=("not_equivalent", "equivalent"),
        ),
        GlueTask(
            "qqp", ("question1", "question2"), 2, False, "F1 / accuracy",
            score_keys=("f1", "accuracy"), label_names=("not_duplicate", "duplicate"),
        ),
        GlueTask(
            "stsb", ("sentence1", "sentence2"), 1, True, "Pearson / Spearman corr.",
            score_keys=("pearson", "spearmanr"),
        ),
        GlueTask(
            "mnli", ("premise", "hypothesis"), 3, False, "accuracy (matched / mismatched)",
            eval_splits=("validation_matched", "validation_mismatched"),
            test_splits=("test_matched", "test_mismatched"),
            label_names=("entailment", "neutral", "contradiction"),
        ),
        GlueTask(
            "qnli", ("question", "sentence"), 2, False, "accuracy",
            label_names=("entailment", "not_entailment"),
        ),
        GlueTask(
            "rte", ("sentence1", "sentence2"), 2, False, "accuracy",
            label_names=("entailment", "not_entailment"),
        ),
        GlueTask(
            "wnli", ("sentence1", "sentence2"), 2, False, "accuracy",
            label_names=("not_entailment", "entailment"),
        ),
    )
}


def get_task(name: str | GlueTask) -> GlueTask:
    """Return the :class:`GlueTask` called ``name`` (case-insensitive).

    Args:
        name: Task name, e.g. ``"rte"``; a :class:`GlueTask` is returned unchanged.

    Raises:
        ValueError: If the task is unknown.
    """
    if isinstance(name, GlueTask):
        return name
    key = str(name).strip().lower()
    if key not in GLUE_TASKS:
        raise ValueError(
            f"unknown GLUE task {name!r}; choose one of: {', '.join(GLUE_TASKS)}"
        )
    return GLUE_TASKS[key]


def resolve_glue_dir(glue_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """Decide where GLUE is read from.

    Args:
        glue_dir: Explicit mirror directory; wins over the environment.

    Returns:
        The mirror directory (``glue_dir``, else ``$NXMLAB_GLUE_DIR`` if set and non-empty),
        or ``None`` meaning "load from the Hugging Face Hub". The path is not checked here.
    """
    if glue_dir is not None:
        return Path(glue_dir).expanduser()
    env = os.environ.get(GLUE_DIR_ENV, "").strip()
    return Path(env).expanduser() if env else None


def glue_file(glue_dir: str | os.PathLike[str], task: str | GlueTask, split: str) -> Path:
    """Path of one split in a mirror: ``<glue_dir>/<task>/<split>.parquet`` (not checked)."""
    return Path(glue_dir).expanduser() / get_task(task).name / f"{split}.parquet"


def _check_split(task: GlueTask, split: str) -> None:
    if split not in task.splits:
        raise ValueError(
            f"unknown split {split!r} for GLUE task '{task.name}'; "
            f"valid splits: {', '.join(task.splits)}"
        )


def _missing_message(what: str, path: Path) -> str:
    return (
        f"{what}: {path}. Either put the Parquet file there (layout "
        f"<glue_dir>/<task>/<split>.parquet, same schema as the Hub dataset '{GLUE_HUB_ID}'), "
        f"or load from the Hub '{GLUE_HUB_ID}' instead by unsetting {GLUE_DIR_ENV} "
        f"and passing glue_dir=None."
    )


@contextlib.contextmanager
def _datasets_errors_silenced():
    """``datasets`` logs a damaged Parquet file as an ERROR (twice) before it raises; while
    loading a mirror file only its exception is kept, which :func:`load_glue` turns into one line."""
    ds_logger = logging.getLogger("datasets")
    level = ds_logger.level
    ds_logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        ds_logger.setLevel(level)


def load_glue(
    task: str | GlueTask,
    split: str,
    glue_dir: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Dataset:
    """Load one split of a GLUE task.

    Reads ``<glue_dir>/<task>/<split>.parquet`` when a mirror directory resolves (see
    :func:`resolve_glue_dir`), else ``load_dataset("nyu-mll/glue", task, split=split)``.
    Both give the same columns (text column(s), ``label``, ``idx``) and ``ClassLabel``
    features.

    Args:
        task: Task name or :class:`GlueTask`.
        split: Split name, e.g. ``"validation"`` or ``"validation_matched"`` (MNLI).
        glue_dir: Local mirror directory; ``None`` falls back to ``$NXMLAB_GLUE_DIR``,
            then to the Hub.
        limit: If given, keep only the first ``limit`` rows (deterministic, for tests and
            smoke runs).
        cache_dir: ``datasets`` cache directory (default: the user's HF datasets cache).

    Returns:
        A ``datasets.Dataset``. Mirror splits are held in memory; Hub splits are
        memory-mapped from the cache.

    Raises:
        ValueError: Unknown task or split, negative ``limit``, or an unreadable
            (corrupt/truncated) Parquet file (the message names the file).
        FileNotFoundError: The mirror directory or the split's file does not exist (the
            message names the path and how to get the data).
        ConnectionError: The Hub could not be reached (no mirror configured).
    """
    from datasets import load_dataset

    spec = get_task(task)
    _check_split(spec, split)
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    cache = None if cache_dir is None else str(cache_dir)

    root = resolve_glue_dir(glue_dir)
    if root is None:
        try:
            ds = load_dataset(GLUE_HUB_ID, spec.name, split=split, cache_dir=cache)
        except ConnectionError as exc:
            raise ConnectionError(
                f"could not load GLUE {spec.name}/{split} from the Hub '{GLUE_HUB_ID}' ({exc}). "
                f"Set {GLUE_DIR_ENV} (or pass glue_dir=...) to a local Parquet mirror laid out "
                f"as <glue_dir>/<task>/<split>.parquet. (Without network, the Hub path only "
                f"works for data already in the HF cache, with HF_HUB_OFFLINE=1.)"
            ) from exc
    else:
        if not root.is_dir():
            raise FileNotFoundError(
                _missing_message(f"GLUE directory does not exist (from glue_dir or "
                                 f"{GLUE_DIR_ENV})", root)
            )
        path = glue_file(root, spec, split)
        if not path.is_file():
            raise FileNotFoundError(
                _missing_message(f"GLUE file for {spec.name}/{split} not found", path)
            )
        # The mirror files are small (largest: SST-2 train, 67k rows), so keep them in
        # memory. `datasets` still converts each file once into its Arrow cache (one copy
        # per file, re-used on later calls), but an in-memory dataset is not backed by cache
        # files, so the `.map()` in tokenize_glue does not write a new cache file into the
        # user's HF cache for every tokenizer / max_seq_length combination.
        from datasets.exceptions import DatasetGenerationError
        from pyarrow import ArrowException

        try:
            with _datasets_errors_silenced():  # a damaged file: our one line below, not datasets' two
                ds = load_dataset(
                    "parquet",
                    data_files={split: str(path)},
                    split=split,
                    keep_in_memory=True,
                    cache_dir=cache,
                )
        except (ArrowException, DatasetGenerationError, OSError) as exc:
            # OSError covers pyarrow's "Couldn't deserialize thrift" on damaged pages;
            # the file's existence was checked above.
            raise ValueError(
                f"could not read GLUE Parquet file {path} (corrupt or truncated?): "
                f"{type(exc).__name__}: {exc}. Replace it with a fresh copy in the "
                f"'{GLUE_HUB_ID}' schema."
            ) from exc

    if limit is not None and limit < len(ds):
        ds = ds.select(range(limit))
    check_labels(ds, spec, split, str(path) if root is not None else f"{GLUE_HUB_ID}/{spec.name}/{split}")
    return ds


def heldout_split(dataset: Dataset, fraction: float, seed: int = HELDOUT_SEED) -> tuple[Dataset, Dataset]:
    """``(train, heldout)``: a seeded split of a training set for choosing settings.

    ``round(fraction * len(dataset))`` examples (at least one) are held out; both parts
    keep the dataset's order and its ``idx`` column, so the held-out examples are named by
    their GLUE ``idx`` (a selection run's ``predictions.parquet`` lists them, split
    ``heldout``).  The split depends on ``seed`` and the dataset alone, never on a run's
    training seed.

    Raises:
        ValueError: ``fraction`` outside (0, 0.5], or a dataset too small to split.
    """
    import numpy as np

    if not 0 < fraction <= 0.5:
        raise ValueError(f"heldout must be a fraction in (0, 0.5], got {fraction!r}")
    n = len(dataset)
    k = max(1, round(fraction * n))
    if k >= n:
        raise ValueError(f"cannot hold out {k} of {n} training examples")
    chosen = np.zeros(n, dtype=bool)
    chosen[np.random.default_rng(seed).permutation(n)[:k]] = True
    return dataset.select(np.flatnonzero(~chosen)), dataset.select(np.flatnonzero(chosen))


def check_labels(dataset: Dataset, task: str | GlueTask, split: str, source: str) -> None:
    """Raise ``ValueError`` naming ``source`` unless the ``label`` column fits the task.

    Classification labels must be integer class ids in ``0..num_labels-1`` (``-1`` only in
    test splits, which are unlabelled); STS-B labels must be finite numbers.  Text labels,
    ids out of range and missing values are refused before anything is trained.
    """
    import numpy as np
    import pyarrow as pa

    spec = get_task(task)
    if "label" not in dataset.column_names or len(dataset) == 0:
        return  # tokenize_glue names a missing column
    column = dataset.data.column("label")
    kind = column.type
    numeric = pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
    if not numeric:
        example = next((v for v in column.to_pylist() if v is not None), None)
        raise ValueError(f"{source}: column 'label' holds {kind} values (e.g. {example!r}); GLUE {spec.name} "
                         + ("labels are numbers (similarity 0-5)" if spec.is_regression else
                            f"labels are class ids 0..{spec.num_labels - 1}"))
    if column.null_count:
        raise ValueError(f"{source}: column 'label' has {column.null_count} missing value(s)")
    values = column.to_numpy().astype(np.float64)
    if spec.is_regression:
        bad = values[~np.isfinite(values)]
        if bad.size:
            raise ValueError(f"{source}: column 'label' holds non-finite values (e.g. {bad[0]!r})")
        return
    allowed_low = -1 if split in spec.test_splits else 0
    bad = values[(values != np.round(values)) | (values < allowed_low) | (values >= spec.num_labels)]
    if bad.size:
        raise ValueError(f"{source}: column 'label' holds {bad.size} value(s) outside the class ids "
                         f"0..{spec.num_labels - 1} of GLUE {spec.name} (e.g. {bad[0]:g})")


def tokenize_glue(
    dataset: Dataset,
    task: str | GlueTask,
    tokenizer: PreTrainedTokenizerBase,
    max_seq_length: int = 128,
    num_proc: int | None = None,
) -> Dataset:
    """Tokenise a GLUE split for sequence classification.

    Sentences (or sentence pairs) are truncated to ``max_seq_length`` tokens but **not
    padded**: batch the result with ``transformers.DataCollatorWithPadding(tokenizer)``.
    The raw text columns and ``idx`` are removed; ``label`` is renamed ``labels`` (int
    class ids, ``ClassLabel`` kept; float32 for STS-B). Test splits keep their ``-1``
    labels.

    Args:
        dataset: A split from :func:`load_glue`.
        task: Task name or :class:`GlueTask`.
        tokenizer: A Hugging Face tokenizer.
        max_seq_length: Maximum number of tokens per example (incl. special tokens).
        num_proc: Worker processes for ``Dataset.map`` (default: in-process).

    Returns:
        A dataset with the tokenizer's outputs (``input_ids``, ``attention_mask``,
        and ``token_type_ids`` for BERT) and ``labels``.
    """
    from datasets import Value

    spec = get_task(task)
    if max_seq_length < 2:
        raise ValueError(f"max_seq_length must be >= 2, got {max_seq_length}")
    missing = [k for k in (*spec.keys, "label") if k not in dataset.column_names]
    if missing:
        raise ValueError(
            f"dataset has no column(s) {missing} expected for GLUE task '{spec.name}'; "
            f"columns: {dataset.column_names}"
        )

    def encode(batch: dict[str, list[Any]]) -> Any:
        texts = [batch[k] for k in spec.keys]
        return tokenizer(*texts, truncation=True, max_length=max_seq_length, padding=False)

    drop = [c for c in dataset.column_names if c != "label"]
    out = dataset.map(
        encode,
        batched=True,
        remove_columns=drop,
        num_proc=num_proc,
        desc=f"Tokenizing {spec.name}",
    )
    out = out.rename_column("label", "labels")
    if spec.is_regression:
        out = out.cast_column("labels", Value("float32"))
    return out
