"""A run's configuration: parsed and validated once, at the boundary.

:class:`RunConfig` (what to run) and :class:`NxMTrainingArguments` (``TrainingArguments``
with nxmlab's defaults) are what users fill in: the CLI, config files, presets and
notebooks.  :meth:`RunSpec.parse` checks them and resolves every string once: the
:class:`~nxmlab.nxm.NxM` pattern, the GLUE task spec, the registry entry of the method
and the target components.  Below that point the recipe only reads the typed
:class:`RunSpec`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments

from ...admm import DECOUPLED_SCOPES, U_INITS, validate_rho
from ...nxm import NxM
from ...targets import COMPONENTS
from ..data.glue import HELDOUT_SEED, GlueTask, get_task
from ..results.store import STORE_VERSION, RunFolder, config_hash
from .distributed import launched_world_size
from .methods import METHODS, Method, get_method, method_label

__all__ = ["RunConfig", "NxMTrainingArguments", "RunSpec", "TRAINING_KEYS", "non_default", "load_config_file"]

#: TrainingArguments fields that change results; they enter the config hash.
TRAINING_KEYS = (
    "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs",
    "max_steps", "weight_decay", "warmup_steps", "lr_scheduler_type", "max_grad_norm", "seed", "data_seed",
    "adam_beta1", "adam_beta2", "adam_epsilon", "optim", "bf16", "fp16", "train_sampling_strategy",
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
    admm_updates_per_epoch: int | None = field(default=None, metadata={
        "help": "admm: Z/U updates per epoch of the ADMM phase (interval = steps per epoch / this); "
                "excludes --admm_interval."})
    admm_init: str = field(default="pretrained", metadata={"help": "ADMM starts from the 'pretrained' or the 'dense' fine-tuned model."})
    mask_source: str = field(default="dense", metadata={"help": "magnitude/unstructured: mask from the 'dense' fine-tuned or the 'pretrained' weights."})
    retrain_epochs: float = field(default=2.0, metadata={"help": "admm: epochs of fine-tuning with the masks fixed "
                                                                 "(0: none, the run ends with the prune by Proj(W), as in the authors' code)."})
    u_init: str = field(default="zero", metadata={"help": "admm: U starts at 'zero' or at the 'residual' W - Proj(W) (the authors' code)."})
    penalty_before_clip: bool = field(default=False, metadata={
        "help": "admm: the penalty gradient enters before gradient clipping, as a loss term would (the authors' code); "
                "default: after clipping."})
    train_only_targets: bool = field(default=False, metadata={
        "help": "admm: train only the target Linear weights and biases; embeddings, LayerNorm, pooler and classifier "
                "stay frozen (the authors' code)."})
    admm_steps: int | None = field(default=None, metadata={
        "help": "admm: length of the ADMM phase in optimizer steps (default: num_train_epochs); the other phases "
                "keep their epochs."})
    decoupled_penalty: bool = field(default=False, metadata={
        "help": "admm, beyond the paper: after each optimizer step W -= lr * rho * (W - Z + U), outside Adam's "
                "normalisation (like AdamW's weight decay), instead of adding rho (W - Z + U) to the gradient."})
    srste_lambda: float = field(default=2e-4, metadata={
        "help": "sr-ste: weight of the sparse-refined term lambda_w (1 - mask) W added to the gradient (paper: 2e-4)."})
    calibration_examples: int = field(default=128, metadata={
        "help": "wanda, sparsegpt: training examples of the task used as calibration data (seeded sample)."})
    decoupled_scope: str = field(default="all", metadata={
        "help": "admm, with --decoupled_penalty: pull 'all' positions, or only those Z prunes ('pruned'; the kept "
                "ones train freely)."})
    learn_epochs: float = field(default=0.5, metadata={
        "help": "learned: epochs of the mask-learning phase (MaskLLM: Gumbel-softmax masks over the n:m candidates); "
                "the prune takes the most likely candidate, then num_train_epochs of masked fine-tuning."})
    mask_prior: str = field(default="magnitude", metadata={
        "help": "learned: the one-shot mask the mask logits start from: 'magnitude' (of the dense model, ASP's mask) "
                "or 'sparsegpt' (its mask only, over calibration_examples; no weight update)."})
    mask_prior_strength: float = field(default=3.0, metadata={
        "help": "learned: lead of the prior's candidate over each neighbour, in units of 0.01 gate (MaskLLM: 3); "
                "its logit margin at the start is this x 0.01 x mask_scale_start."})
    mask_tau_start: float = field(default=4.0, metadata={"help": "learned: Gumbel-softmax temperature at the start "
                                                                 "of the learning phase (MaskLLM: 4)."})
    mask_tau_end: float = field(default=0.05, metadata={"help": "learned: temperature at the end, linear in between "
                                                                "(MaskLLM: 0.05)."})
    mask_scale_start: float = field(default=100.0, metadata={"help": "learned: logit scale kappa (logits = kappa x "
                                                                     "gates) at the start (MaskLLM: 1e2)."})
    mask_scale_end: float = field(default=500.0, metadata={"help": "learned: logit scale at the end, linear in "
                                                                   "between (MaskLLM: 5e2)."})
    mask_lr_mult: float = field(default=10.0, metadata={
        "help": "learned: learning rate of the mask gates as a multiple of learning_rate, same schedule (MaskLLM: "
                "10); exact for Adam-type optimizers."})
    mask_reg: float = field(default=1e-5, metadata={
        "help": "learned: weight lambda of the sparse weight regulariser -lambda(t) sum ||W * mask||^2 (rewards "
                "keeping large weights), decaying linearly to 0 over the phase (MaskLLM: 1e-5; 0: off)."})
    freeze_weights: bool = field(default=True, metadata={
        "help": "learned: only the mask gates train in the learning phase, every weight is frozen (MaskLLM); "
                "false: weights and masks train jointly."})
    dense_epochs: float | None = field(default=None, metadata={"help": "Epochs of the dense teacher/start run (default: num_train_epochs)."})
    dense_batch_size: int | None = field(default=None, metadata={
        "help": "Batch size of the dense teacher/start run (default: this run's per_device_train_batch_size)."})
    dense_learning_rate: float | None = field(default=None, metadata={
        "help": "Learning rate of the dense teacher/start run (default: this run's learning_rate)."})
    heldout: float | None = field(default=None, metadata={
        "help": "Selection runs: hold out this fraction of the training set (a split fixed by the task, seed "
                f"{HELDOUT_SEED}), train on the rest and score on it instead of the GLUE validation set."})
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


@dataclass
class NxMTrainingArguments(TrainingArguments):
    """``TrainingArguments`` with nxmlab's defaults (batch 32, lr 5e-5, 10% warm-up,
    length-grouped batches, checkpoints every 50 steps).

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
    train_sampling_strategy: str = field(default="group_by_length", metadata={
        "help": "Batches of similar length (group_by_length, the default: little padding) or random."})
    save_strategy: str = field(default="steps", metadata={"help": "Checkpoint strategy (resume needs checkpoints)."})
    save_steps: float = field(default=50, metadata={"help": "Optimizer steps between checkpoints."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept per phase."})
    logging_steps: float = field(default=10, metadata={"help": "Optimizer steps between log records."})
    logging_nan_inf_filter: bool = field(default=False, metadata={"help": "Keep NaN/Inf losses visible (nxmlab stops on them)."})
    seed: int = field(default=42, metadata={"help": "Seed for initialisation, dropout and data order."})
    dataloader_pin_memory: bool = field(default=torch.cuda.is_available(), metadata={"help": "Pin memory (GPU only)."})

    def __post_init__(self):
        from .distributed import configure_launch

        configure_launch(self)  # under torchrun: gloo on CPU, one GPU per rank, or a one-line error
        super().__post_init__()


def non_default(cfg: RunConfig, names: tuple[str, ...]) -> dict[str, Any]:
    """``{name: value}`` for the fields among ``names`` whose value differs from the default.

    Options added after runs were stored enter a run's identity only this way, so that
    every run made before them keeps its folder name.
    """
    defaults = {f.name: f.default for f in fields(RunConfig)}
    return {name: getattr(cfg, name) for name in names if getattr(cfg, name) != defaults[name]}


def _positive(name: str, value: Any, integer: bool = False) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) if integer else (
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value))
    if not ok or value <= 0:
        raise ValueError(f"{name} must be {'a positive integer' if integer else '> 0 and finite'}, got {value!r}")


def load_config_file(path: str | Path) -> tuple[RunConfig, NxMTrainingArguments]:
    """``(RunConfig, NxMTrainingArguments)`` from a JSON or YAML file of option names and values.

    Every value is checked against its field's type (:func:`nxmlab.study.inputs.coerce`);
    nothing is written.

    Raises:
        InputError: an unreadable file, a syntax error, a file that is not a mapping, an
            unknown option or a bad value (the message names the file, the field and the value).
    """
    from ..inputs import InputError, coerce, read_config_file

    data = read_config_file(path)
    run_names = {f.name for f in fields(RunConfig)}
    train_names = {f.name for f in fields(NxMTrainingArguments) if f.init}
    unknown = sorted(set(data) - run_names - train_names)
    if unknown:
        raise InputError(f"unknown option(s) {', '.join(unknown)} in config file {path}")
    source = f"config file {path}"
    cfg = coerce(RunConfig, {k: v for k, v in data.items() if k in run_names}, source)
    values = coerce(NxMTrainingArguments, {k: v for k, v in data.items() if k not in run_names}, source)
    try:
        args = NxMTrainingArguments(**values)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{source}: {str(exc).strip().splitlines()[0]}") from exc
    return RunConfig(**cfg), args


def _check_training(args: TrainingArguments) -> None:
    """Raise ``InputError`` for a training argument of the wrong type or out of range."""
    from ..inputs import InputError, check_training_ranges, coerce

    values = {key: getattr(args, key) for key in TRAINING_KEYS if hasattr(args, key)}
    checked = coerce(type(args), values)
    for key, value in values.items():
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if type(checked[key]) is not type(value) and not (number and isinstance(checked[key], float)):
            raise InputError(f"{key} must be {type(checked[key]).__name__}, got {value!r}")
    limits = {"weight_decay": (0.0, None), "warmup_steps": (0.0, None), "max_grad_norm": (0.0, None),
              "adam_beta1": (0.0, 1.0), "adam_beta2": (0.0, 1.0), "adam_epsilon": (0.0, None)}
    for key, (low, high) in limits.items():
        value = float(getattr(args, key))
        if value < low or (high is not None and value >= high):
            raise InputError(f"{key} must be >= {low:g}{f' and < {high:g}' if high is not None else ''}, got {value!r}")
    check_training_ranges(args)  # seeds, evaluation batch, max_steps, ...: before any file is written


#: One-shot masks the learned method's gates can start from.
MASK_PRIORS = ("magnitude", "sparsegpt")


def _check_learned(cfg: RunConfig, args: TrainingArguments) -> None:
    """Raise ``ValueError`` for a bad option of the learned method (checked for every method)."""
    if cfg.mask_prior not in MASK_PRIORS:
        raise ValueError(f"mask_prior must be one of {', '.join(MASK_PRIORS)}, got {cfg.mask_prior!r}")
    if not isinstance(cfg.freeze_weights, bool):
        raise ValueError(f"freeze_weights must be true or false, got {cfg.freeze_weights!r}")
    for name in ("learn_epochs", "mask_tau_start", "mask_tau_end", "mask_scale_start", "mask_scale_end",
                 "mask_lr_mult"):
        _positive(name, getattr(cfg, name))
    for name in ("mask_reg", "mask_prior_strength"):
        value = getattr(cfg, name)
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if get_method(cfg.method).uses("mask_reg") and cfg.mask_reg > 0 and args.fp16:
        raise ValueError("mask_reg does not support fp16 loss scaling (use bf16 or fp32, or mask_reg 0)")


def _components(spec: str) -> tuple[str, ...]:
    if spec.strip() == "all":
        return COMPONENTS
    parts = tuple(p.strip() for p in spec.split(",") if p.strip())
    unknown = [p for p in parts if p not in COMPONENTS]
    if unknown or not parts:
        raise ValueError(f"unknown component(s) {unknown or [spec]}; choose from {', '.join(COMPONENTS)} or all")
    return parts


@dataclass(frozen=True)
class RunSpec:
    """A validated run: typed fields resolved once from :class:`RunConfig` and the training arguments.

    Build it with :meth:`parse`; ``cfg`` and ``args`` are kept for the plain settings.  It is
    the :class:`~nxmlab.study.train.spec.Spec` the method registry and the phase hooks read.
    """

    cfg: RunConfig
    args: TrainingArguments
    task: GlueTask
    method: Method
    pattern: NxM
    components: tuple[str, ...]
    kd: bool
    seed: int

    @classmethod
    def parse(cls, cfg: RunConfig, args: TrainingArguments | None = None) -> RunSpec:
        """Check every field and resolve the strings; ``ValueError`` names the first bad field.

        Text values of bool and number fields are parsed strictly (:mod:`nxmlab.study.inputs`):
        ``kd="false"`` is false, ``kd="maybe"`` an error.
        """
        from ..inputs import coerce_dataclass

        cfg = coerce_dataclass(cfg)
        args = args if args is not None else NxMTrainingArguments()
        _check_training(args)
        task = get_task(cfg.task)
        method = get_method(cfg.method)
        if cfg.kd and not method.kd:
            raise ValueError(f"--kd does not apply to method {method.name!r} (it is the teacher)")
        pattern = NxM.parse(cfg.pattern)
        components = _components(cfg.components)
        validate_rho(cfg.rho)
        validate_rho(cfg.rho_factor, "rho_factor")
        if cfg.rho_max is not None:
            validate_rho(cfg.rho_max, "rho_max")
        if cfg.admm_init not in ("pretrained", "dense"):
            raise ValueError(f"admm_init must be 'pretrained' or 'dense', got {cfg.admm_init!r}")
        if cfg.mask_source not in ("pretrained", "dense"):
            raise ValueError(f"mask_source must be 'pretrained' or 'dense', got {cfg.mask_source!r}")
        if cfg.u_init not in U_INITS:
            raise ValueError(f"u_init must be one of {', '.join(U_INITS)}, got {cfg.u_init!r}")
        for name in ("penalty_before_clip", "train_only_targets", "decoupled_penalty"):
            if not isinstance(getattr(cfg, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(cfg, name)!r}")
        if cfg.decoupled_scope not in DECOUPLED_SCOPES:
            raise ValueError(f"decoupled_scope must be one of {', '.join(DECOUPLED_SCOPES)}, got {cfg.decoupled_scope!r}")
        if cfg.decoupled_scope != "all" and not cfg.decoupled_penalty:
            raise ValueError("decoupled_scope applies only with decoupled_penalty")
        if cfg.penalty_before_clip and cfg.decoupled_penalty:
            raise ValueError("penalty_before_clip and decoupled_penalty exclude each other (no penalty gradient)")
        if cfg.penalty_before_clip and args.fp16:
            raise ValueError("penalty_before_clip does not support fp16 loss scaling (use bf16 or fp32)")
        if not (isinstance(cfg.retrain_epochs, (int, float)) and not isinstance(cfg.retrain_epochs, bool)
                and math.isfinite(cfg.retrain_epochs) and cfg.retrain_epochs >= 0):
            raise ValueError(f"retrain_epochs must be > 0, or 0 for no masked retraining, got {cfg.retrain_epochs!r}")
        if cfg.admm_interval is not None and cfg.admm_updates_per_epoch is not None:
            raise ValueError("admm_interval and admm_updates_per_epoch exclude each other (both set the Z/U interval)")
        if not (isinstance(cfg.srste_lambda, (int, float)) and not isinstance(cfg.srste_lambda, bool)
                and math.isfinite(cfg.srste_lambda) and cfg.srste_lambda >= 0):
            raise ValueError(f"srste_lambda must be a finite number >= 0, got {cfg.srste_lambda!r}")
        _check_learned(cfg, args)
        for name in ("calibration_examples", "admm_interval", "admm_updates_per_epoch", "admm_steps", "train_limit", "eval_limit", "max_seq_length", "log_interval"):
            if getattr(cfg, name) is not None:
                _positive(name, getattr(cfg, name), integer=True)
        if cfg.heldout is not None and not (isinstance(cfg.heldout, float | int) and not isinstance(cfg.heldout, bool)
                                            and 0 < cfg.heldout <= 0.5):
            raise ValueError(f"heldout must be a fraction in (0, 0.5], got {cfg.heldout!r}")
        if cfg.dense_batch_size is not None:
            _positive("dense_batch_size", cfg.dense_batch_size, integer=True)
        for name in ("dense_epochs", "dense_learning_rate", "kd_temperature"):
            if getattr(cfg, name) is not None:
                _positive(name, getattr(cfg, name))
        if not 0.0 <= cfg.kd_alpha <= 1.0:
            raise ValueError(f"kd_alpha must be in [0, 1], got {cfg.kd_alpha}")
        if cfg.teacher is not None and not cfg.kd:
            raise ValueError("--teacher is only used with --kd")
        for name in ("num_train_epochs", "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps"):
            _positive(name, getattr(args, name))
        return cls(cfg, args, task, method, pattern, components, bool(cfg.kd), int(args.seed))

    # --- identity -----------------------------------------------------------------------
    @property
    def label(self) -> str:
        """The table row: the method, with ``+kd`` when the run distils."""
        return method_label(self.method.name, self.kd)

    def epochs(self, field_name: str) -> float:
        """A phase length by config field: ``num_train_epochs`` (args) or ``retrain_epochs`` (cfg)."""
        return float(getattr(self.args if field_name in TRAINING_KEYS else self.cfg, field_name))

    @property
    def dense_epochs(self) -> float:
        """Epochs of the dense start/teacher run (``--dense_epochs``, else this run's epochs)."""
        return float(self.cfg.dense_epochs or self.args.num_train_epochs)

    def canonical(self) -> dict[str, Any]:
        """The run's identity: every field that changes its results, and no other."""
        cfg, args = self.cfg, self.args
        training = {key: getattr(args, key, None) for key in TRAINING_KEYS}
        training["num_train_epochs"] = float(args.num_train_epochs)  # 3 and 3.0 are one run
        for key in ("lr_scheduler_type", "optim", "train_sampling_strategy"):  # enums as their values
            training[key] = str(getattr(training[key], "value", training[key]))
        world = launched_world_size()
        if world > 1:  # DDP (torchrun): another global batch; single-process runs keep their hash
            training.update(world_size=world, global_batch=world * args.per_device_train_batch_size
                            * args.gradient_accumulation_steps)
        config: dict[str, Any] = {
            "store_version": STORE_VERSION, "task": self.task.name, "method": self.method.name, "model": cfg.model,
            "max_seq_length": cfg.max_seq_length, "train_limit": cfg.train_limit, "eval_limit": cfg.eval_limit,
            "training": training,
        }
        if self.method.sparse:
            config.update(kd=self.kd, pattern=str(self.pattern), components=list(self.components))
            if self.method.needs_dense(self):
                config["dense_epochs"] = self.dense_epochs
                config.update(non_default(cfg, ("dense_batch_size", "dense_learning_rate")))
        if self.kd:
            config.update(kd_temperature=cfg.kd_temperature, kd_alpha=cfg.kd_alpha)
            if cfg.teacher is not None:
                config["teacher"] = str(Path(cfg.teacher).resolve())
        for option in self.method.options:
            value = getattr(cfg, option)
            config[option] = float(value) if option.endswith("_epochs") else value
        config.update(non_default(cfg, self.method.optional))
        config.update(non_default(cfg, ("heldout",)))  # selection runs: another training set and score
        return config

    def folder(self) -> RunFolder:
        """``<results>/<task>/<label>[-<n>x<m>][-rho<r>]-<model>-seed<S>[-heldout]-<hash>``."""
        parts = [self.label]
        if self.method.sparse:
            parts.append(str(self.pattern).replace(":", "x"))
        if "rho" in self.method.options:
            parts.append(f"rho{self.cfg.rho:g}")
        model = Path(self.cfg.model.rstrip("/")).name.replace(".", "_") or "model"
        parts += [model, f"seed{self.seed}"]
        if self.cfg.heldout is not None:  # a selection run: scored on held-out training examples
            parts.append("heldout")
        parts.append(config_hash(self.canonical()))
        return RunFolder(self.cfg.results_dir, self.task.name, "-".join(parts))

    def dense(self) -> RunSpec:
        """The dense run this run starts from or distils from (same task, model, seed)."""
        import copy
        import dataclasses

        cfg = dataclasses.replace(self.cfg, method="dense", kd=False, overwrite=False, teacher=None)
        args = copy.deepcopy(self.args)
        args.num_train_epochs = self.dense_epochs
        if cfg.dense_batch_size is not None:
            args.per_device_train_batch_size = cfg.dense_batch_size
        if cfg.dense_learning_rate is not None:
            args.learning_rate = cfg.dense_learning_rate
        return RunSpec.parse(cfg, args)
