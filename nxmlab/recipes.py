"""GLUE recipes on ``transformers.Trainer``: dense, magnitude (ASP), unstructured, admm (NxMTransformer), each ± KD.

``run_experiment(RunConfig(...), NxMTrainingArguments(...))`` trains one method on one
task and leaves a complete record in the results store (see :mod:`nxmlab.store`).

Methods and their phases (``E = num_train_epochs``, ``R = retrain_epochs``):

================  =======================================================================
``dense``         fine-tune E epochs.  The KD teacher and the start of ASP; reused when finished.
``magnitude``     NVIDIA ASP practice: one-shot magnitude NxM mask of the dense fine-tuned model
                  (``mask_source="pretrained"``: of the pretrained one), then E epochs with the
                  mask fixed.
``unstructured``  the same, with an unstructured magnitude mask at the same density (reference).
``admm``          NxMTransformer: E epochs of ADMM (from the pretrained model, or the dense one
                  with ``admm_init="dense"``), Z/U updates every ``admm_interval`` steps (default:
                  once per epoch), hard prune, then R epochs with the masks fixed.
``+kd``           any sparse method's training distils from the dense teacher of the same task.
================  =======================================================================

Each phase is one ``Trainer.train`` call with its own checkpoints; a killed run restarts
from the newest complete checkpoint of its current phase, with the optimizer, scheduler,
RNG and ADMM states, and skips phases that already finished.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import fcntl
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForSequenceClassification,
    DataCollatorWithPadding,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from safetensors.torch import save_file
from transformers.utils import logging as hf_logging

from . import __version__
from .admm import ADMM, validate_rho
from .glue import get_task, load_glue, tokenize_glue
from .masking import apply_masks, magnitude_nxm_masks, unstructured_masks
from .metrics import compute_metrics_fn, glue_score
from .models import load_model_and_tokenizer
from .nxm import NxM, is_nxm
from .store import (
    STORE_VERSION,
    append_jsonl,
    atomic_write_json,
    config_hash,
    is_finished,
    read_json,
    read_jsonl,
    save_masks,
)
from .targets import COMPONENTS, select_targets
from .trainer import (
    ADMM_STATE_FILE,
    ADMMCallback,
    CheckpointMarker,
    DistillationTrainer,
    FiniteGuard,
    FixedMaskCallback,
    NonFiniteError,
    last_complete_checkpoint,
)

__all__ = ["METHODS", "RunConfig", "NxMTrainingArguments", "run_experiment", "run_dir_for", "canonical_config"]

logger = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("dense", "magnitude", "unstructured", "admm")
SPARSE_METHODS: tuple[str, ...] = ("magnitude", "unstructured", "admm")

#: TrainingArguments fields that change results; they enter the config hash.
_TRAINING_KEYS = (
    "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs",
    "max_steps", "weight_decay", "warmup_steps", "lr_scheduler_type", "max_grad_norm", "seed", "data_seed",
    "adam_beta1", "adam_beta2", "adam_epsilon", "optim", "bf16", "fp16",
)


@dataclass
class RunConfig:
    """What to run: task, method and the sparsity settings (the rest is ``TrainingArguments``)."""

    task: str = field(default="rte", metadata={"help": "GLUE task: cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli."})
    method: str = field(default="admm", metadata={"help": f"One of {', '.join(METHODS)}."})
    kd: bool = field(default=False, metadata={"help": "Distil from the dense fine-tuned teacher (sparse methods)."})
    model: str = field(default="minilm-l6", metadata={"help": "minilm-l6 (offline), tiny, bert-base, a Hub id or a folder."})
    pattern: str = field(default="4:2", metadata={"help": "n:m, keep m of every n (the paper's 4:2 is NVIDIA's 2:4)."})
    components: str = field(default="all", metadata={"help": f"Comma-separated subset of {','.join(COMPONENTS)}, or all."})
    rho: float = field(default=1e-3, metadata={"help": "ADMM penalty weight (paper: 1e-3)."})
    rho_factor: float = field(default=1.0, metadata={"help": "Multiply rho by this at every Z/U update (1 = constant)."})
    rho_max: float | None = field(default=None, metadata={"help": "Cap of the rho schedule."})
    admm_interval: int | None = field(default=None, metadata={"help": "Optimizer steps between Z/U updates (default: one epoch)."})
    admm_init: str = field(default="pretrained", metadata={"help": "ADMM starts from the 'pretrained' or the 'dense' fine-tuned model."})
    mask_source: str = field(default="dense", metadata={"help": "magnitude/unstructured: mask from the 'dense' fine-tuned or the 'pretrained' weights."})
    retrain_epochs: float = field(default=2.0, metadata={"help": "admm: epochs of fine-tuning with the masks fixed."})
    dense_epochs: float | None = field(default=None, metadata={"help": "Epochs of the dense teacher/start run (default: num_train_epochs)."})
    max_seq_length: int = field(default=128, metadata={"help": "Tokens per example (dynamic padding)."})
    kd_temperature: float = field(default=2.0, metadata={"help": "KD softmax temperature."})
    kd_alpha: float = field(default=0.5, metadata={"help": "KD weight of the teacher term in [0, 1]."})
    train_limit: int | None = field(default=None, metadata={"help": "Use only the first N training examples (smoke tests)."})
    eval_limit: int | None = field(default=None, metadata={"help": "Use only the first N validation examples (smoke tests)."})
    glue_dir: str | None = field(default=None, metadata={"help": "GLUE Parquet mirror (default: $NXMLAB_GLUE_DIR, else the Hub)."})
    results_dir: str = field(default="results", metadata={"help": "Results store root."})
    log_interval: int = field(default=50, metadata={"help": "Optimizer steps between ADMM dynamics records."})
    overwrite: bool = field(default=False, metadata={"help": "Re-run even if an identical finished run exists."})
    teacher: str | None = field(default=None, metadata={"help": "KD teacher: a model folder or a finished dense run folder (default: the dense run of this task, model and seed, trained if missing)."})

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        get_task(self.task)
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of: {', '.join(METHODS)}")
        if self.kd and self.method == "dense":
            raise ValueError("--kd applies to sparse methods; the dense run is the teacher")
        NxM.parse(self.pattern)
        self.component_list()
        validate_rho(self.rho)
        validate_rho(self.rho_factor, "rho_factor")
        if self.rho_max is not None:
            validate_rho(self.rho_max, "rho_max")
        if self.admm_init not in ("pretrained", "dense"):
            raise ValueError(f"admm_init must be 'pretrained' or 'dense', got {self.admm_init!r}")
        if self.mask_source not in ("pretrained", "dense"):
            raise ValueError(f"mask_source must be 'pretrained' or 'dense', got {self.mask_source!r}")
        for name in ("admm_interval", "train_limit", "eval_limit", "max_seq_length", "log_interval"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("retrain_epochs", "dense_epochs", "kd_temperature"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if not 0.0 <= self.kd_alpha <= 1.0:
            raise ValueError(f"kd_alpha must be in [0, 1], got {self.kd_alpha}")
        if self.teacher is not None and not self.kd:
            raise ValueError("--teacher is only used with --kd")

    def component_list(self) -> tuple[str, ...]:
        """``components`` as a tuple of component names."""
        if self.components.strip() == "all":
            return COMPONENTS
        parts = tuple(p.strip() for p in self.components.split(",") if p.strip())
        unknown = [p for p in parts if p not in COMPONENTS]
        if unknown or not parts:
            raise ValueError(f"unknown component(s) {unknown or [self.components]}; choose from {', '.join(COMPONENTS)} or all")
        return parts


@dataclass
class NxMTrainingArguments(TrainingArguments):
    """``TrainingArguments`` with nxmlab's defaults (batch 32, lr 5e-5, 10% warm-up, checkpoints every 50 steps).

    ``output_dir`` is set by nxmlab for each phase; ``num_train_epochs`` is the
    length of the main phase (dense / masked fine-tuning / ADMM).
    """

    output_dir: str | None = field(default=None, metadata={"help": "Set by nxmlab (per run and phase)."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Batch size per device for training."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Batch size per device for evaluation."})
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak AdamW learning rate."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    warmup_steps: float = field(default=0.1, metadata={"help": "Warm-up steps (a float < 1 is a fraction of all steps)."})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Epochs of the main phase."})
    save_strategy: str = field(default="steps", metadata={"help": "Checkpoint strategy (resume needs checkpoints)."})
    save_steps: float = field(default=50, metadata={"help": "Optimizer steps between checkpoints."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept per phase."})
    logging_steps: float = field(default=10, metadata={"help": "Optimizer steps between log records."})
    logging_nan_inf_filter: bool = field(default=False, metadata={"help": "Keep NaN/Inf losses visible (nxmlab stops on them)."})
    seed: int = field(default=42, metadata={"help": "Seed for initialisation, dropout and data order."})
    dataloader_pin_memory: bool = field(default=torch.cuda.is_available(), metadata={"help": "Pin memory (GPU only)."})


#: Target weights at the first Z/U update past half of the ADMM phase.
MID_WEIGHTS_FILE = "weights_admm_mid.safetensors"

_TIMING_KEYS = ("runtime", "samples_per_second", "steps_per_second", "model_preparation_time", "epoch")


def canonical_config(cfg: RunConfig, args: TrainingArguments) -> dict[str, Any]:
    """The run's identity: the fields that change its results, normalised per method."""
    config: dict[str, Any] = {
        "store_version": STORE_VERSION,
        "task": cfg.task,
        "method": cfg.method,
        "model": cfg.model,
        "max_seq_length": cfg.max_seq_length,
        "train_limit": cfg.train_limit,
        "eval_limit": cfg.eval_limit,
        "training": {key: getattr(args, key, None) for key in _TRAINING_KEYS},
    }
    config["training"]["num_train_epochs"] = float(args.num_train_epochs)  # 3 and 3.0 are one run
    config["training"]["lr_scheduler_type"] = str(config["training"]["lr_scheduler_type"])
    config["training"]["optim"] = str(config["training"]["optim"])
    if cfg.method != "dense":
        config.update(
            kd=cfg.kd,
            pattern=str(NxM.parse(cfg.pattern)),
            components=list(cfg.component_list()),
            dense_epochs=float(cfg.dense_epochs or args.num_train_epochs),
        )
        if cfg.kd:
            config.update(kd_temperature=cfg.kd_temperature, kd_alpha=cfg.kd_alpha)
            if cfg.teacher is not None:
                config["teacher"] = str(Path(cfg.teacher).resolve())
    if cfg.method in ("magnitude", "unstructured"):
        config["mask_source"] = cfg.mask_source
    if cfg.method == "admm":
        config.update(
            rho=cfg.rho, rho_factor=cfg.rho_factor, rho_max=cfg.rho_max, admm_interval=cfg.admm_interval,
            admm_init=cfg.admm_init, retrain_epochs=float(cfg.retrain_epochs),
        )
    return config


def _model_tag(model: str) -> str:
    return Path(model.rstrip("/")).name.replace(".", "_") or "model"


def run_dir_for(cfg: RunConfig, args: TrainingArguments) -> Path:
    """Folder of this run: ``<results>/<task>/<method>[+kd][-<n>x<m>]-<model>-seed<S>-<hash>``."""
    config = canonical_config(cfg, args)
    method = cfg.method + ("+kd" if cfg.kd else "")
    pattern = "" if cfg.method == "dense" else "-" + str(NxM.parse(cfg.pattern)).replace(":", "x")
    rho = f"-rho{cfg.rho:g}" if cfg.method == "admm" else ""
    name = f"{method}{pattern}{rho}-{_model_tag(cfg.model)}-seed{args.seed}-{config_hash(config)}"
    return Path(cfg.results_dir) / cfg.task / name


# --------------------------------------------------------------------------------------
class _Run:
    """One run's state machine; see :func:`run_experiment`."""

    def __init__(self, cfg: RunConfig, args: TrainingArguments, run_dir: Path,
                 callbacks: Sequence[TrainerCallback]) -> None:
        self.cfg, self.args, self.run_dir = cfg, args, run_dir
        self.extra_callbacks = list(callbacks)
        self.task = get_task(cfg.task)
        self.pattern = NxM.parse(cfg.pattern)
        self.state = read_json(run_dir / "state.json", {"phases": {}, "eval": {}})

    # --- data and models ------------------------------------------------------------
    def load_data(self, tokenizer) -> None:
        cfg, task = self.cfg, self.task
        raw = load_glue(task.name, task.train_split, cfg.glue_dir, limit=cfg.train_limit)
        self.train = tokenize_glue(raw, task, tokenizer, cfg.max_seq_length)
        self.evals = {
            split: tokenize_glue(load_glue(task.name, split, cfg.glue_dir, limit=cfg.eval_limit), task, tokenizer,
                                 cfg.max_seq_length)
            for split in task.eval_splits
        }
        self.collator = DataCollatorWithPadding(tokenizer)
        self.tokenizer = tokenizer

    def pretrained(self):
        model, tokenizer = load_model_and_tokenizer(
            self.cfg.model, self.task.num_labels, is_regression=self.task.is_regression, seed=self.args.seed
        )
        return model, tokenizer

    @staticmethod
    def load_saved(folder: Path):
        return AutoModelForSequenceClassification.from_pretrained(folder)

    def targets(self, model):
        return select_targets(model, self.cfg.component_list(), pattern=self.pattern)

    # --- bookkeeping -------------------------------------------------------------------
    def save_state(self) -> None:
        atomic_write_json(self.run_dir / "state.json", self.state)

    def evaluate(self, key: str, model) -> dict[str, dict[str, float]]:
        if key in self.state["eval"]:
            return self.state["eval"][key]
        args = copy.deepcopy(self.args)
        args.output_dir = str(self.run_dir / "checkpoints" / "eval")
        args.disable_tqdm = True
        trainer = Trainer(model=model, args=args, data_collator=self.collator,
                          compute_metrics=compute_metrics_fn(self.task))
        result = {}
        for split, dataset in self.evals.items():
            metrics = trainer.evaluate(dataset, metric_key_prefix="eval")
            result[split] = {k.removeprefix("eval_"): float(v) for k, v in metrics.items()
                             if isinstance(v, (int, float)) and not k.endswith(_TIMING_KEYS)}
            if not math.isfinite(result[split].get("loss", 0.0)):
                raise NonFiniteError(f"non-finite evaluation loss on {split} at '{key}' of {self.run_dir}")
        self.state["eval"][key] = result
        self.save_state()
        logger.info("%s %s: score %.4f", self.run_dir.name, key, self.score(result))
        return result

    def score(self, result: dict[str, dict[str, float]]) -> float:
        return sum(glue_score(self.task, m) for m in result.values()) / len(result)

    def phase(self, name: str, model, epochs: float, callbacks: Sequence[TrainerCallback] = (),
              teacher=None, on_resume=None, on_end=None):
        """Train one phase (or load its result if it already finished)."""
        folder = self.run_dir / "phases" / name
        if name in self.state["phases"]:
            return self.load_saved(folder)
        args = copy.deepcopy(self.args)
        args.output_dir = str(self.run_dir / "checkpoints" / name)
        args.num_train_epochs = epochs
        kwargs: dict[str, Any] = dict(model=model, args=args, train_dataset=self.train, data_collator=self.collator,
                                      callbacks=[*callbacks, *self.extra_callbacks, FiniteGuard(name),
                                                 CheckpointMarker(name)])
        if teacher is not None:
            trainer = DistillationTrainer(**kwargs, teacher=teacher, temperature=self.cfg.kd_temperature,
                                          alpha=self.cfg.kd_alpha)
        else:
            trainer = Trainer(**kwargs)
        checkpoint = last_complete_checkpoint(args.output_dir)
        start_step = int(checkpoint.name.split("-")[-1]) if checkpoint else 0
        if checkpoint is not None:
            logger.info("resuming phase '%s' of %s from %s", name, self.run_dir.name, checkpoint.name)
            if on_resume is not None:
                on_resume(checkpoint, start_step)
        tic = time.perf_counter()
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        seconds = time.perf_counter() - tic
        steps = trainer.state.global_step
        if on_end is not None:
            on_end()
        steps_per_epoch = trainer.state.max_steps / epochs
        per_step = seconds / max(steps - start_step, 1)
        # log_history includes what a resumed checkpoint carried
        append_jsonl(self.run_dir / "log.jsonl", [{"phase": name, **r} for r in trainer.state.log_history])
        tmp = folder.with_name(f".{name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
        self.state["phases"][name] = {
            "epochs": epochs, "steps": steps, "seconds": seconds, "seconds_per_step": per_step,
            "seconds_per_epoch": per_step * steps_per_epoch, "resumed_from_step": start_step,
        }
        self.save_state()
        shutil.rmtree(self.run_dir / "checkpoints" / name, ignore_errors=True)
        return model

    # --- methods -------------------------------------------------------------------------
    def setup(self) -> None:
        """Load and check everything a run needs; writes nothing."""
        self.pretrained_model, tokenizer = self.pretrained()
        self.load_data(tokenizer)
        if self.cfg.method != "dense":
            self.targets(self.pretrained_model)  # n must divide every target's width
        self.teacher_model = None
        if self.cfg.kd and self.cfg.teacher is not None:
            self.teacher_model = self.load_teacher(Path(self.cfg.teacher))

    def load_teacher(self, path: Path):
        folder = path / "model" if (path / "model" / "config.json").is_file() else path
        if not (folder / "config.json").is_file():
            raise ValueError(f"--kd needs a dense teacher, and {path} is neither a model folder nor a finished dense run")
        teacher = self.load_saved(folder)
        self.check_teacher(teacher, self.pretrained_model, folder)
        return teacher

    def run(self, dense_dir: Path | None) -> dict[str, Any]:
        cfg = self.cfg
        pretrained = self.pretrained_model
        dense = self.load_saved(dense_dir / "model") if dense_dir is not None else None
        teacher = None
        if cfg.kd:
            teacher = self.teacher_model if self.teacher_model is not None else dense
            folder = None if self.teacher_model is not None or dense_dir is None else dense_dir / "model"
            self.check_teacher(teacher, pretrained, folder)
        mask_sets: dict[str, dict[str, torch.Tensor]] = {}
        if cfg.method != "dense":
            mask_sets["pretrained_magnitude"] = magnitude_nxm_masks(self.targets(pretrained), self.pattern)
            if dense is not None:
                mask_sets["dense_magnitude"] = magnitude_nxm_masks(self.targets(dense), self.pattern)

        if cfg.method == "dense":
            model = self.phase("finetune", pretrained, self.args.num_train_epochs)
            masks = None
        elif cfg.method in ("magnitude", "unstructured"):
            model = copy.deepcopy(dense)
            source = pretrained if cfg.mask_source == "pretrained" else dense
            source_targets = self.targets(source)
            if cfg.method == "magnitude":
                masks = magnitude_nxm_masks(source_targets, self.pattern)
            else:
                masks = unstructured_masks(source_targets, self.pattern.density)
            fixed = apply_masks(model, masks)
            self.evaluate("before_prune", dense)
            self.evaluate("after_prune", model)
            model = self.phase("finetune", model, self.args.num_train_epochs, [FixedMaskCallback(fixed)], teacher)
            fixed.remove()
        else:
            model = self.run_admm(pretrained if cfg.admm_init == "pretrained" else copy.deepcopy(dense), teacher)
            masks = self.masks
        final = self.evaluate("final", model)
        return self.finish(model, final, masks, mask_sets, dense_dir)

    def run_admm(self, model, teacher):
        cfg = self.cfg
        targets = self.targets(model)
        admm = ADMM(model, targets, self.pattern, rho=cfg.rho, rho_factor=cfg.rho_factor, rho_max=cfg.rho_max)
        dynamics = self.run_dir / "dynamics.jsonl"
        steps_per_epoch = math.ceil(
            math.ceil(len(self.train) / (self.args.per_device_train_batch_size * max(self.args.world_size, 1)))
            / self.args.gradient_accumulation_steps
        )
        interval = cfg.admm_interval or steps_per_epoch

        def target_weights() -> dict[str, torch.Tensor]:
            return {name: p.detach().clone().contiguous() for name, p in admm.params.items()}

        def on_midpoint(step: int) -> None:  # for the |w| histograms (large: not committed)
            save_file(target_weights(), str(self.run_dir / MID_WEIGHTS_FILE), metadata={"step": str(step)})

        callback = ADMMCallback(admm, interval, cfg.log_interval, record=lambda rows: append_jsonl(dynamics, rows),
                                on_midpoint=on_midpoint)

        def on_resume(checkpoint: Path, step: int) -> None:
            admm.load_state_dict(torch.load(checkpoint / ADMM_STATE_FILE, weights_only=True))
            kept = [r for r in read_jsonl(dynamics) if not (r["phase"] == "admm" and r["step"] > step)]
            dynamics.unlink(missing_ok=True)
            append_jsonl(dynamics, kept)

        if "admm" not in self.state["phases"]:
            if not any(self.run_dir.glob("checkpoints/admm/checkpoint-*")):
                dynamics.unlink(missing_ok=True)  # a fresh start: no stale records

        def on_end() -> None:  # the final ADMM state and W before the prune (large: not committed)
            torch.save({**admm.state_dict(), "W": target_weights()}, self.run_dir / ADMM_STATE_FILE)

        model = self.phase("admm", model, self.args.num_train_epochs, [callback], teacher, on_resume, on_end)
        self.evaluate("before_prune", model)
        # hard prune: project every target onto the NxM set (apply_masks zeroes the rest)
        self.masks = magnitude_nxm_masks(self.targets(model), self.pattern)
        fixed = apply_masks(model, self.masks)
        self.evaluate("after_prune", model)
        model = self.phase("retrain", model, cfg.retrain_epochs, [FixedMaskCallback(fixed)], teacher)
        fixed.remove()
        return model

    def check_teacher(self, teacher, student, folder: Path | None = None) -> None:
        """Raise ``ValueError`` unless ``teacher`` can teach ``student`` on this task."""
        if teacher is None:
            raise ValueError("--kd needs a dense teacher for this task, model and seed, and none is available")
        t_labels, s_labels = teacher.config.num_labels, student.config.num_labels
        if t_labels != s_labels:
            raise ValueError(f"teacher has {t_labels} labels but the student has {s_labels}")
        same_vocab = teacher.config.vocab_size == student.config.vocab_size
        if same_vocab and folder is not None and any((folder / f).is_file() for f in ("tokenizer.json", "vocab.txt")):
            from transformers import AutoTokenizer

            same_vocab = AutoTokenizer.from_pretrained(folder).get_vocab() == self.tokenizer.get_vocab()
        if not same_vocab:
            raise ValueError("teacher and student use different tokenizers (their vocabularies differ)")

    def finish(self, model, final, masks, mask_sets, dense_dir) -> dict[str, Any]:
        cfg = self.cfg
        sparsity: dict[str, float] = {}
        nxm_ok: bool | None = None
        if masks is not None:
            targets = self.targets(model)
            sparsity = {n: float((m.weight == 0).float().mean()) for n, m in targets.items()}
            if cfg.method == "unstructured":
                bad = [n for n, m in targets.items() if bool((m.weight.detach()[~masks[n]] != 0).any())]
            else:
                bad = [n for n, m in targets.items() if not is_nxm(m.weight, self.pattern)]
                nxm_ok = not bad
            if bad:
                raise RuntimeError(f"run failed its sparsity check: {len(bad)} target(s) not {self.pattern!r}, e.g. {bad[0]}")
            mask_sets["final"] = masks
        if mask_sets:
            save_masks(self.run_dir / "masks.npz", mask_sets)
        # the final model, copied (the phase folders stay until metrics.json is written,
        # so a kill anywhere in here leaves a run that resumes)
        phases = self.run_dir / "phases"
        last = list(self.state["phases"])[-1]
        target, tmp = self.run_dir / "model", self.run_dir / ".model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(phases / last, tmp)
        self.tokenizer.save_pretrained(tmp)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        metrics = {
            "status": "finished",
            "store_version": STORE_VERSION,
            "nxmlab_version": __version__,
            "config_hash": config_hash(read_json(self.run_dir / "config.json")),
            "task": cfg.task, "method": cfg.method, "kd": cfg.kd, "model": cfg.model, "seed": self.args.seed,
            "pattern": None if cfg.method == "dense" else str(self.pattern),
            "rho": cfg.rho if cfg.method == "admm" else None,
            "score": self.score(final),
            "eval": self.state["eval"],
            "phases": self.state["phases"],
            "seconds": sum(p["seconds"] for p in self.state["phases"].values()),
            "sparsity": {"mean": sum(sparsity.values()) / len(sparsity) if sparsity else 0.0, "targets": sparsity},
            "is_nxm": nxm_ok,
            "dense_run": str(dense_dir.relative_to(Path(cfg.results_dir))) if dense_dir is not None else None,
        }
        atomic_write_json(self.run_dir / "metrics.json", metrics)
        shutil.rmtree(phases, ignore_errors=True)  # the dense model stays in model/ (the KD teacher)
        shutil.rmtree(self.run_dir / "checkpoints", ignore_errors=True)
        return metrics


def _check_writable(folder: Path) -> None:
    """Raise ``ValueError`` unless ``folder`` exists writable or can be created."""
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write to results folder {folder} ({probe} is not a writable folder)")


def _check_compatible(run_dir: Path) -> None:
    existing = read_json(run_dir / "config.json")
    if existing is not None and existing.get("store_version") != STORE_VERSION:
        raise ValueError(
            f"{run_dir} was written by an incompatible nxmlab (store version {existing.get('store_version')}, "
            f"this nxmlab uses {STORE_VERSION}); use --overwrite or another --results_dir"
        )


@contextlib.contextmanager
def _run_lock(run_dir: Path):
    """Exclusive lock of one run folder across processes (waits for the holder)."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(run_dir.parent / f".{run_dir.name}.lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.warning("%s is being written by another process; waiting for it", run_dir)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _needs_dense(cfg: RunConfig) -> bool:
    return (cfg.method in ("magnitude", "unstructured") or (cfg.kd and cfg.teacher is None)
            or (cfg.method == "admm" and cfg.admm_init == "dense"))


def run_experiment(
    cfg: RunConfig, args: TrainingArguments | None = None, callbacks: Sequence[TrainerCallback] = ()
) -> dict[str, Any]:
    """Train one method on one GLUE task, record everything, and return ``metrics.json``.

    A finished identical run is reused (unless ``cfg.overwrite``); an unfinished one
    resumes.  Sparse methods that need the dense model train or reuse it first.
    Every input is checked (data, model, targets, teacher) before anything is
    written; a failure then leaves the results folder as it was.

    Args:
        cfg: What to run.
        args: Training arguments (default: :class:`NxMTrainingArguments`).
        callbacks: Extra ``TrainerCallback`` objects for every training phase.

    Raises:
        ValueError: bad configuration or input (nothing written).
        FileNotFoundError: missing GLUE data (nothing written).
        NonFiniteError: NaN/Inf during training; the last good checkpoint is kept.
    """
    cfg.validate()
    args = args if args is not None else NxMTrainingArguments()
    for name in ("num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps"):
        value = getattr(args, name)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be > 0, got {value!r}")
    _check_writable(Path(cfg.results_dir))
    run_dir = run_dir_for(cfg, args)
    config = canonical_config(cfg, args)
    if not cfg.overwrite:
        _check_compatible(run_dir)
        if is_finished(run_dir):
            logger.info("reusing finished run %s", run_dir)
            return read_json(run_dir / "metrics.json")

    run = _Run(cfg, args, run_dir, callbacks)
    run.setup()

    dense_dir = None
    if _needs_dense(cfg):
        dense_cfg = dataclasses.replace(cfg, method="dense", kd=False, overwrite=False, teacher=None)
        dense_args = copy.deepcopy(args)
        dense_args.num_train_epochs = cfg.dense_epochs or args.num_train_epochs
        dense_dir = run_dir_for(dense_cfg, dense_args)
        if is_finished(dense_dir) and not (dense_dir / "model").is_dir():
            logger.info("dense run %s has no saved model (fresh clone?): training it again", dense_dir)
            dense_cfg.overwrite = True
        run_experiment(dense_cfg, dense_args, callbacks)

    with _run_lock(run_dir):
        if is_finished(run_dir) and not cfg.overwrite:  # finished by another process meanwhile
            return read_json(run_dir / "metrics.json")
        if cfg.overwrite and run_dir.exists():
            shutil.rmtree(run_dir)
            run.state = {"phases": {}, "eval": {}}
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "config.json", config)
        # keep Trainer's progress bar; silence per-checkpoint "Writing model shards" bars
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            return run.run(dense_dir)
        finally:
            if bars:
                hf_logging.enable_progress_bar()
