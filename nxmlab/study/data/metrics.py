"""GLUE metrics from raw model outputs (scikit-learn / SciPy; no ``evaluate``).

All values are fractions: accuracy and F1 in [0, 1], correlations in [-1, 1]. Scaling to
x100 for tables is done elsewhere. Every result includes ``score``, the per-task number
that the GLUE benchmark averages:

=========== ===========================================
task        score
=========== ===========================================
cola        Matthews correlation (``mcc``)
stsb        mean of ``pearson`` and ``spearmanr``
mrpc, qqp   mean of ``f1`` (positive class 1) and ``accuracy``
others      ``accuracy``
=========== ===========================================
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .glue import GlueTask, get_task

__all__ = ["compute_metrics_fn", "glue_metrics", "glue_score", "missing_reasons", "undefined_correlation"]


def _as_class_ids(predictions: np.ndarray, num_labels: int) -> np.ndarray:
    """Logits ``[N, C]`` -> argmax ids; 1-D integer-valued arrays are taken as ids."""
    if predictions.ndim == 2:
        if predictions.shape[1] != num_labels:
            raise ValueError(
                f"expected logits of shape [N, {num_labels}], got {list(predictions.shape)}"
            )
        return predictions.argmax(axis=-1)
    if predictions.ndim == 1 and np.all(np.equal(np.mod(predictions, 1), 0)):
        return predictions.astype(np.int64)
    raise ValueError(
        "classification predictions must be logits of shape [N, C] or integer class ids "
        f"of shape [N], got shape {list(predictions.shape)} dtype {predictions.dtype}"
    )


def undefined_correlation(x: np.ndarray, y: np.ndarray) -> str | None:
    """Why the correlation of predictions ``x`` and labels ``y`` is undefined, or ``None``."""
    if len(x) < 2:
        return f"undefined: a correlation needs at least 2 examples, got {len(x)}"
    if not np.all(np.isfinite(x)):
        return "undefined: the predictions hold NaN or Inf"
    if np.ptp(x) == 0:
        return "undefined: the model predicts the same value for every example"
    if np.ptp(y) == 0:
        return "undefined: every label is the same"
    return None


def _correlation(kind: str, x: np.ndarray, y: np.ndarray) -> float:
    """Pearson/Spearman correlation; NaN when it is undefined (:func:`undefined_correlation`).

    A constant input (e.g. a collapsed regression head) or fewer than 2 examples has no
    correlation: NaN, never a made-up 0.0.  The store records it as missing with its
    reason, and it never enters an average.
    """
    from scipy.stats import pearsonr, spearmanr

    if undefined_correlation(x, y) is not None:
        return float("nan")
    fn = pearsonr if kind == "pearson" else spearmanr
    return float(fn(x, y)[0])


def missing_reasons(task: str | GlueTask, metrics: Mapping[str, Any], predictions: np.ndarray | Any = None,
                    labels: np.ndarray | Any = None) -> dict[str, str]:
    """``{metric: reason}`` for every metric in ``metrics`` that is not a finite number.

    With the predictions and labels, an undefined STS-B correlation gets its cause
    (:func:`undefined_correlation`); any other non-finite value is "not a number" or
    "infinite".
    """
    spec = get_task(task)
    cause = None
    if spec.is_regression and predictions is not None and labels is not None:
        x = np.asarray(predictions, dtype=np.float64).reshape(len(np.asarray(predictions)), -1)[:, 0]
        cause = undefined_correlation(x, np.asarray(labels, dtype=np.float64).reshape(-1))
    out = {}
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            continue
        if value is None:
            out[key] = "missing"
        elif key in ("pearson", "spearmanr", "score") and cause:
            out[key] = cause
        else:
            out[key] = "not a number (NaN)" if isinstance(value, float) and math.isnan(value) else f"infinite ({value})"
    return out


def glue_metrics(
    task: str | GlueTask,
    predictions: np.ndarray | Any,
    labels: np.ndarray | Any,
) -> dict[str, float]:
    """Compute the GLUE metrics of one task.

    Args:
        task: Task name or :class:`~nxmlab.study.data.glue.GlueTask`.
        predictions: Raw model outputs. Classification: logits ``[N, C]`` (argmax is
            taken) or integer class ids ``[N]``. STS-B: scores ``[N]`` or ``[N, 1]``.
        labels: Gold labels ``[N]`` (class ids, or float scores for STS-B).

    Returns:
        Classification: ``accuracy`` plus ``f1`` (MRPC, QQP; positive class 1) or
        ``mcc`` (CoLA). STS-B: ``pearson`` and ``spearmanr``. Always ``score`` (see the
        module docstring). An undefined correlation (constant input, fewer than 2
        examples) is NaN, and so is the score then (:func:`missing_reasons` says why).

    Raises:
        ValueError: Empty input, mismatched lengths, bad shapes, or negative labels
            (``-1`` marks the unlabelled GLUE test splits).
    """
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    spec = get_task(task)
    preds = np.asarray(predictions)
    gold = np.asarray(labels)
    if preds.size == 0 or gold.size == 0:
        raise ValueError(f"cannot compute GLUE metrics for '{spec.name}' on empty input")
    gold = gold.reshape(-1) if gold.ndim == 2 and gold.shape[1] == 1 else gold
    if gold.ndim != 1:
        raise ValueError(f"labels must have shape [N], got {list(gold.shape)}")
    if preds.shape[0] != gold.shape[0]:
        raise ValueError(
            f"got {preds.shape[0]} predictions but {gold.shape[0]} labels for '{spec.name}'"
        )
    if np.any(gold < 0):
        raise ValueError(
            f"labels for '{spec.name}' contain negative values; -1 marks unlabelled test "
            "examples, which cannot be scored"
        )

    out: dict[str, float] = {}
    if spec.is_regression:
        if preds.ndim == 2 and preds.shape[1] == 1:
            preds = preds[:, 0]
        if preds.ndim != 1:
            raise ValueError(
                f"regression predictions must have shape [N] or [N, 1], got {list(preds.shape)}"
            )
        x, y = preds.astype(np.float64), gold.astype(np.float64)
        out["pearson"] = _correlation("pearson", x, y)
        out["spearmanr"] = _correlation("spearmanr", x, y)
    else:
        ids = _as_class_ids(preds, spec.num_labels)
        gold = gold.astype(np.int64)
        out["accuracy"] = float(accuracy_score(gold, ids))
        if "f1" in spec.score_keys:
            out["f1"] = float(f1_score(gold, ids, pos_label=1, average="binary", zero_division=0.0))
        if "mcc" in spec.score_keys:
            # sklearn returns 0.0 when a row/column of the confusion matrix is empty.
            out["mcc"] = float(matthews_corrcoef(gold, ids))
    out["score"] = float(np.mean([out[k] for k in spec.score_keys]))
    return out


def compute_metrics_fn(task: str | GlueTask) -> Callable[[Any], dict[str, float]]:
    """Build a ``compute_metrics`` callable for ``transformers.Trainer``.

    Args:
        task: Task name or :class:`~nxmlab.study.data.glue.GlueTask`.

    Returns:
        A function mapping an ``EvalPrediction`` (``predictions`` may be a tuple, whose
        first element is used as the logits) to :func:`glue_metrics`'s dict. Trainer adds
        the ``eval_`` prefix itself.
    """
    spec = get_task(task)

    def compute_metrics(eval_pred: Any) -> dict[str, float]:
        preds = eval_pred.predictions
        if isinstance(preds, (tuple, list)):
            preds = preds[0]
        return glue_metrics(spec, preds, eval_pred.label_ids)

    return compute_metrics


def glue_score(task: str | GlueTask, metrics: Mapping[str, Any]) -> float:
    """Return the GLUE task score from a metrics dict.

    The score is recomputed from its components (``mcc``; ``pearson`` + ``spearmanr``;
    ``f1`` + ``accuracy``; ``accuracy``), each looked up as ``key`` or ``eval_key``; if a
    component is missing, a ``score`` / ``eval_score`` entry is used instead.  A
    component stored as missing (``None``) or non-finite gives NaN: no score.

    Args:
        task: Task name or :class:`~nxmlab.study.data.glue.GlueTask`.
        metrics: Output of :func:`glue_metrics` or ``Trainer.evaluate()``.

    Raises:
        KeyError: If neither the components nor a score are present.
    """
    spec = get_task(task)

    def lookup(key: str) -> float | None:
        for k in (key, f"eval_{key}"):
            if k in metrics:
                return float("nan") if metrics[k] is None else float(metrics[k])  # None: stored as missing
        return None

    parts = [lookup(k) for k in spec.score_keys]
    if all(p is not None for p in parts):
        return float(np.mean(parts))
    score = lookup("score")
    if score is not None:
        return score
    raise KeyError(
        f"metrics for '{spec.name}' need {list(spec.score_keys)} or 'score' "
        f"(optionally with an 'eval_' prefix); got keys {sorted(metrics)}"
    )
