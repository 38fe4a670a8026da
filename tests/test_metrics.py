"""Tests for nxmlab.study.data.metrics against values worked out by hand."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from nxmlab.study.data.glue import GLUE_TASKS
from nxmlab.study.data.metrics import compute_metrics_fn, glue_metrics, glue_score

# 7 binary examples: TP = 3 (rows 0, 2, 6), FP = 1 (row 1), FN = 1 (row 3), TN = 2 (rows 4, 5).
PRED_IDS = np.array([1, 1, 1, 0, 0, 0, 1])
GOLD = np.array([1, 0, 1, 1, 0, 0, 1])
TP, FP, FN, TN = 3, 1, 1, 2
ACC = (TP + TN) / 7  # 5/7
F1 = 2 * TP / (2 * TP + FP + FN)  # 6/8 = 0.75
MCC = (TP * TN - FP * FN) / math.sqrt((TP + FP) * (TP + FN) * (TN + FP) * (TN + FN))  # 5/12


def logits_for(ids: np.ndarray, num_labels: int = 2) -> np.ndarray:
    """Logits whose argmax is ``ids`` (with unequal, non-trivial values)."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(len(ids), num_labels)).astype(np.float32)
    z[np.arange(len(ids)), ids] = z.max(axis=1) + 1.5
    return z


def test_hand_values_are_what_we_think():
    assert ACC == pytest.approx(5 / 7) and F1 == 0.75 and MCC == pytest.approx(5 / 12)


def test_mrpc_f1_accuracy_score():
    m = glue_metrics("mrpc", logits_for(PRED_IDS), GOLD)
    assert set(m) == {"accuracy", "f1", "score"}
    assert m["accuracy"] == pytest.approx(ACC)
    assert m["f1"] == pytest.approx(F1)
    assert m["score"] == pytest.approx((F1 + ACC) / 2)
    assert glue_metrics("qqp", logits_for(PRED_IDS), GOLD) == pytest.approx(m)


def test_cola_mcc():
    m = glue_metrics("cola", logits_for(PRED_IDS), GOLD)
    assert m["mcc"] == pytest.approx(5 / 12)
    assert m["score"] == pytest.approx(5 / 12)
    assert m["accuracy"] == pytest.approx(ACC)
    # Perfectly wrong predictions: MCC = -1.
    assert glue_metrics("cola", 1 - GOLD, GOLD)["mcc"] == pytest.approx(-1.0)
    # Constant predictions leave a confusion-matrix column empty: MCC defined as 0.
    assert glue_metrics("cola", np.ones(7, dtype=int), GOLD)["mcc"] == 0.0


def test_accuracy_tasks_and_class_id_predictions():
    ids = np.array([0, 2, 1, 2, 0, 1])
    gold = np.array([0, 2, 2, 2, 1, 1])  # 4 / 6 right
    m = glue_metrics("mnli", logits_for(ids, 3), gold)
    assert m == pytest.approx({"accuracy": 4 / 6, "score": 4 / 6})
    for task in ("sst2", "qnli", "rte", "wnli"):
        assert glue_metrics(task, PRED_IDS, GOLD) == pytest.approx({"accuracy": ACC, "score": ACC})


def test_mrpc_no_positive_predictions_gives_f1_zero():
    m = glue_metrics("mrpc", np.zeros(7, dtype=int), GOLD)
    assert m["f1"] == 0.0 and m["accuracy"] == pytest.approx(3 / 7)


def test_stsb_pearson_spearman_by_hand():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    y = np.array([1.0, 3.0, 2.0, 5.0])
    dx, dy = x - x.mean(), y - y.mean()
    pearson = (dx * dy).sum() / np.sqrt((dx**2).sum() * (dy**2).sum())  # 5.5 / sqrt(43.75)
    assert pearson == pytest.approx(5.5 / math.sqrt(43.75))
    # ranks x = 1,2,3,4 and y = 1,3,2,4: d = 0,-1,1,0; rho = 1 - 6*2 / (4*15) = 0.8
    spearman = 1 - 6 * 2 / (4 * (4**2 - 1))
    for preds in (x, x[:, None], x.astype(np.float32)[:, None]):
        m = glue_metrics("stsb", preds, y)
        assert set(m) == {"pearson", "spearmanr", "score"}
        assert m["pearson"] == pytest.approx(pearson, rel=1e-6)
        assert m["spearmanr"] == pytest.approx(spearman, rel=1e-6)
        assert m["score"] == pytest.approx((pearson + spearman) / 2, rel=1e-6)


def test_stsb_undefined_correlation_is_nan_with_a_reason_not_zero():
    from nxmlab.study.data.metrics import missing_reasons

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        preds, gold = np.full((5, 1), 2.5), np.array([0.0, 1.0, 2.0, 3.0, 4.0])
        m = glue_metrics("stsb", preds, gold)
        assert all(math.isnan(m[k]) for k in ("pearson", "spearmanr", "score"))
        assert missing_reasons("stsb", m, preds, gold)["score"] == (
            "undefined: the model predicts the same value for every example")
        one = glue_metrics("stsb", np.array([3.0]), np.array([4.0]))
        assert math.isnan(one["score"])
        assert "at least 2 examples, got 1" in missing_reasons("stsb", one, np.array([3.0]), np.array([4.0]))["pearson"]


def test_stsb_nan_predictions_stay_nan():
    m = glue_metrics("stsb", np.array([1.0, np.nan, 3.0]), np.array([1.0, 2.0, 3.0]))
    assert math.isnan(m["pearson"])


@pytest.mark.parametrize(
    ("task", "preds", "labels", "match"),
    [
        ("rte", np.zeros((0, 2)), np.zeros(0), "empty"),
        ("stsb", np.zeros(0), np.zeros(0), "empty"),
        ("rte", np.zeros((3, 2)), np.zeros(4), "3 predictions but 4 labels"),
        ("rte", np.zeros((3, 3)), np.zeros(3), r"shape \[N, 2\]"),
        ("mnli", np.array([0.2, 0.7, 1.0]), np.zeros(3), "logits"),
        ("stsb", np.zeros((3, 2)), np.zeros(3), r"\[N, 1\]"),
        ("rte", np.zeros((2, 2)), np.array([-1, -1]), "unlabelled"),
    ],
)
def test_bad_inputs(task, preds, labels, match):
    with pytest.raises(ValueError, match=match):
        glue_metrics(task, preds, labels)


def test_compute_metrics_fn_with_eval_prediction():
    from transformers import EvalPrediction

    fn = compute_metrics_fn("mrpc")
    logits = logits_for(PRED_IDS)
    m = fn(EvalPrediction(predictions=logits, label_ids=GOLD))
    assert m == pytest.approx({"accuracy": ACC, "f1": F1, "score": (F1 + ACC) / 2})
    # Models that also return hidden states give a tuple; the logits come first.
    assert fn(EvalPrediction(predictions=(logits, np.zeros((7, 4, 8))), label_ids=GOLD)) == pytest.approx(m)


def test_glue_score_variants():
    assert glue_score("cola", {"mcc": 0.5, "accuracy": 0.9}) == 0.5
    assert glue_score("stsb", {"eval_pearson": 0.8, "eval_spearmanr": 0.6, "eval_loss": 1.0}) == pytest.approx(0.7)
    assert glue_score("mrpc", {"eval_f1": 0.9, "eval_accuracy": 0.8}) == pytest.approx(0.85)
    assert glue_score("rte", {"eval_score": 0.61}) == 0.61
    with pytest.raises(KeyError, match="f1"):
        glue_score("qqp", {"accuracy": 0.9})
    for name in GLUE_TASKS:
        if name == "stsb":
            m = glue_metrics(name, np.array([0.5, 2.0, 1.0, 4.0]), np.array([1.0, 2.5, 3.0, 4.0]))
        else:
            n = GLUE_TASKS[name].num_labels
            m = glue_metrics(name, logits_for(PRED_IDS % n, n), GOLD % n)
        assert glue_score(name, m) == pytest.approx(m["score"])
        assert glue_score(name, {f"eval_{k}": v for k, v in m.items()}) == pytest.approx(m["score"])
