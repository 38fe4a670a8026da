"""The paired bootstrap of the powered study (issue #14): exact weighted metrics, verdicts,
and intervals on real GLUE labels with synthetic predictions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nxmlab.study.data.metrics import glue_metrics
from nxmlab.study.results.stats import COMPARISONS, Comparison, gold_labels, paired_bootstrap, verdict, weighted_scores


def _preds(task, rng, n):
    if task == "stsb":
        return np.round(rng.uniform(0, 5, n), 1)  # rounded: ties, as Spearman's mid-ranks need
    return rng.integers(0, 2, n)


def _gold(task, rng, n):
    return np.round(rng.uniform(0, 5, n), 1) if task == "stsb" else rng.integers(0, 2, n)


@pytest.mark.parametrize("task", ["cola", "mrpc", "rte", "stsb"])
def test_unit_and_count_weights_equal_the_metric_on_the_resample(task):
    rng = np.random.default_rng(3)
    n = 60
    p, y = _preds(task, rng, n), _gold(task, rng, n)
    assert weighted_scores(task, p, y, np.ones((1, n)))[0] == pytest.approx(glue_metrics(task, p, y)["score"], abs=1e-12)
    counts = rng.multinomial(n, np.full(n, 1 / n), size=5)
    got = weighted_scores(task, p, y, counts)
    for row, w in zip(got, counts, strict=True):
        idx = np.repeat(np.arange(n), w)
        assert row == pytest.approx(glue_metrics(task, p[idx], y[idx])["score"], abs=1e-10)


def test_undefined_metrics_are_zero_like_glue_metrics():
    y = np.array([0, 1, 0, 1])
    assert weighted_scores("cola", np.zeros(4, int), y, np.ones((1, 4)))[0] == glue_metrics("cola", np.zeros(4, int), y)["score"]
    assert weighted_scores("stsb", np.ones(4), y * 1.0, np.ones((1, 4)))[0] == 0.0


def test_verdict_reads_the_interval():
    assert verdict(0.1, 2.0) == "supported"
    assert verdict(-2.0, -0.1) == "contradicted"
    assert verdict(-1.0, 1.0) == "unresolved"
    assert verdict(float("nan"), 1.0) == "unresolved"


def _store(tmp_path, glue_dir, task, runs):
    """Run folders with predictions.parquet; ``runs``: {(label, seed): predictions aligned with gold}."""
    gold = gold_labels(task, str(glue_dir))
    rows = []
    for (label, seed), pred in runs.items():
        rel = f"{task}/{label}-seed{seed}"
        (tmp_path / rel).mkdir(parents=True)
        pd.DataFrame({"split": "validation", "idx": gold.index[::-1], "prediction": pred[::-1]}).to_parquet(
            tmp_path / rel / "predictions.parquet")
        rows.append({"run": rel, "task": task, "label": label, "seed": seed,
                     "score": glue_metrics(task, pred, gold.to_numpy())["score"]})
    return gold, pd.DataFrame(rows)


def test_paired_bootstrap_on_real_labels(tmp_path, glue_dir):
    gold = gold_labels("rte", str(glue_dir)).to_numpy()
    rng = np.random.default_rng(0)
    good = [np.where(rng.random(len(gold)) < 0.8, gold, 1 - gold) for _ in range(3)]  # ~80 % right
    bad = [np.where(rng.random(len(gold)) < 0.5, gold, 1 - gold) for _ in range(3)]   # chance
    runs = {("admm", s): good[i] for i, s in enumerate((42, 43, 44))}
    runs |= {("magnitude", s): bad[i] for i, s in enumerate((42, 43, 44))}
    runs |= {("sr-ste", 42): good[0]}
    _, scores = _store(tmp_path, glue_dir, "rte", runs)
    comps = [COMPARISONS[0], Comparison("magnitude - admm", "magnitude", "admm"), Comparison("same", "admm", "admm"),
             Comparison("sr-ste - admm", "sr-ste", "admm")]
    out = paired_bootstrap(scores, tmp_path, str(glue_dir), comps, n_boot=400, seed=1)
    rows = out.set_index(["comparison", "task"])
    first = rows.loc[("admm - magnitude", "rte")]
    per_seed = [100 * (scores.loc[(scores.label == "admm") & (scores.seed == s), "score"].item()
                       - scores.loc[(scores.label == "magnitude") & (scores.seed == s), "score"].item())
                for s in (42, 43, 44)]
    assert first["diff"] == pytest.approx(np.mean(per_seed)) and first["n_seeds"] == 3
    assert first["seeds"] == "42,43,44" and first["seed_min"] < first["seed_max"]  # the seeds differ
    assert (first["seed_min"], first["seed_max"]) == pytest.approx((min(per_seed), max(per_seed)))
    assert first["ci_low"] < first["diff"] < first["ci_high"] and first["verdict"] == "supported"
    assert rows.loc[("magnitude - admm", "rte"), "verdict"] == "contradicted"
    same = rows.loc[("same", "rte")]
    assert same["diff"] == same["ci_low"] == same["ci_high"] == 0 and same["verdict"] == "unresolved"
    assert rows.loc[("sr-ste - admm", "rte"), "n_seeds"] == 1  # only the shared seed is paired
    avg = rows.loc[("admm - magnitude", "average")]
    assert avg["diff"] == pytest.approx(first["diff"]) and avg["tasks"] == "rte" and avg["seeds"] == "42,43,44"
    assert (avg["seed_min"], avg["seed_max"]) == pytest.approx((first["seed_min"], first["seed_max"]))
    again = paired_bootstrap(scores, tmp_path, str(glue_dir), comps, n_boot=400, seed=1)
    pd.testing.assert_frame_equal(out, again)  # a fixed seed: identical intervals
    # each cell has its own stream: other comparisons before it leave its interval as it was
    reordered = paired_bootstrap(scores, tmp_path, str(glue_dir), comps[::-1], n_boot=400, seed=1)
    pd.testing.assert_frame_equal(reordered.set_index(["comparison", "task"]).loc[rows.index], rows)
    other = paired_bootstrap(scores, tmp_path, str(glue_dir), comps[:1], n_boot=400, seed=2)
    assert other["ci_low"].iloc[0] != first["ci_low"]  # ... and another seed draws other replicates
    # the interval width follows the pooling: 3 seeds give a narrower interval than 1
    one = paired_bootstrap(scores[scores.seed == 42], tmp_path, str(glue_dir), comps[:1], n_boot=400, seed=1)
    assert (one.ci_high - one.ci_low).iloc[0] > first["ci_high"] - first["ci_low"]


def test_paired_bootstrap_refuses_two_runs_of_one_cell(tmp_path, glue_dir):
    gold = gold_labels("rte", str(glue_dir)).to_numpy()
    _, scores = _store(tmp_path, glue_dir, "rte", {("admm", 42): gold, ("magnitude", 42): 1 - gold})
    twice = pd.concat([scores, scores.iloc[:1]])
    with pytest.raises(ValueError, match="several runs of one label and seed"):
        paired_bootstrap(twice, tmp_path, str(glue_dir), COMPARISONS[:1], n_boot=10)
    assert paired_bootstrap(scores.iloc[:0], tmp_path).empty


def test_committed_scores_recompute_from_their_predictions(glue_dir):
    """Every committed run's score equals its GLUE score recomputed from predictions.parquet
    (`nxmlab verify results --rescore`)."""
    from nxmlab.study.results.verify import verify_results
    from tests.conftest import REPO_ROOT

    checks = verify_results(REPO_ROOT / "results", cache=False, rescore=True, glue_dir=str(glue_dir))
    assert sum(c.finished for c in checks) >= 140
    assert not [(c.run, p) for c in checks for p in c.problems if "rescore" in p or "predictions" in p]


def test_rescore_catches_a_score_its_predictions_do_not_give(tmp_path, glue_dir):
    import json
    import shutil

    from nxmlab.study.results.verify import verify_results
    from tests.conftest import REPO_ROOT

    run = next(p.parent for p in sorted((REPO_ROOT / "results" / "rte").glob("dense-*/metrics.json")))
    copy = tmp_path / "results" / "rte" / run.name
    shutil.copytree(run, copy)
    assert verify_results(tmp_path / "results", cache=False, rescore=True, glue_dir=str(glue_dir))[0].ok
    metrics = json.loads((copy / "metrics.json").read_text())
    metrics["score"] += 0.01  # one more example right than the predictions say
    (copy / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    check = verify_results(tmp_path / "results", cache=False, rescore=True, glue_dir=str(glue_dir))[0]
    assert [p for p in check.problems if p.startswith("predictions.parquet: rescored")], check.problems
    assert verify_results(tmp_path / "results", cache=False)[0].ok  # without --rescore: not checked


def test_the_average_has_a_per_seed_range_only_when_its_tasks_share_their_seeds(tmp_path, glue_dir):
    rng = np.random.default_rng(3)
    stores = {}
    for task, seeds in (("rte", (42, 43)), ("mrpc", (42, 43, 44))):
        gold = gold_labels(task, str(glue_dir)).to_numpy()
        runs = {(label, s): np.where(rng.random(len(gold)) < p, gold, 1 - gold)
                for s in seeds for label, p in (("admm", 0.8), ("magnitude", 0.6))}
        stores[task] = _store(tmp_path, glue_dir, task, runs)[1]
    scores = pd.concat(stores.values(), ignore_index=True)
    rows = paired_bootstrap(scores, tmp_path, str(glue_dir), COMPARISONS[:1], n_boot=50).set_index("task")
    assert rows.at["average", "seeds"] == "" and np.isnan(rows.at["average", "seed_min"])  # 2 vs 3 seeds
    assert rows.at["mrpc", "seed_min"] <= rows.at["mrpc", "diff"] <= rows.at["mrpc", "seed_max"]
    same = paired_bootstrap(scores[scores.seed < 44], tmp_path, str(glue_dir), COMPARISONS[:1], n_boot=50)
    avg = same.set_index("task").loc["average"]
    assert avg["seeds"] == "42,43" and avg["seed_min"] <= avg["diff"] <= avg["seed_max"]


def test_the_verdict_follows_an_interval_that_covers_the_training_seed(tmp_path, glue_dir):
    """Seeds that disagree in sign: the examples-only interval is narrow and resolved, the
    two-level interval (seeds, then examples) contains 0 and the verdict says unresolved."""
    rng = np.random.default_rng(5)
    gold = gold_labels("stsb", str(glue_dir)).to_numpy()
    runs = {}
    for seed, (pa, pb) in zip((42, 43, 44), ((0.95, 0.6), (0.9, 0.6), (0.6, 0.9)), strict=True):
        for label, q in (("admm", pa), ("magnitude", pb)):  # q: share of the signal in the prediction
            runs[(label, seed)] = np.round(q * gold + (1 - q) * rng.uniform(0, 5, len(gold)), 2)
    _, scores = _store(tmp_path, glue_dir, "stsb", runs)
    row = paired_bootstrap(scores, tmp_path, str(glue_dir), COMPARISONS[:1], n_boot=400).iloc[0]
    assert row["seed_min"] < 0 < row["seed_max"] and row["interval"] == "seeds+examples"
    assert row["ex_verdict"] == "supported"  # 1,500 examples: the examples alone look decisive
    assert row["ci_low"] < 0 < row["ci_high"] and row["verdict"] == "unresolved"
    assert row["ci_high"] - row["ci_low"] > row["ex_ci_high"] - row["ex_ci_low"]
    one = paired_bootstrap(scores[scores.seed == 42], tmp_path, str(glue_dir), COMPARISONS[:1], n_boot=400).iloc[0]
    assert one["interval"] == "examples" and (one["ci_low"], one["ci_high"]) == (one["ex_ci_low"], one["ex_ci_high"])
