"""Bad input costs a second (exit 2, one line, nothing written); faults never pass as results."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from nxmlab.study.cli import main
from nxmlab.callbacks import NonFiniteError
from nxmlab.study.train.recipe import run_experiment
from nxmlab.study.results.store import RunFolder, load_masks, read_json
from nxmlab.study.results.verify import verify_results

from .test_recipes import make, run_dir_for

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
TINY = ["--model", "tiny", "--train_limit", "32", "--eval_limit", "16", "--per_device_train_batch_size", "8",
        "--num_train_epochs", "1", "--retrain_epochs", "1", "--save_steps", "2", "--disable_tqdm", "true"]


def snapshot(root: Path) -> dict[str, int]:
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


def cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    return code, (err[-1] if err else "")


@pytest.fixture
def sandbox(tmp_path, glue_dir):
    """A results folder inside tmp_path, and a mirror copy of RTE we may damage."""
    mirror = tmp_path / "glue"
    (mirror / "rte").mkdir(parents=True)
    for split in ("train", "validation"):
        shutil.copy(glue_dir / "rte" / f"{split}.parquet", mirror / "rte" / f"{split}.parquet")
    return tmp_path, mirror


def _save_model(folder: Path, num_labels: int, vocab_size: int | None = None) -> Path:
    from transformers import BertConfig, BertForSequenceClassification

    from nxmlab.study.data.models import TINY_CONFIG, load_tokenizer

    tok = load_tokenizer("tiny")
    config = BertConfig(vocab_size=vocab_size or tok.vocab_size, num_labels=num_labels, **TINY_CONFIG)
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


BAD_INPUTS = {
    "unknown task": (["--task", "glue"], "unknown GLUE task 'glue'"),
    "unknown method": (["--method", "prune"], "unknown method 'prune'"),
    "unknown model folder": (["--model", "./no/such/model"], "does not exist"),
    "malformed pattern": (["--pattern", "4-2"], "malformed NxM pattern '4-2'"),
    "m >= n": (["--pattern", "4:4"], "need 1 <= m < n"),
    "n does not divide a layer": (["--pattern", "48:2"], r"bert.encoder.layer.0.attention.self.query: pattern 48:2"),
    "rho zero": (["--rho", "0"], "rho must be a finite number > 0"),
    "rho nan": (["--rho", "nan"], "rho must be a finite number, got nan"),
    "zero epochs": (["--num_train_epochs", "0"], "num_train_epochs must be > 0"),
    "negative retrain epochs": (["--retrain_epochs", "-1"], "retrain_epochs must be > 0"),
    "zero batch size": (["--per_device_train_batch_size", "0"], "per_device_train_batch_size must be > 0"),
    "kd without a teacher": (["--kd", "true", "--teacher", "/no/such/teacher"], "--kd needs a dense teacher"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, sandbox, capsys):
    tmp, mirror = sandbox
    extra, message = BAD_INPUTS[case]
    results = tmp / "results"
    before = snapshot(tmp)
    base = ["train", "--task", "rte", "--method", "admm", *TINY, "--results_dir", str(results), "--glue_dir", str(mirror)]
    args = base + extra  # later flags win
    code, err = cli(args, capsys)
    assert code == 2
    assert err.startswith("nxmlab: error: ")
    assert pytest.importorskip("re").search(message, err), err
    assert snapshot(tmp) == before


def test_missing_mirror_folder_and_split(sandbox, capsys):
    tmp, mirror = sandbox
    before = snapshot(tmp)
    code, err = cli(["train", *TINY, "--results_dir", str(tmp / "r"), "--glue_dir", str(tmp / "nowhere")], capsys)
    assert code == 2 and "nowhere" in err
    (mirror / "rte" / "validation.parquet").unlink()
    before = snapshot(tmp)
    code, err = cli(["train", *TINY, "--results_dir", str(tmp / "r"), "--glue_dir", str(mirror)], capsys)
    assert code == 2 and "validation.parquet" in err and "nyu-mll/glue" in err
    assert snapshot(tmp) == before


def test_corrupt_parquet(sandbox, capsys):
    tmp, mirror = sandbox
    data = (mirror / "rte" / "validation.parquet").read_bytes()
    (mirror / "rte" / "validation.parquet").write_bytes(data[: len(data) // 2])  # truncated
    before = snapshot(tmp)
    code, err = cli(["train", *TINY, "--results_dir", str(tmp / "r"), "--glue_dir", str(mirror)], capsys)
    assert code == 2 and "validation.parquet" in err
    assert snapshot(tmp) == before


def test_unwritable_output_folder(sandbox, capsys):
    tmp, mirror = sandbox
    (tmp / "a_file").write_text("not a folder")
    before = snapshot(tmp)
    code, err = cli(["train", *TINY, "--results_dir", str(tmp / "a_file" / "results"), "--glue_dir", str(mirror)], capsys)
    assert code == 2 and "cannot write to results folder" in err
    assert snapshot(tmp) == before


@pytest.mark.parametrize("labels, vocab, message", [(3, None, "teacher has 3 labels but the student has 2"),
                                                     (2, 500, "different tokenizers")])
def test_teacher_must_match_student(sandbox, capsys, labels, vocab, message):
    tmp, mirror = sandbox
    teacher = _save_model(tmp / "teacher", labels, vocab)
    before = snapshot(tmp)
    code, err = cli(["train", *TINY, "--kd", "true", "--teacher", str(teacher), "--results_dir", str(tmp / "r"),
                     "--glue_dir", str(mirror)], capsys)
    assert code == 2 and message in err
    assert snapshot(tmp) == before


def test_incompatible_store_version(sandbox, capsys):
    tmp, mirror = sandbox
    cfg, args = make(tmp / "r", mirror, method="dense")
    run_dir = run_dir_for(cfg, args).path
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"store_version": 1}))
    before = snapshot(tmp)
    with pytest.raises(ValueError, match="written by store version 1, and this nxmlab reads version 2"):
        run_experiment(cfg, args)
    assert snapshot(tmp) == before


def test_unknown_command_and_debug_traceback(capsys):
    assert main(["frobnicate"]) == 2
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err
    with pytest.raises(ValueError):
        main(["train", "--task", "glue", "--debug"])


def test_cli_exit_status_in_a_real_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "nxmlab.study", "train", "--task", "nope", "--results_dir", str(tmp_path / "r")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "nxmlab: error: unknown GLUE task 'nope'; choose one of: cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------- numerical faults
class PoisonWeight(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        if state.global_step + 1 == self.step:  # the optimizer step that becomes `step`
            with torch.no_grad():
                model.bert.encoder.layer[0].output.dense.weight[0, 0] = float("nan")


def test_nan_stops_the_run_keeps_the_last_good_checkpoint(tmp_path, glue_dir):
    cfg, args = make(tmp_path, glue_dir, method="admm")
    with pytest.raises(NonFiniteError, match=r"non-finite weights at step 3 in phase 'admm'.*checkpoint-2"):
        run_experiment(cfg, args, callbacks=[PoisonWeight(3)])
    run_dir = run_dir_for(cfg, args)
    assert not run_dir.file(RunFolder.METRICS).exists()
    checkpoints = sorted(p.name for p in run_dir.checkpoint_dir("admm").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-2"]
    weights = load_file(run_dir.checkpoint_dir("admm") / "checkpoint-2" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert verify_results(tmp_path)[0].finished is False


# ---------------------------------------------------------------- kill -9 and resume
KILLER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from transformers import TrainerCallback
    from nxmlab.study.train.recipe import run_experiment
    from tests.test_recipes import make

    results, glue, phase, step, event = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]

    class Kill(TrainerCallback):
        def _maybe(self, args, state):
            if Path(args.output_dir).name == phase and state.global_step == step:
                os.kill(os.getpid(), signal.SIGKILL)
        def on_step_begin(self, args, state, control, **kw):
            if event == "step":
                self._maybe(args, state)
        def on_save(self, args, state, control, **kw):  # files written, marker not yet
            if event == "save":
                self._maybe(args, state)

    cfg, args = make(Path(results), Path(glue), method="admm")
    run_experiment(cfg, args, callbacks=[Kill()] if phase != "none" else [])
""")


def _killable(tmp: Path, glue: Path, phase: str, step: int, event: str = "step") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", KILLER, str(tmp), str(glue), phase, str(step), event],
                          cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.fixture(scope="module")
def reference(tmp_path_factory, glue_dir):
    tmp = tmp_path_factory.mktemp("uninterrupted")
    cfg, args = make(tmp, glue_dir, method="admm")
    return run_experiment(cfg, args), run_dir_for(cfg, args)


_rng = random.Random(2021)
KILLS = {  # (phase, step, event); 4 optimizer steps per epoch, Z/U update every 4
    "during-admm": ("admm", _rng.choice([1, 2, 3, 5, 6, 7]), "step"),
    "at-zu-update": ("admm", 4, "step"),  # the update at step 8 ends the phase
    "during-retrain": ("retrain", _rng.randint(1, 3), "step"),
    "mid-checkpoint-write": ("admm", 6, "save"),
}


@pytest.mark.parametrize("case", list(KILLS), ids=list(KILLS))
def test_kill_9_then_same_command_resumes_bit_identically(case, tmp_path, glue_dir, reference):
    phase, step, event = KILLS[case]
    killed = _killable(tmp_path, glue_dir, phase, step, event)
    assert killed.returncode == -9, killed.stderr[-2000:]
    cfg, args = make(tmp_path, glue_dir, method="admm")
    run_dir = run_dir_for(cfg, args)
    assert not run_dir.file(RunFolder.METRICS).exists()
    finished = _killable(tmp_path, glue_dir, "none", 0)
    assert finished.returncode == 0, finished.stderr[-2000:]
    metrics = read_json(run_dir.file(RunFolder.METRICS))
    ref_metrics, ref_dir = reference
    assert metrics["eval"] == ref_metrics["eval"]
    ours, theirs = (load_file(d.model_dir / "model.safetensors") for d in (run_dir, ref_dir))
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    if event == "save":  # the torn checkpoint-6 was not used: resumed from checkpoint-4
        assert metrics["phases"]["admm"]["resumed_from_step"] == 4


# ---------------------------------------------------------------- store integrity
def test_concurrent_identical_runs_do_not_clobber(tmp_path, glue_dir):
    procs = [subprocess.Popen([sys.executable, "-c", KILLER, str(tmp_path), str(glue_dir), "none", "0", "step"],
                              cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err.decode()[-2000:]
    checks = verify_results(tmp_path)
    assert len(checks) == 1 and checks[0].ok, checks


def test_verify_finds_every_kind_of_damage(tmp_path, glue_dir, capsys):
    cfg, args = make(tmp_path, glue_dir, method="magnitude")
    run_experiment(cfg, args)
    checks = verify_results(tmp_path)
    assert len(checks) == 2 and all(c.ok for c in checks), checks
    assert main(["verify", str(tmp_path)]) == 0
    run = run_dir_for(cfg, args)

    masks = load_masks(run.masks_file)
    name = next(iter(masks["final"]))
    masks["final"][name][:] = True  # 4 kept in every group of a 4:2 mask
    run.write_mask_sample(masks, 4)
    metrics = read_json(run.file(RunFolder.METRICS))
    metrics["eval"]["final"]["validation"]["accuracy"] = "n/a"
    run.file(RunFolder.METRICS).write_text(json.dumps(metrics))
    run.file(RunFolder.LOG).unlink()
    run.file(RunFolder.PREDICTIONS).write_bytes(b"garbage")
    problems = " | ".join(next(c for c in verify_results(tmp_path) if "magnitude" in c.run).problems)
    assert f"mask_sample.npz: the final mask of {name} is not exactly 4:2" in problems
    assert "accuracy is not a finite number" in problems
    assert "log.jsonl: missing" in problems and "predictions.parquet: not a readable parquet file" in problems
    assert main(["verify", str(tmp_path)]) == 1

    run_dir = run.path
    renamed = run_dir.with_name(run_dir.name[:-3] + "abc")
    run_dir.rename(renamed)
    assert any("does not match the folder name" in p for c in verify_results(tmp_path) for p in c.problems)
    assert main(["verify", str(tmp_path / "nope")]) == 2
