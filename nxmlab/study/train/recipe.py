"""One run of one method on one GLUE task, on ``transformers.Trainer``, into the results store.

``run_experiment(RunConfig(...), NxMTrainingArguments(...))`` parses the config once
(:class:`~nxmlab.study.train.config.RunSpec`), trains or reuses the dense run the method needs,
then walks the method's steps from the registry (:mod:`nxmlab.study.train.methods`):
each :class:`~nxmlab.study.train.methods.Train` step is one ``Trainer.train`` call with its own
checkpoints, each :class:`~nxmlab.study.train.methods.Prune` step fixes the masks its rule
chooses.  A killed run restarts from the newest complete checkpoint of its current
phase, with the optimizer, scheduler, RNG and ADMM states, and skips finished phases.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer, TrainerCallback
from transformers.utils import logging as hf_logging

from ... import __version__
from ...callbacks import (
    CheckpointMarker,
    DistillationTrainer,
    FiniteGuard,
    FixedMaskCallback,
    NonFiniteError,
    last_loadable_checkpoint,
)
from ...masking import apply_masks, magnitude_nxm_masks
from ...nxm import is_nxm
from ...targets import select_targets, train_only
from ..data.glue import heldout_split, load_glue, tokenize_glue
from ..data.metrics import compute_metrics_fn, glue_score, missing_reasons
from ..data.models import load_model_and_tokenizer
from ..results.frames import mask_distance_table
from ..results.integrity import file_sha256, finite_or_none, model_folder_problem
from ..results.store import (
    STORE_VERSION,
    DamagedFileError,
    RunFolder,
    StoreVersionError,
    config_hash,
    check_writable,
    follow_umask,
    save_masks,
)
from .config import NxMTrainingArguments, RunConfig, RunSpec
from .distributed import check_launch, check_replicated, decide, is_main
from .methods import MaskContext, Prune
from .timing import ElapsedTime, elapsed_before

__all__ = ["run_experiment", "NonFiniteError"]

logger = logging.getLogger(__name__)

_TIMING_KEYS = ("runtime", "samples_per_second", "steps_per_second", "model_preparation_time", "epoch")


class _Run:
    """One run: data, models and the walk through the method's steps."""

    def __init__(self, spec: RunSpec, callbacks: Sequence[TrainerCallback]) -> None:
        self.spec, self.folder = spec, spec.folder()
        self.extra_callbacks = list(callbacks)
        self.state: dict[str, Any] = {"phases": {}, "eval": {}}

    def use_folder(self, folder: RunFolder, state: dict[str, Any]) -> None:
        """Write into ``folder`` (the run's own, or its staging folder under ``--overwrite``),
        resuming from ``state`` (read by rank 0 under the run lock)."""
        self.folder, self.state = folder, state

    # --- data and models ----------------------------------------------------------------
    def setup(self) -> None:
        """Load and check everything the run needs; writes nothing."""
        spec, cfg = self.spec, self.spec.cfg
        self.pretrained, self.tokenizer = load_model_and_tokenizer(
            cfg.model, spec.task.num_labels, is_regression=spec.task.is_regression, seed=spec.seed)
        raw = load_glue(spec.task.name, spec.task.train_split, cfg.glue_dir, limit=cfg.train_limit)
        if cfg.heldout is not None:  # a selection run: train on the rest, score on the held-out part
            raw, heldout = heldout_split(raw, cfg.heldout)
            evals = {"heldout": heldout}
        else:
            evals = {split: load_glue(spec.task.name, split, cfg.glue_dir, limit=cfg.eval_limit)
                     for split in spec.task.eval_splits}
        self.train = tokenize_glue(raw, spec.task, self.tokenizer, cfg.max_seq_length)
        self.evals, self.eval_idx = {}, {}
        for split, raw in evals.items():
            self.eval_idx[split] = list(raw["idx"]) if "idx" in raw.column_names else list(range(len(raw)))
            self.evals[split] = tokenize_glue(raw, spec.task, self.tokenizer, cfg.max_seq_length)
        self.collator = DataCollatorWithPadding(self.tokenizer)
        if spec.method.sparse:
            self.targets(self.pretrained)  # n must divide every target's width
        self.teacher_model = self.load_teacher(Path(cfg.teacher)) if spec.kd and cfg.teacher else None

    def targets(self, model):
        return select_targets(model, self.spec.components, pattern=self.spec.pattern)

    def calibration(self, batch_size: int = 16) -> list[dict[str, torch.Tensor]]:
        """``calibration_examples`` training examples (a sample seeded by the run's seed), as
        padded model inputs without labels, in batches of ``batch_size``."""
        n = min(self.spec.cfg.calibration_examples, len(self.train))
        order = torch.randperm(len(self.train), generator=torch.Generator().manual_seed(self.spec.seed))
        rows = self.train.select(sorted(order[:n].tolist()))
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in rows.column_names]
        features = [{k: rows[i][k] for k in keys} for i in range(len(rows))]
        return [self.collator(features[i:i + batch_size]) for i in range(0, len(features), batch_size)]

    @staticmethod
    def load_saved(folder: Path):
        """A model saved by a phase or run; ``ValueError`` naming the folder when it is damaged."""
        problem = model_folder_problem(folder)
        if problem is None:
            try:
                return AutoModelForSequenceClassification.from_pretrained(folder)
            except (OSError, ValueError, RuntimeError) as exc:
                problem = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot load the saved model in {folder} (damaged or incomplete: {problem}); "
                         "train that run again with --overwrite")

    def load_teacher(self, path: Path):
        candidates = [path / "model", RunFolder.at(path).model_dir, path]
        folder = next((c for c in candidates if (c / "config.json").is_file()), None)
        if folder is None:
            raise ValueError(f"--kd needs a dense teacher, and {path} is neither a model folder nor a finished dense run")
        teacher = self.load_saved(folder)
        self.check_teacher(teacher, folder)
        return teacher

    def check_teacher(self, teacher, folder: Path | None = None) -> None:
        """Raise ``ValueError`` unless ``teacher`` can teach this run's model on this task."""
        if teacher is None:
            raise ValueError("--kd needs a dense teacher for this task, model and seed, and none is available")
        t_labels, s_labels = teacher.config.num_labels, self.pretrained.config.num_labels
        if t_labels != s_labels:
            raise ValueError(f"teacher has {t_labels} labels but the student has {s_labels}")
        same_vocab = teacher.config.vocab_size == self.pretrained.config.vocab_size
        if same_vocab and folder is not None and any((folder / f).is_file() for f in ("tokenizer.json", "vocab.txt")):
            from transformers import AutoTokenizer

            same_vocab = AutoTokenizer.from_pretrained(folder).get_vocab() == self.tokenizer.get_vocab()
        if not same_vocab:
            raise ValueError("teacher and student use different tokenizers (their vocabularies differ)")

    # --- bookkeeping ----------------------------------------------------------------------
    def save_state(self) -> None:
        if is_main():  # rank 0 owns the store
            self.folder.write_json(RunFolder.STATE, self.state)

    def steps_per_epoch(self) -> int:
        args = self.spec.args
        batches = math.ceil(len(self.train) / (args.per_device_train_batch_size * max(args.world_size, 1)))
        return math.ceil(batches / args.gradient_accumulation_steps)

    def evaluate(self, key: str, model, predictions: bool = False) -> dict[str, dict[str, float]]:
        """Evaluate every validation split (cached in ``state.json``, except with ``predictions``)."""
        if key in self.state["eval"] and not predictions:
            return self.state["eval"][key]
        args = copy.deepcopy(self.spec.args)
        args.output_dir = str(self.folder.checkpoint_dir("eval"))
        args.disable_tqdm = True
        # transformers 5 groups *evaluation* batches by length too under group_by_length; keep
        # the dataset's order so that predictions line up with the GLUE idx
        args.train_sampling_strategy = "random"
        trainer = Trainer(model=model, args=args, data_collator=self.collator,
                          compute_metrics=compute_metrics_fn(self.spec.task))
        result, frames = {}, []
        for split, dataset in self.evals.items():
            out = trainer.predict(dataset, metric_key_prefix="eval")
            raw = {k.removeprefix("eval_"): float(v) for k, v in out.metrics.items()
                   if isinstance(v, (int, float)) and not k.endswith(_TIMING_KEYS)}
            if not math.isfinite(raw.get("loss", 0.0)):
                raise NonFiniteError(f"non-finite evaluation loss on {split} at '{key}' of {self.folder.path}")
            logits = out.predictions[0] if isinstance(out.predictions, tuple) else out.predictions
            values = logits[:, 0] if self.spec.task.is_regression else logits.argmax(-1)
            missing = missing_reasons(self.spec.task, raw, values, out.label_ids)
            result[split], _ = finite_or_none(raw)  # an undefined metric is stored as missing, with its reason
            if missing:
                result[split]["missing"] = missing
            frames.append(pd.DataFrame({"split": split, "idx": self.eval_idx[split], "prediction": values}))
        if predictions and is_main():
            self.folder.write_frame(RunFolder.PREDICTIONS, pd.concat(frames, ignore_index=True))
        self.state["eval"][key] = result
        self.save_state()
        logger.info("%s %s: score %.4f", self.folder.name, key, self.score(result))
        return result

    def score(self, result: dict[str, dict[str, float]]) -> float:
        """The task score over the validation splits; NaN when a split has none."""
        return sum(glue_score(self.spec.task, m) for m in result.values()) / len(result)

    # --- phases -----------------------------------------------------------------------------
    def phase(self, step, model, fixed, teacher, hooks):
        """Train one phase, or load its result if it finished before."""
        folder = self.folder.phase_dir(step.name)
        if step.name in self.state["phases"]:
            return self.load_saved(folder)
        args = copy.deepcopy(self.spec.args)
        args.output_dir = str(self.folder.checkpoint_dir(step.name))
        args.num_train_epochs = self.spec.epochs(step.epochs)
        max_steps = getattr(self.spec.cfg, step.steps) if step.steps else None
        if max_steps is not None:
            args.max_steps = int(max_steps)
        if self.spec.method.uses("train_only_targets") and self.spec.cfg.train_only_targets:
            train_only(model, self.targets(model))
        # rank 0 decides; a damaged checkpoint falls back to the previous one
        checkpoint = decide(lambda: last_loadable_checkpoint(args.output_dir))
        elapsed = ElapsedTime(elapsed_before(checkpoint))
        callbacks = [*(hooks.callbacks() if hooks else []), *([FixedMaskCallback(fixed)] if fixed else []),
                     *self.extra_callbacks, FiniteGuard(step.name), elapsed, CheckpointMarker(step.name)]
        # accelerate marks a model it has seen (even in an evaluation) as prepared, and would then not
        # wrap it in DDP again: under torchrun every phase after the first would train each rank alone
        model.__dict__.pop("_is_accelerate_prepared", None)
        kwargs: dict[str, Any] = dict(model=model, args=args, train_dataset=self.train, data_collator=self.collator,
                                      processing_class=self.tokenizer, callbacks=callbacks)
        if teacher is not None:
            trainer = DistillationTrainer(**kwargs, teacher=teacher, temperature=self.spec.cfg.kd_temperature,
                                          alpha=self.spec.cfg.kd_alpha)
        else:
            trainer = Trainer(**kwargs)
        # GLUE models return the mean loss of their own batch and ignore num_items_in_batch: tell
        # Trainer, so that it divides by the accumulation steps and does not scale the loss by the
        # number of processes (average_tokens_across_devices). The gradient is then the mean over
        # the global batch, whatever the world size, and the ADMM penalty keeps its weight.
        trainer.model_accepts_loss_kwargs = False
        start_step = int(checkpoint.name.split("-")[-1]) if checkpoint else 0
        if checkpoint is not None:
            logger.info("resuming phase '%s' of %s from %s", step.name, self.folder.name, checkpoint.name)
        if hooks:
            hooks.resume(checkpoint, start_step)
        tic = elapsed.start()
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        segment = time.perf_counter() - tic
        if hooks:
            hooks.end()
        check_replicated(model.state_dict(), f"weights after phase '{step.name}'")  # DDP kept them in sync
        steps = trainer.state.global_step
        per_step = segment / max(steps - start_step, 1)
        seconds = elapsed.prior + segment  # the whole phase, across resumes
        if is_main():
            self.folder.append_log([{"phase": step.name, **r} for r in trainer.state.log_history])
            tmp = folder.with_name(f".{step.name}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            model.save_pretrained(tmp)
            follow_umask(tmp)  # safetensors writes 0600
            shutil.rmtree(folder, ignore_errors=True)
            tmp.rename(folder)
        per_epoch = (per_step * self.steps_per_epoch() if max_steps is not None
                     else per_step * trainer.state.max_steps / args.num_train_epochs)
        self.state["phases"][step.name] = {
            "epochs": args.num_train_epochs, "steps": steps, "seconds": seconds, "seconds_per_step": per_step,
            "seconds_per_epoch": per_epoch, "resumed_from_step": start_step,
        }
        if max_steps is not None:
            self.state["phases"][step.name]["epochs"] = steps / self.steps_per_epoch()
        self.save_state()
        if is_main():
            shutil.rmtree(self.folder.checkpoint_dir(step.name), ignore_errors=True)
        return model

    def run(self, dense: RunFolder | None) -> dict[str, Any]:
        spec = self.spec
        dense_model = self.load_saved(dense.model_dir) if dense is not None else None
        teacher = None
        if spec.kd:
            teacher = self.teacher_model if self.teacher_model is not None else dense_model
            self.check_teacher(teacher, None if self.teacher_model is not None else dense.model_dir)
        references: dict[str, dict[str, torch.Tensor]] = {}
        if spec.method.sparse:
            references["pretrained_magnitude"] = magnitude_nxm_masks(self.targets(self.pretrained), spec.pattern)
            if dense_model is not None:
                references["dense_magnitude"] = magnitude_nxm_masks(self.targets(dense_model), spec.pattern)
        model = copy.deepcopy(dense_model) if spec.method.start(spec) == "dense" else self.pretrained
        fixed = masks = None
        all_hooks = []
        self.pruned_last = False  # the final model is the pruned one, not a saved phase's
        for step in spec.method.steps:
            if isinstance(step, Prune):
                self.evaluate("before_prune", model)
                masks = step.rule.choose(MaskContext(spec, model, self.pretrained, dense_model, self.targets,
                                                     self.calibration, self.folder))
                check_replicated(masks, "masks")  # DDP: every rank prunes the same positions
                fixed = apply_masks(model, masks)
                self.evaluate("after_prune", model)
                self.pruned_last = True
                continue
            if not (step.steps and getattr(spec.cfg, step.steps)) and spec.epochs(step.epochs) == 0:
                continue  # e.g. retrain_epochs 0: no phase at all
            self.pruned_last = False
            hooks = (step.hooks(spec, self.folder, model, self.targets, self.steps_per_epoch(),
                                calibration=self.calibration) if step.hooks else None)
            trained = self.phase(step, model, fixed, teacher, hooks)
            if trained is not model and masks is not None:  # loaded from disk: fix the masks on it
                fixed.remove()
                fixed = apply_masks(trained, masks)
            model = trained
            all_hooks += [hooks] if hooks else []
        if fixed is not None:
            fixed.remove()
        final = self.evaluate("final", model, predictions=True)
        if not is_main():  # the other ranks hold the same model; rank 0 writes the record
            return None
        return self.finish(model, final, masks, references, all_hooks, dense)

    def finish(self, model, final, masks, references, all_hooks, dense: RunFolder | None) -> dict[str, Any]:
        spec, folder = self.spec, self.folder
        sparsity: dict[str, float] = {}
        diagnostics: dict[str, Any] = {}
        distances: dict[str, float] = {}
        if masks is not None:
            targets = self.targets(model)
            sparsity = {n: float((m.weight == 0).float().mean()) for n, m in targets.items()}
            if spec.method.rule.structured:
                bad = [n for n, m in targets.items() if not is_nxm(m.weight, spec.pattern)]
            else:
                bad = [n for n, m in targets.items() if bool((m.weight.detach()[~masks[n]] != 0).any())]
            if bad:
                raise RuntimeError(f"run failed its sparsity check: {len(bad)} target(s) break {spec.pattern!r}, "
                                   f"e.g. {bad[0]}")
            save_masks(folder.masks_file, {**references, "final": masks})
            folder.write_mask_sample({**references, "final": masks}, spec.pattern.n)
            tables = [mask_distance_table(masks, ref).assign(reference=name) for name, ref in references.items()]
            frame = pd.concat(tables, ignore_index=True)
            folder.write_frame(RunFolder.MASK_DISTANCES, frame)
            distances = {name: float(t["differ"].sum() / t["kept"].sum()) for name, t in
                         zip(references, tables, strict=True)}
            scores = {key: self.score(result) for key, result in self.state["eval"].items()}
            for hooks in all_hooks:
                diagnostics.update(hooks.finish(masks, model, scores, references))
        # the final model, copied into the cache (phase folders stay until metrics.json is
        # written, so a kill anywhere in here leaves a run that resumes)
        target, tmp = folder.model_dir, folder.cache / ".model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        if self.pruned_last:  # no phase after the prune: the pruned model is the final one
            model.save_pretrained(tmp)
        else:
            shutil.copytree(folder.phase_dir(list(self.state["phases"])[-1]), tmp)
        self.tokenizer.save_pretrained(tmp)
        follow_umask(tmp)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        metrics = {
            "status": "finished", "store_version": STORE_VERSION, "nxmlab_version": __version__,
            "config_hash": config_hash(spec.canonical()),
            "task": spec.task.name, "method": spec.method.name, "kd": spec.kd, "model": spec.cfg.model,
            "seed": spec.seed, "pattern": str(spec.pattern) if spec.method.sparse else None,
            "rho": spec.cfg.rho if "rho" in spec.method.options else None,
            "score": self.score(final), "eval": copy.deepcopy(self.state["eval"]), "phases": self.state["phases"],
            "seconds": sum(p["seconds"] for p in self.state["phases"].values()),
            "sparsity": {"mean": sum(sparsity.values()) / len(sparsity) if sparsity else 0.0, "targets": sparsity},
            "is_nxm": (not bad) if masks is not None and spec.method.rule.structured else None,
            "mask_distance": distances, "diagnostics": diagnostics,
            "dense_run": dense.rel if dense is not None else None,
        }
        metrics, non_finite = finite_or_none(metrics)  # NaN/Inf are stored as missing, never as numbers
        missing = {path: "not a finite number" for path in non_finite}
        if metrics["score"] is None:
            reasons = sorted({m.get("missing", {}).get("score", "not a finite number") for m in final.values()})
            missing["score"] = "; ".join(reasons)
        if missing:
            metrics["missing"] = missing
        metrics["checksums"] = _checksums(folder)
        folder.write_json(RunFolder.METRICS, metrics)
        shutil.rmtree(folder.cache / "phases", ignore_errors=True)  # the final model stays in model/
        shutil.rmtree(folder.cache / "checkpoints", ignore_errors=True)
        return metrics


#: Cache files whose checksums ``metrics.json`` records (with every file of ``model/``).
CHECKSUMMED_CACHE = ("masks.npz", "admm_state.pt", "dynamics.jsonl")


def _checksums(folder: RunFolder) -> dict[str, dict[str, str]]:
    """SHA-256 of every committed file but ``metrics.json`` and of the run's final cache files,
    recorded in ``metrics.json`` for ``nxmlab verify``."""
    run = {p.name: file_sha256(p) for p in sorted(folder.path.iterdir())
           if p.is_file() and p.name != RunFolder.METRICS and not p.name.startswith(".")}
    cache = {f"model/{p.name}": file_sha256(p) for p in sorted(folder.model_dir.glob("*")) if p.is_file()}
    cache.update({name: file_sha256(folder.cache / name) for name in CHECKSUMMED_CACHE
                  if (folder.cache / name).is_file()})
    return {"run": run, "cache": cache}


def _damaged(exc: DamagedFileError) -> ValueError:
    return ValueError(f"{exc}; train that run again with --overwrite (the damaged result stays until the new one "
                      "is finished), or move its folder away")


def run_experiment(cfg: RunConfig | RunSpec, args: NxMTrainingArguments | None = None,
                   callbacks: Sequence[TrainerCallback] = ()) -> dict[str, Any]:
    """Train one method on one GLUE task, record everything, and return ``metrics.json``.

    A finished identical run is reused (unless ``cfg.overwrite``); an unfinished one
    resumes.  Methods that need the dense model train or reuse it first.  Every input
    is checked (config, data, model, targets, teacher) before anything is written; a
    failure then leaves the results folder as it was.  Under ``torchrun`` every rank calls
    it: Trainer trains with DDP, rank 0 alone reads and writes the store
    (:mod:`nxmlab.study.train.distributed`), and every rank returns rank 0's record.

    Args:
        cfg: What to run (or an already parsed :class:`RunSpec`).
        args: Training arguments (default: :class:`NxMTrainingArguments`).
        callbacks: Extra ``TrainerCallback`` objects for every training phase.

    Raises:
        ValueError: bad configuration or input (nothing written).
        FileNotFoundError: missing GLUE data (nothing written).
        NonFiniteError: NaN/Inf during training; the last good checkpoint is kept.
    """
    spec = cfg if isinstance(cfg, RunSpec) else RunSpec.parse(cfg, args)
    check_launch(spec.args)  # under torchrun: really DDP, or a one-line error
    folder = spec.folder()

    def reusable() -> dict[str, Any] | None:  # rank 0 reads the store; the other ranks get its answer
        check_writable(Path(spec.cfg.results_dir))
        if spec.cfg.overwrite:
            return None
        try:
            folder.config()
            metrics = folder.metrics()
        except StoreVersionError as exc:
            raise ValueError(str(exc)) from exc
        except DamagedFileError as exc:
            raise _damaged(exc) from exc
        return metrics

    finished = decide(reusable)
    if finished is not None:
        logger.info("reusing finished run %s", folder.path)
        return finished

    run = _Run(spec, callbacks)
    run.setup()

    dense = None
    if spec.method.needs_dense(spec):
        dense_spec = spec.dense()
        dense = dense_spec.folder()

        def dense_problem() -> str | None:
            try:
                finished = dense.finished
            except DamagedFileError as exc:
                raise _damaged(exc) from exc
            if not finished:
                return None
            return (model_folder_problem(dense.model_dir) if dense.model_dir.exists()
                    else "it has no saved model (fresh clone?)")

        problem = decide(dense_problem)
        if problem:
            logger.warning("dense run %s: %s: training it again", dense.path, problem)
            dense_spec.cfg.overwrite = True
        run_experiment(dense_spec, callbacks=callbacks)
    elif spec.method.sparse:  # not needed, but its ASP mask is a reference of the mask diagnostics when at hand
        candidate = spec.dense().folder()

        def usable() -> bool:
            try:
                return candidate.finished and model_folder_problem(candidate.model_dir) is None
            except DamagedFileError as exc:
                logger.warning("not using the dense run as a mask reference: %s", exc)
                return False

        if decide(usable):
            dense = candidate

    with folder.lock() if is_main() else contextlib.nullcontext():  # rank 0 alone holds the run lock
        # --overwrite builds the new result beside the old one and swaps it in when finished
        target = folder.staging() if spec.cfg.overwrite else folder

        def start() -> tuple[dict[str, Any] | None, dict[str, Any]]:
            folder.recover()  # a finished --overwrite cut short while it moved in
            if spec.cfg.overwrite:
                target.discard()
            else:
                try:
                    metrics = folder.metrics()
                except DamagedFileError as exc:
                    raise _damaged(exc) from exc
                if metrics is not None:  # finished by another process meanwhile
                    return metrics, {}
            try:
                state = target.state()
            except DamagedFileError as exc:
                raise _damaged(exc) from exc
            target.write_json(RunFolder.CONFIG, spec.canonical())
            return None, state

        finished, state = decide(start)
        if finished is not None:
            return finished
        run.use_folder(target, state)
        bars = hf_logging.is_progress_bar_enabled()  # keep Trainer's bar, not the shard-writing bars
        hf_logging.disable_progress_bar()
        try:
            metrics = run.run(dense)
            if target is not folder and is_main():
                folder.replace_with(target)
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        metrics = decide(lambda: metrics)  # the other ranks return rank 0's record, once it is written
    return metrics
