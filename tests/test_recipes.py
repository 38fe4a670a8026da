"""End-to-end runs of every registered method on the `tiny` model with a few dozen real RTE / STS-B examples."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from nxmlab.nxm import is_nxm
from nxmlab.study.train.config import NxMTrainingArguments, RunConfig, RunSpec
from nxmlab.study.train.recipe import run_experiment
from nxmlab.study.train.timing import ELAPSED_FILE
from nxmlab.study.results.store import RunFolder, config_hash, load_masks, read_json, read_jsonl
from nxmlab.targets import select_targets

pytestmark = pytest.mark.slow

SPARSE = [("magnitude", False), ("magnitude", True), ("unstructured", False), ("admm", False), ("admm", True),
          ("sr-ste", False), ("sr-ste", True), ("wanda", False), ("sparsegpt", False)]


def run_dir_for(cfg, args) -> RunFolder:
    return RunSpec.parse(cfg, args).folder()


def make(results: Path, glue_dir: Path, task: str = "rte", **overrides):
    cfg = RunConfig(task=task, model="tiny", train_limit=32, eval_limit=16, results_dir=str(results),
                    glue_dir=str(glue_dir), log_interval=2, retrain_epochs=1.0)
    cfg = dataclasses.replace(cfg, **overrides)
    args = NxMTrainingArguments(num_train_epochs=2, per_device_train_batch_size=8, per_device_eval_batch_size=16,
                                learning_rate=1e-3, save_steps=2, logging_steps=2, disable_tqdm=True)
    return cfg, args


@pytest.fixture(scope="module")
def store(tmp_path_factory, glue_dir):
    """Every method ± KD on RTE, into one results folder (dense trained once, reused)."""
    results = tmp_path_factory.mktemp("results")
    runs = {}
    for method, kd in [("dense", False), *SPARSE]:
        cfg, args = make(results, glue_dir, method=method, kd=kd)
        runs[(method, kd)] = (run_experiment(cfg, args), run_dir_for(cfg, args))
    return results, runs


def test_predictions_follow_the_glue_idx(tmp_path, glue_dir):
    """The stored prediction of each GLUE idx is the saved model's own prediction for that
    example, evaluated one by one (transformers 5 also length-groups evaluation batches).
    STS-B: a float per example, so a wrong order cannot match by chance."""
    from transformers import AutoModelForSequenceClassification

    from nxmlab.study.data.glue import get_task, load_glue, tokenize_glue
    from nxmlab.study.data.models import load_tokenizer

    cfg, args = make(tmp_path, glue_dir, task="stsb", method="dense", train_limit=8)
    args.num_train_epochs, args.per_device_eval_batch_size = 1, 4
    run_experiment(cfg, args)
    run = run_dir_for(cfg, args)
    raw = load_glue("stsb", "validation", str(glue_dir), limit=16)
    data = tokenize_glue(raw, get_task("stsb"), load_tokenizer("tiny"), 128)
    model = AutoModelForSequenceClassification.from_pretrained(run.model_dir).eval()
    with torch.no_grad():
        own = [float(model(**{k: torch.tensor([ex[k]]) for k in ("input_ids", "attention_mask", "token_type_ids")}
                           ).logits[0, 0]) for ex in data]
    stored = run.read_frame(RunFolder.PREDICTIONS).set_index("idx")["prediction"].reindex(list(raw["idx"]))
    own, stored = np.asarray(own), stored.to_numpy(dtype=np.float64)
    assert np.abs(stored - own).max() < 1e-7
    gaps = np.abs(own[:, None] - own[None, :])[~np.eye(16, dtype=bool)]
    assert gaps.min() > 10 * np.abs(stored - own).max()  # distinct enough that a shuffled order fails


def _model_weights(run: RunFolder) -> dict[str, torch.Tensor]:
    return load_file(run.model_dir / "model.safetensors")


@pytest.mark.parametrize("method, kd", [("dense", False), *SPARSE])
def test_every_method_leaves_a_complete_record(store, method, kd):
    _, runs = store
    metrics, run = runs[(method, kd)]
    assert metrics["status"] == "finished" and metrics["kd"] == kd
    committed = [RunFolder.CONFIG, RunFolder.METRICS, RunFolder.STATE, RunFolder.LOG, RunFolder.PREDICTIONS]
    for name in committed:
        assert run.file(name).exists(), name
    assert (run.model_dir / "model.safetensors").exists()
    assert not (run.cache / "checkpoints").exists() and not (run.cache / "phases").exists()
    assert not (run.path / "model").exists()  # weights never go into the committed folder
    assert run.name.endswith(config_hash(read_json(run.file(RunFolder.CONFIG))))
    assert 0.0 <= metrics["score"] <= 1.0
    predictions = run.read_frame(RunFolder.PREDICTIONS)
    assert list(predictions.columns) == ["split", "idx", "prediction"] and len(predictions) == 16
    if method == "dense":
        assert set(metrics["eval"]) == {"final"}
        return
    assert set(metrics["eval"]) == {"before_prune", "after_prune", "final"}
    # every sparse run names the dense run: as its start / teacher, or (admm, sr-ste) as the ASP reference
    assert metrics["dense_run"].startswith("rte/dense")
    masks = load_masks(run.masks_file)
    assert {"final", "pretrained_magnitude"} <= set(masks)
    assert set(run.mask_sample()) == set(masks)
    distances = run.read_frame(RunFolder.MASK_DISTANCES)
    assert set(distances["reference"]) == set(masks) - {"final"}
    assert set(metrics["mask_distance"]) == set(masks) - {"final"}
    phases = {"admm": ["admm", "retrain"], "sr-ste": ["srste", "retrain"]}.get(method, ["finetune"])
    assert list(metrics["phases"]) == phases
    for phase in metrics["phases"].values():
        assert phase["seconds"] > 0 and phase["seconds_per_epoch"] > 0
    if method == "admm":
        dynamics = run.read_frame(RunFolder.DYNAMICS)
        assert set(dynamics["event"]) == {"init", "update", "log"}
        assert {"primal", "rel_dist", "near_zero", "penalty", "component", "layer", "dual", "flips"} <= set(dynamics)
        updates = dynamics[dynamics["event"] == "update"]
        assert sorted(set(updates["step"])) == [4, 8]  # once per epoch: 32 examples / batch 8
        assert run.admm_state.exists()
        diagnostics = metrics["diagnostics"]
        assert 0 < diagnostics["rel_dist_at_prune"] < 1 and diagnostics["updates"] == 2
        assert 0 <= diagnostics["flips_last_update"] <= 1
        magnitudes = run.read_frame(RunFolder.MAGNITUDES)
        assert set(magnitudes["position"]) == {"kept", "pruned"} and magnitudes["stage"].nunique() == 4


@pytest.mark.parametrize("method, kd", [m for m in SPARSE if m[0] != "unstructured"])
def test_targets_are_exactly_nxm_with_exact_sparsity(store, method, kd):
    _, runs = store
    metrics, run_dir = runs[(method, kd)]
    weights = _model_weights(run_dir)
    final = load_masks(run_dir.masks_file, "final")["final"]
    assert len(final) == 12  # 2 layers x 6 components
    for name, mask in final.items():
        w = weights[f"{name}.weight"]
        assert is_nxm(w, "4:2"), name
        assert not w[~mask].any()
        assert float(mask.float().mean()) == 0.5
        assert metrics["sparsity"]["targets"][name] == 0.5
    assert metrics["is_nxm"] is True


def test_unstructured_keeps_the_same_density_without_the_pattern(store):
    _, runs = store
    metrics, run_dir = runs[("unstructured", False)]
    weights = _model_weights(run_dir)
    final = load_masks(run_dir.masks_file, "final")["final"]
    assert all(float(m.float().mean()) == 0.5 for m in final.values())
    assert not all(is_nxm(weights[f"{n}.weight"], "4:2") for n in final)
    assert metrics["sparsity"]["mean"] == pytest.approx(0.5)


@pytest.mark.parametrize("method, kd", SPARSE)
def test_non_target_weights_are_never_masked(store, method, kd):
    _, runs = store
    _, run_dir = runs[(method, kd)]
    weights = _model_weights(run_dir)
    targets = {f"{n}.weight" for n in load_masks(run_dir.masks_file, "final")["final"]}
    others = [k for k, v in weights.items() if k not in targets and v.dim() == 2]
    assert "classifier.weight" in others and "bert.pooler.dense.weight" in others
    for key in others:
        zero = float((weights[key] == 0).float().mean())
        assert zero < 0.02, (key, zero)  # only BERT's padding embedding row is zero


def test_kd_changes_training(store):
    _, runs = store
    plain, kd = _model_weights(runs[("admm", False)][1]), _model_weights(runs[("admm", True)][1])
    assert not torch.equal(plain["classifier.weight"], kd["classifier.weight"])


def test_regression_task_stsb(tmp_path, glue_dir):
    cfg, args = make(tmp_path, glue_dir, task="stsb", method="admm", kd=True)
    metrics = run_experiment(cfg, args)
    final = metrics["eval"]["final"]["validation"]
    assert {"pearson", "spearmanr", "score"} <= set(final)
    assert final["score"] == pytest.approx((final["pearson"] + final["spearmanr"]) / 2)
    assert metrics["is_nxm"] is True


def test_finished_config_is_skipped_unless_overwrite(store, glue_dir):
    results, runs = store
    _, run_dir = runs[("magnitude", False)]
    metrics_file = run_dir.file(RunFolder.METRICS)
    stamp = os.stat(metrics_file).st_mtime_ns
    cfg, args = make(results, glue_dir, method="magnitude")
    assert run_experiment(cfg, args) == read_json(metrics_file)
    assert os.stat(metrics_file).st_mtime_ns == stamp
    assert len(list((results / "rte").glob("dense-*"))) == 1  # the teacher was reused, not retrained
    again = run_experiment(dataclasses.replace(cfg, overwrite=True), args)
    assert os.stat(metrics_file).st_mtime_ns != stamp
    assert again["eval"] == runs[("magnitude", False)][0]["eval"]  # deterministic on CPU


class Interrupted(Exception):
    pass


class Interrupt(TrainerCallback):
    """Raise once, when `phase` has completed optimizer step `step` (and any checkpoint it saves)."""

    def __init__(self, phase: str, step: int) -> None:
        self.phase, self.step, self.fired = phase, step, False

    def on_step_begin(self, args, state, control, **kwargs):
        if not self.fired and Path(args.output_dir).name == self.phase and state.global_step == self.step:
            self.fired = True
            raise Interrupted(f"{self.phase} after step {self.step}")


@pytest.fixture(scope="module")
def admm_reference(tmp_path_factory, glue_dir):
    results = tmp_path_factory.mktemp("reference")
    cfg, args = make(results, glue_dir, method="admm")
    metrics = run_experiment(cfg, args)
    return metrics, run_dir_for(cfg, args)


@pytest.mark.parametrize("phase, step", [("admm", 3), ("admm", 4), ("retrain", 2)],
                         ids=["during-admm", "at-zu-update", "during-retrain"])
def test_resume_after_interrupt_matches_uninterrupted(tmp_path, glue_dir, admm_reference, phase, step):
    cfg, args = make(tmp_path, glue_dir, method="admm")
    with pytest.raises(Interrupted):
        run_experiment(cfg, args, callbacks=[Interrupt(phase, step)])
    run_dir = run_dir_for(cfg, args)
    assert not run_dir.file(RunFolder.METRICS).exists()  # a killed run never looks finished
    start = 2 if step == 3 else step
    before = json.loads((run_dir.checkpoint_dir(phase) / f"checkpoint-{start}" / ELAPSED_FILE).read_text())["seconds"]
    assert before > 0
    metrics = run_experiment(cfg, args)
    reference, ref_dir = admm_reference
    record = metrics["phases"][phase]
    assert record["resumed_from_step"] == start
    # the phase's time is the segment before the checkpoint plus the resumed one
    segment = record["seconds_per_step"] * (record["steps"] - start)
    assert record["seconds"] == pytest.approx(before + segment)
    assert metrics["eval"] == reference["eval"]
    ours, theirs = _model_weights(run_dir), _model_weights(ref_dir)
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    state, ref_state = (torch.load(d.admm_state, weights_only=True) for d in (run_dir, ref_dir))
    for part in ("Z", "U", "masks"):
        for name in ref_state[part]:
            assert torch.equal(state[part][name], ref_state[part][name]), (part, name)
    assert state["rho"] == ref_state["rho"] and state["num_updates"] == ref_state["num_updates"]
    assert read_jsonl(run_dir.raw_dynamics) == read_jsonl(ref_dir.raw_dynamics)
    assert run_dir.read_frame(RunFolder.DYNAMICS).equals(ref_dir.read_frame(RunFolder.DYNAMICS))
    assert run_dir.read_frame(RunFolder.PREDICTIONS).equals(ref_dir.read_frame(RunFolder.PREDICTIONS))


def test_bad_config_fails_before_writing(tmp_path, glue_dir):
    for overrides in ({"method": "prune"}, {"pattern": "4:4"}, {"rho": 0.0}, {"kd": True, "method": "dense"},
                      {"components": "query,attn"}, {"task": "glue"}):
        cfg, args = make(tmp_path / "r", glue_dir, **overrides)
        with pytest.raises(ValueError):
            run_experiment(cfg, args)
    assert not (tmp_path / "r").exists()


def test_kd_needs_matching_teacher_labels(tmp_path, glue_dir):
    from nxmlab.study.data.models import load_model_and_tokenizer
    from nxmlab.study.train.recipe import _Run

    cfg, args = make(tmp_path, glue_dir, method="admm", kd=True)
    run = _Run(RunSpec.parse(cfg, args), [])
    student, _ = load_model_and_tokenizer("tiny", 2)
    run.pretrained = student
    teacher, _ = load_model_and_tokenizer("tiny", 3)
    with pytest.raises(ValueError, match="teacher has 3 labels but the student has 2"):
        run.check_teacher(teacher)
    with pytest.raises(ValueError, match="needs a dense teacher"):
        run.check_teacher(None)
    assert select_targets(student)  # sanity: the tiny model has targets


def test_one_shot_baselines_choose_other_masks_than_magnitude(store):
    """Wanda and SparseGPT look at activations: their masks are not ASP's (dense magnitude)."""
    _, runs = store
    for method in ("wanda", "sparsegpt"):
        metrics, _ = runs[(method, False)]
        assert metrics["mask_distance"]["dense_magnitude"] > 0.01, method
    magnitude, _ = runs[("magnitude", False)]
    assert magnitude["mask_distance"]["dense_magnitude"] == 0.0
