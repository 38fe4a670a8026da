"""Study presets: which model, tasks, seeds, methods and rho grid the notebooks run.

A :class:`Preset` fixes everything the study notebooks train; :func:`preset_runs` turns
it into the parsed :class:`~nxmlab.study.config.RunSpec` runs handed to
:func:`nxmlab.study.recipe.run_experiment` (finished runs are reused from the results store).

Studies (``preset_runs(..., study=...)``):

``table``     every method label on every task and seed (the GLUE table), plus the dense
              run whenever a sparse method needs it (teacher / start of ASP).
``rho``       ``admm`` over ``rho_grid`` on ``rho_tasks`` (every seed).  The run at
              ``rho`` (1e-3) is the same run as the table's ``admm`` one.
``dynamics``  the table's ADMM runs (``admm`` and ``admm+kd`` at the default rho).

Presets: ``smoke`` (seconds, the tiny random model), ``quick`` (MiniLM-L6, about 1 h 40 min
on 2 CPU cores), ``cpu`` (MiniLM-L6, five tasks, three seeds, many hours), ``paper``
(BERT-base on the eight GLUE tasks, needs the Hub and GPUs).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..nxm import NxM
from .data import get_task
from .methods import LABELS, parse_label

__all__ = [
    "PRESETS",
    "STUDIES",
    "study_keys",
    "Preset",
    "get_preset",
    "parse_label",
    "make_run",
    "preset_runs",
    "resolve_preset",
    "row_labels",
    "membership",
]

#: Run lists a preset expands into (see the module docstring).
STUDIES: tuple[str, ...] = ("table", "rho", "dynamics", "convergence", "tuning", "patterns", "selection")

#: The ADMM variants of the convergence study (issue #12): option overrides against the
#: preset's ADMM setting (``default``): the paper's setting, the setting quick used first
#: (``5-per-epoch``) and variants of that one that change one factor each.  Keys are
#: RunConfig or training-argument fields; ``None`` restores the field's default.
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "paper": {"decoupled_penalty": False, "decoupled_scope": None, "rho": 1e-3, "rho_factor": 1.0, "rho_max": None,
              "admm_updates_per_epoch": None},
    "5-per-epoch": {"admm_updates_per_epoch": 5},
    "pull-all": {"decoupled_scope": None, "admm_updates_per_epoch": 5},
    "u-residual": {"u_init": "residual", "admm_updates_per_epoch": 5},
    "coupled-rising": {"decoupled_penalty": False, "decoupled_scope": None, "rho": 1e-3, "rho_factor": 2.0,
                       "rho_max": None, "admm_updates_per_epoch": 5},
    "rising": {"rho": 250.0, "rho_factor": 1.25, "admm_updates_per_epoch": 5},
    "short-phase": {"num_train_epochs": 1.0, "admm_updates_per_epoch": 5},
}


def _tuple(value: Any, kind: type) -> tuple:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        value = [value] if not isinstance(value, str) else [v.strip() for v in value.split(",") if v.strip()]
    return tuple(kind(v) for v in value)


def _items(options: Any) -> tuple[tuple[str, Any], ...]:
    """Options (a mapping or ``(field, value)`` pairs) as sorted, hashable pairs."""
    return tuple(sorted(dict(options).items()))


def _option_fields() -> set[str]:
    from .config import NxMTrainingArguments, RunConfig

    return {f.name for f in dataclasses.fields(RunConfig)} | {f.name for f in dataclasses.fields(NxMTrainingArguments)}


@dataclass(frozen=True)
class Preset:
    """One study configuration (every field can be overridden, see :meth:`replace`).

    ``epochs`` is the main phase (dense fine-tuning, fine-tuning with a fixed magnitude
    mask, or ADMM); ``retrain_epochs`` is ADMM's fine-tuning after the hard prune.
    """

    name: str
    model: str
    tasks: tuple[str, ...]
    seeds: tuple[int, ...]
    methods: tuple[str, ...]
    pattern: str = "4:2"
    epochs: float = 3.0
    retrain_epochs: float = 2.0
    learning_rate: float = 5e-5
    batch_size: int = 32
    rho: float = 1e-3
    rho_grid: tuple[float, ...] = (1e-4, 1e-3, 1e-2)
    rho_tasks: tuple[str, ...] = ("rte",)
    train_limit: int | None = None
    eval_limit: int | None = None
    save_steps: int = 50
    log_interval: int = 50
    logging_steps: int = 50
    max_seq_length: int = 128
    budget: float | None = None
    options: tuple[tuple[str, Any], ...] = ()
    convergence: tuple[tuple[str, tuple[str, ...]], ...] = ()
    dense_grid: tuple[tuple[float, float], ...] = ()
    tuning_tasks: tuple[str, ...] = ()
    tuning_seeds: tuple[int, ...] = ()
    patterns: tuple[str, ...] = ()
    pattern_methods: tuple[str, ...] = ()
    pattern_tasks: tuple[str, ...] = ()
    notebooks: tuple[str, ...] = ()
    one_seed: tuple[str, ...] = ()
    task_options: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    average_tasks: tuple[str, ...] = ()
    rows: tuple[tuple[str, tuple[str, tuple[tuple[str, Any], ...]]], ...] = ()
    heldout: float | None = None
    selection_seed: int | None = None
    selection: tuple[tuple[str, tuple[tuple[tuple[str, Any], ...], ...]], ...] = ()
    chosen: tuple[tuple[str, tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]], ...] = ()
    kd_last: bool = False
    must_converge: tuple[str, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        from .inputs import coerce

        # bool and number fields typed strictly (papermill parameters may be text)
        values = coerce(type(self), {f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
                        source=f"preset {self.name!r}")
        for name, value in values.items():
            object.__setattr__(self, name, value)
        # accept lists (papermill parameters, CLI) and keep the dataclass hashable
        for name, kind in (("tasks", str), ("seeds", int), ("methods", str), ("rho_grid", float), ("rho_tasks", str),
                           ("tuning_tasks", str), ("tuning_seeds", int), ("notebooks", str), ("patterns", str),
                           ("pattern_methods", str), ("pattern_tasks", str), ("one_seed", str),
                           ("average_tasks", str), ("must_converge", str)):
            object.__setattr__(self, name, _tuple(getattr(self, name), kind))
        options = dict(self.options)
        object.__setattr__(self, "options", tuple(sorted(options.items())))
        object.__setattr__(self, "dense_grid", tuple((float(lr), float(ep)) for lr, ep in self.dense_grid))
        object.__setattr__(self, "task_options", tuple(sorted(
            (task, tuple(sorted(dict(opts).items()))) for task, opts in dict(self.task_options).items())))
        convergence = dict(self.convergence)
        object.__setattr__(self, "convergence", tuple((v, _tuple(t, str)) for v, t in convergence.items()))
        object.__setattr__(self, "rows", tuple(sorted(
            (row, (base, _items(opts))) for row, (base, opts) in dict(self.rows).items())))
        object.__setattr__(self, "selection", tuple(
            (label, tuple(_items(point) for point in grid)) for label, grid in dict(self.selection).items()))
        object.__setattr__(self, "chosen", tuple(sorted(
            (task, tuple(sorted((label, _items(opts)) for label, opts in dict(per_label).items())))
            for task, per_label in dict(self.chosen).items())))
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        if not self.tasks or not self.seeds or not self.methods:
            raise ValueError(f"preset {self.name!r} needs at least one task, seed and method")
        for task in (*self.tasks, *self.rho_tasks):
            get_task(task)
        rows = dict(self.rows)
        for row, (base, _) in rows.items():
            if row in LABELS():
                raise ValueError(f"row {row!r} of preset {self.name!r} shadows a method label")
            parse_label(base)
        for label in self.methods:
            if label not in rows:
                parse_label(label)
        for label, grid in self.selection:  # a label the preset does not run (an override) is ignored
            if not grid:
                raise ValueError(f"selection names {label!r} with an empty grid")
            if parse_label(self.row(label)[0])[1]:
                raise ValueError(f"selection names {label!r}: the KD label uses the choice of its method")
        if self.selection and (self.heldout is None or self.selection_seed is None):
            raise ValueError(f"preset {self.name!r} has a selection grid but no heldout fraction or selection_seed")
        if self.selection_seed is not None and self.selection_seed in self.seeds:
            raise ValueError(f"selection_seed {self.selection_seed} is one of the reported seeds {self.seeds}")
        for task, per_label in self.chosen:
            get_task(task)
            for label, _ in per_label:
                if label not in dict(self.selection):
                    raise ValueError(f"chosen names {label!r} on {task}, which has no selection grid")
        for name in ("epochs", "retrain_epochs", "learning_rate", "rho"):
            value = getattr(self, name)
            low_ok = value >= 0 if name == "retrain_epochs" else value > 0  # 0 retrain epochs: prune by Proj(W), end
            if not (isinstance(value, (int, float)) and math.isfinite(value) and low_ok):
                raise ValueError(f"{name} must be > 0{' (or 0)' if name == 'retrain_epochs' else ''}, got {value!r}")
        if any(not (math.isfinite(r) and r > 0) for r in self.rho_grid):
            raise ValueError(f"rho_grid values must be > 0, got {self.rho_grid}")
        for name in ("batch_size", "save_steps", "log_interval", "logging_steps", "max_seq_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.budget is not None and not (isinstance(self.budget, (int, float)) and math.isfinite(self.budget)
                                            and self.budget > 0):
            raise ValueError(f"budget must be > 0 passes, got {self.budget!r}")
        known = _option_fields()
        named = (set(dict(self.options)) | {k for _, o in self.task_options for k, _ in o}
                 | {k for _, (_, o) in self.rows for k, _ in o} | {k for _, g in self.selection for p in g for k, _ in p}
                 | {k for _, per in self.chosen for _, o in per for k, _ in o})
        unknown = sorted(named - known)
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(unknown)} in preset {self.name!r}")
        for variant, tasks in self.convergence:
            if variant not in VARIANTS:
                raise ValueError(f"unknown convergence variant {variant!r}; choose from {', '.join(VARIANTS)}")
            for task in tasks:
                get_task(task)
        for task in (*self.tuning_tasks, *self.pattern_tasks, *dict(self.task_options), *self.average_tasks):
            get_task(task)
        for label in self.one_seed:
            if label not in self.methods:
                raise ValueError(f"one_seed names {label!r}, which is not one of the preset's methods")
        for label in self.pattern_methods:
            if not parse_label(label)[0].sparse:
                raise ValueError(f"pattern_methods must be sparse methods, got {label!r}")
        from ..nxm import NxM

        for pattern in self.patterns:
            NxM.parse(pattern)
        for lr, epochs in self.dense_grid:
            if not (math.isfinite(lr) and lr > 0 and math.isfinite(epochs) and epochs > 0):
                raise ValueError(f"dense_grid entries are (learning rate > 0, epochs > 0), got {(lr, epochs)}")

    def replace(self, **overrides: Any) -> Preset:
        """A copy with the given fields changed; ``None`` values are ignored (= keep)."""
        fields = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(f"unknown preset field(s) {', '.join(unknown)}; fields: {', '.join(sorted(fields))}")
        changes = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(self, **changes) if changes else self

    @property
    def labels(self) -> tuple[str, ...]:
        """Method labels in table order."""
        from .frames import label_order

        return tuple(label_order(self.methods))

    def row(self, label: str) -> tuple[str, dict[str, Any]]:
        """``(method label, options)`` of a table row: a named row of ``rows`` (a method label
        with its own options, e.g. nxmlab's ADMM beside the authors'), else ``(label, {})``."""
        rows = dict(self.rows)
        if label in rows:
            base, options = rows[label]
            return base, dict(options)
        return label, {}

    def pending(self, task: str, label: str) -> bool:
        """``label`` has a selection grid but no choice recorded for ``task`` yet: its table
        runs wait for the selection study (they are left out of the ``table`` study)."""
        base = label.removesuffix("+kd")
        return base in dict(self.selection) and base not in dict(dict(self.chosen).get(task, ()))

    def choice(self, task: str, label: str) -> dict[str, Any]:
        """The options chosen for ``label`` on ``task`` by the selection study (``{}`` when none
        is recorded); a ``+kd`` label uses its method's choice."""
        base = label.removesuffix("+kd")
        return dict(dict(dict(self.chosen).get(task, ())).get(base, ()))


#: quick's ADMM setting, chosen by the convergence study (docs/convergence.md).
QUICK_ADMM = {"decoupled_penalty": True, "decoupled_scope": "pruned"}

#: The authors' protocol as nxmlab options (the table of docs/fidelity.md): ADMM and ASP start
#: from a 5-epoch dense run at batch 32, train only the target Linears, weight decay 0, no
#: warm-up; ADMM's coupled penalty enters before clipping, U0 = W0 - Proj(W0), one Z/U update
#: per epoch, and the run ends with the prune by Proj(W) (retrain_epochs 0).
PROTOCOL = {"admm_init": "dense", "dense_epochs": 5.0, "dense_batch_size": 32, "u_init": "residual",
            "penalty_before_clip": True, "train_only_targets": True, "weight_decay": 0.0, "warmup_steps": 0}
#: The dense start's learning rate per task: the `cpu` tuning sweep's choice (issue #28 asks for
#: "the task's tuned learning rate"; that sweep selected on validation, seeds 42-43).
PROTOCOL_DENSE_LR = {"cola": {"dense_learning_rate": 5e-5}, "mrpc": {"dense_learning_rate": 5e-5},
                     "stsb": {"dense_learning_rate": 1e-4}}
#: nxmlab's ADMM in the protocol (beyond the paper): the decoupled penalty on the positions Z
#: prunes, starting weak (rho 10: about 10 % of a pruned weight's pull in the first epoch on
#: MRPC at lr 5e-5, so the first Z/U update still sees the task's gradients) and doubling at
#: every update, so that the last epochs pull the pruned weights onto the 4:2 set.
NXMLAB_ADMM = {"decoupled_penalty": True, "decoupled_scope": "pruned", "penalty_before_clip": False,
               "u_init": "zero", "rho": 10.0, "rho_factor": 2.0}
#: The selection grid of the protocol (issue #28): every point on the held-out split, seed 42.
PROTOCOL_GRID = {
    "magnitude": [{"learning_rate": lr} for lr in (5e-5, 1e-4)],
    "admm": [{"learning_rate": lr, "rho": rho} for lr in (5e-5, 1e-4) for rho in (1e-3, 1e-2)],
    "nxmlab-admm": [{"learning_rate": lr} for lr in (5e-5, 1e-4)],
}

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="smoke", model="tiny", tasks=("rte", "stsb"), seeds=(42,),
            methods=("dense", "magnitude", "magnitude+kd", "admm", "admm+kd", "unstructured"),
            epochs=1, retrain_epochs=1, learning_rate=1e-3, batch_size=8,
            rho_grid=(1e-4, 1e-3, 1e-2), rho_tasks=("rte",), train_limit=32, eval_limit=16,
            save_steps=1000, log_interval=1, logging_steps=1000,
            convergence={"default": ("rte",), "u-residual": ("rte",)},
            patterns=("4:2", "8:2"), pattern_methods=("magnitude", "unstructured"), pattern_tasks=("rte",),
            dense_grid=[(5e-4, 1.0), (2e-3, 1.0)], tuning_tasks=("rte",), tuning_seeds=(42,),
            heldout=0.25, selection_seed=7, selection={"magnitude": [{"learning_rate": 1e-3}, {"learning_rate": 3e-3}]},
            chosen={"rte": {"magnitude": {"learning_rate": 1e-3}}, "stsb": {"magnitude": {"learning_rate": 1e-3}}},
            description="Plumbing check: the random 2-layer 'tiny' BERT on 32 training / 16 validation "
                        "examples; seconds per notebook, scores are meaningless.",
        ),
        Preset(
            name="quick", model="minilm-l6", tasks=("mrpc", "stsb"), seeds=(42,),
            methods=("dense", "magnitude", "admm"),
            epochs=2, retrain_epochs=1, learning_rate=5e-5, batch_size=32, budget=3,
            rho=1000.0, options=QUICK_ADMM, rho_grid=(), rho_tasks=(), save_steps=50, log_interval=10,
            notebooks=("glue_table", "sparsity_dynamics", "mask_distance"),
            description="MiniLM-L6 (offline) on MRPC and STS-B, one seed, a matched budget of 3 passes over the "
                        "training set per sparse run (dense 2 epochs; magnitude: dense + 1 masked epoch; ADMM: 2 "
                        "epochs with the decoupled penalty on the pruned positions, rho 1000, one Z/U update per epoch, + 1 "
                        "retrain epoch).",
        ),
        Preset(
            name="baselines", model="minilm-l6", tasks=("mrpc", "stsb", "rte"), seeds=(42,),
            methods=("dense", "magnitude", "admm", "sr-ste", "wanda", "sparsegpt", "unstructured"),
            epochs=2, retrain_epochs=1, learning_rate=5e-5, batch_size=32, budget=3,
            rho=1000.0, options=QUICK_ADMM, rho_grid=(), rho_tasks=(), save_steps=50, log_interval=10,
            patterns=("4:2", "4:1", "8:4", "8:2"), pattern_methods=("magnitude", "admm", "sr-ste", "unstructured"),
            pattern_tasks=("mrpc", "stsb"),
            notebooks=("glue_table", "nm_sweep"),
            description="The baselines of issue #13 beside quick's ADMM, at quick's matched budget of 3 passes: "
                        "SR-STE, Wanda, SparseGPT and unstructured magnitude on MRPC, STS-B and RTE (seed 42), and "
                        "the n:m sweep (4:2, 4:1, 8:4, 8:2) of magnitude, ADMM, SR-STE and unstructured magnitude "
                        "at the same density on MRPC and STS-B.",
        ),
        Preset(
            name="convergence", model="minilm-l6", tasks=("mrpc", "stsb", "rte"), seeds=(42,), methods=("admm",),
            epochs=2, retrain_epochs=1, learning_rate=5e-5, batch_size=32, budget=3,
            rho=1000.0, options=QUICK_ADMM, rho_grid=(300.0, 1000.0, 3000.0), rho_tasks=("mrpc",),
            save_steps=50, log_interval=10,
            convergence={"paper": ("mrpc", "stsb", "rte"), "default": ("mrpc", "stsb", "rte"),
                         "5-per-epoch": ("mrpc", "stsb", "rte"), "pull-all": ("mrpc", "stsb", "rte"),
                         "u-residual": ("mrpc",), "coupled-rising": ("mrpc",), "rising": ("mrpc",),
                         "short-phase": ("mrpc",)},
            notebooks=("convergence", "rho_analysis"),
            description="The ADMM convergence study of quick's setting (issue #12): the paper's setting and quick's "
                        "on MRPC, STS-B and RTE, one-factor variants and a rho sweep on MRPC, at quick's budget "
                        "(its default runs are quick's ADMM runs).",
        ),
        Preset(
            name="cpu", model="minilm-l6", tasks=("cola", "mrpc", "stsb", "rte"), seeds=(42, 43, 44),
            methods=("dense", "magnitude", "magnitude+kd", "admm", "admm+kd", "sr-ste", "sr-ste+kd", "wanda",
                     "sparsegpt", "unstructured"),
            epochs=2, retrain_epochs=1, learning_rate=5e-5, batch_size=32, budget=3,
            rho=1000.0, options=QUICK_ADMM, rho_grid=(), rho_tasks=(), save_steps=50, log_interval=10,
            dense_grid=[(lr, ep) for ep in (3.0, 6.0) for lr in (2e-5, 5e-5, 1e-4)],
            tuning_tasks=("mrpc", "stsb", "rte", "cola"), tuning_seeds=(42, 43),
            # the learning rate tuning.choose_dense picks per task from the finished dense grid
            # (2 seeds; selection on validation), used by every method of the task
            task_options={"cola": {"learning_rate": 5e-5}, "mrpc": {"learning_rate": 5e-5},
                          "stsb": {"learning_rate": 1e-4}, "rte": {"learning_rate": 5e-5}},
            # no dense setting takes RTE to 60 (tuning sweep): RTE is reported apart from the average
            average_tasks=("cola", "mrpc", "stsb"),
            notebooks=("glue_table", "dense_tuning", "sparsity_dynamics", "mask_distance"),
            description="The powered study (issues #14, #29): MiniLM-L6 on CoLA, MRPC, STS-B and RTE, seeds 42-44, "
                        "every method at quick's matched budget of 3 passes and its ADMM setting, ADMM, ASP and "
                        "SR-STE with and without KD; paired bootstrap intervals over seeds and examples. "
                        "Its dense grid (tuning study) picked each task's learning rate (task_options).",
        ),
        Preset(
            name="protocol", model="minilm-l6", tasks=("cola", "mrpc", "stsb"), seeds=(43, 44, 45),
            methods=("dense", "magnitude", "magnitude+kd", "admm", "admm+kd", "nxmlab-admm"),
            epochs=10, retrain_epochs=0, learning_rate=5e-5, batch_size=16, rho=1e-3,
            rho_grid=(), rho_tasks=(), options=PROTOCOL, task_options=PROTOCOL_DENSE_LR, rows={"nxmlab-admm": ("admm", NXMLAB_ADMM)},
            heldout=0.1, selection_seed=42, selection=PROTOCOL_GRID, must_converge=("nxmlab-admm",), kd_last=True,
            save_steps=100, log_interval=25, logging_steps=50,
            notebooks=("glue_table", "protocol"),
            description="The authors' protocol on MiniLM-L6 (issue #28): per task and seed one dense start (5 "
                        "epochs at batch 32, the task's tuned learning rate, weight decay 0, no warm-up), then 10 "
                        "epochs at batch 16 with only the target Linears training: ADMM in the authors' setting "
                        "(coupled penalty before clipping, U0 residual, prune by Proj(W), no retraining), ASP "
                        "(the dense model's magnitude mask, masked fine-tuning), both with KD from the dense "
                        "start, and nxmlab's ADMM (decoupled penalty on the pruned positions, rho 10 doubling at "
                        "each Z/U update; beyond the paper).  Learning rates and rho chosen on a 10 % held-out "
                        "split of the training set with seed 42 (study 'selection'); reported on seeds 43-45.",
        ),
        Preset(
            name="paper", model="bert-base", tasks=("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte"),
            seeds=(42,), methods=("dense", "magnitude", "admm", "magnitude+kd", "admm+kd"),
            epochs=10, retrain_epochs=0, learning_rate=5e-5, batch_size=16, rho=1e-3,
            options={"admm_init": "dense", "dense_epochs": 5.0, "u_init": "residual", "penalty_before_clip": True,
                     "train_only_targets": True, "weight_decay": 0.0, "warmup_steps": 0},
            rho_grid=(1e-3, 4e-3, 1e-2), rho_tasks=("rte", "mrpc"), save_steps=500, log_interval=100,
            logging_steps=100,
            description="The authors' code (pkulium/modelpruning-devNxM, commit dffb3e9): bert-base-uncased (Hub) "
                        "fine-tuned dense for 5 epochs, then 10 epochs of ADMM from it at batch 16, lr 5e-5 (their "
                        "grid: 5e-5, 7e-5, 1e-4), weight decay 0, no warm-up, rho 1e-3 constant (grid 1e-3, 4e-3, "
                        "1e-2), one Z/U update per epoch, U0 = W0 - Proj(W0), the penalty before gradient clipping, "
                        "only the target Linear layers training, and the prune by Proj(W) with no retraining. "
                        "Needs the Hub (QQP and the MNLI/QNLI training sets are not in the offline mirror) and GPUs.",
        ),
    )
}


def get_preset(name: str | Preset) -> Preset:
    """The preset called ``name`` (a :class:`Preset` is returned as is)."""
    if isinstance(name, Preset):
        return name
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]


def resolve_preset(name: str | Preset, **overrides: Any) -> Preset:
    """:func:`get_preset` then :meth:`Preset.replace` (``None`` overrides keep the preset's value)."""
    return get_preset(name).replace(**overrides)


def make_run(preset: Preset, task: str, label: str, seed: int, results_dir: str = "results",
             glue_dir: str | None = None, rho: float | None = None,
             variant: str | tuple[tuple[str, Any], ...] | None = None):
    """The parsed :class:`~nxmlab.study.config.RunSpec` of one run of ``preset``.

    The preset's ``options`` apply first, then its ``task_options`` for ``task`` (e.g. a
    tuned learning rate), then the ``variant``'s overrides (a name in
    :data:`VARIANTS`, or ``(field, value)`` pairs as the tuning study's grid points),
    (:data:`VARIANTS`), then ``rho``.  With a ``budget``, the method's last phase gets the
    epochs that make the run pay exactly ``budget`` passes over the training set
    (:meth:`~nxmlab.study.methods.Method.match_budget`).
    """
    from .config import NxMTrainingArguments, RunConfig, RunSpec

    base, row_options = preset.row(label)
    method, kd = parse_label(base)
    extra = VARIANTS[variant] if isinstance(variant, str) else dict(variant or ())
    chosen = {} if "heldout" in extra else preset.choice(task, label)  # a selection run is a grid point
    overrides = {**dict(preset.options), **dict(dict(preset.task_options).get(task, ())), **row_options, **chosen,
                 **extra}
    if rho is not None:
        overrides["rho"] = float(rho)
    cfg_fields = {f.name: f.default for f in dataclasses.fields(RunConfig)}
    cfg_overrides = {k: (cfg_fields[k] if v is None else v) for k, v in overrides.items() if k in cfg_fields}
    cfg = RunConfig(
        task=task, method=method.name, kd=kd, model=preset.model, pattern=preset.pattern,
        rho=preset.rho, retrain_epochs=float(preset.retrain_epochs),
        max_seq_length=preset.max_seq_length, train_limit=preset.train_limit, eval_limit=preset.eval_limit,
        glue_dir=None if glue_dir is None else str(glue_dir), results_dir=str(results_dir),
        log_interval=preset.log_interval,
    )
    cfg = dataclasses.replace(cfg, **cfg_overrides)
    arg_defaults = {f.name: f.default for f in dataclasses.fields(NxMTrainingArguments)}
    arg_overrides = {k: (arg_defaults[k] if v is None else v) for k, v in overrides.items() if k not in cfg_fields}
    args = NxMTrainingArguments(**{
        "num_train_epochs": float(preset.epochs), "per_device_train_batch_size": preset.batch_size,
        "learning_rate": preset.learning_rate, "seed": seed, "save_steps": preset.save_steps,
        "logging_steps": preset.logging_steps, "disable_tqdm": True, "report_to": "none", **arg_overrides,
    })
    if preset.budget is not None and method.sparse and cfg.dense_epochs is None:
        cfg = dataclasses.replace(cfg, dense_epochs=float(preset.epochs))  # the dense run keeps its length
    if not method.sparse:  # the options' dense_* settings are the dense run's own (RunSpec.dense)
        if cfg.dense_epochs is not None:
            args.num_train_epochs = float(cfg.dense_epochs)
        if cfg.dense_batch_size is not None:
            args.per_device_train_batch_size = int(cfg.dense_batch_size)
        if cfg.dense_learning_rate is not None:
            args.learning_rate = float(cfg.dense_learning_rate)
    spec = RunSpec.parse(cfg, args)
    if preset.budget is not None and method.sparse:
        field, epochs = method.match_budget(spec, preset.budget)
        if hasattr(args, field) and field not in cfg_fields:
            setattr(args, field, epochs)
        else:
            cfg = dataclasses.replace(cfg, **{field: epochs})
        spec = RunSpec.parse(cfg, args)
    return spec


def _with_dense(preset: Preset, task: str, seed: int, labels: list[str]) -> list[str]:
    """``labels`` with ``dense`` first when one of them needs the dense run."""
    specs = [make_run(preset, task, label, seed) for label in labels]  # the identity needs no store
    if "dense" not in labels and any(spec.method.needs_dense(spec) for spec in specs):
        labels = ["dense", *labels]
    return labels


def study_keys(preset: str | Preset, study: str | Sequence[str] = "table"
               ) -> list[tuple[str, str, int, float | None, str | None]]:
    """``(task, label, seed, rho, variant)`` of every run one study (or several) needs, in training order.

    * ``table``: every label of the preset (the labels of ``one_seed`` on the first seed only);
    * ``rho``: the labels whose method has a ``rho`` option, without KD, over ``rho_grid``
      on ``rho_tasks``;
    * ``dynamics``: the labels whose method records training dynamics (has phase hooks);
    * ``convergence``: the same labels without KD, once per ``(variant, tasks)`` of the
      preset's ``convergence`` grid (:data:`VARIANTS`).

    * ``patterns``: every label of ``pattern_methods`` at every n:m of ``patterns`` on
      ``pattern_tasks`` (the preset's seeds; ``variant`` holds the pattern), after the
      dense runs they need; a method whose mask is not n:m (``unstructured``) runs once
      per density, at the first pattern of that density;
    * ``tuning``: ``dense`` at every ``(learning_rate, epochs)`` of ``dense_grid`` on
      ``tuning_tasks`` and ``tuning_seeds`` (``variant`` holds the grid point).

    ``rho`` is set for the rho sweep's runs and ``variant`` for the convergence and tuning studies'
    (both ``None`` elsewhere); a dense run comes before the sparse runs that need it.
    Duplicates are kept: :func:`preset_runs` merges runs with identical configurations.
    """
    preset = get_preset(preset)
    studies = STUDIES if study == "all" else ((study,) if isinstance(study, str) else tuple(study))
    for name in studies:
        if name not in STUDIES:
            raise ValueError(f"unknown study {name!r}; choose from {', '.join(STUDIES)} or all")
    wanted: list[tuple[str, str, int, float | None, str | None]] = []
    for name in studies:
        if name == "rho":
            swept = [lb for lb in preset.labels if lb == preset.row(lb)[0]
                     and "rho" in parse_label(lb)[0].options and not parse_label(lb)[1]]
            wanted += [(task, label, seed, rho, None) for task in preset.rho_tasks for seed in preset.seeds
                       for label in swept for rho in sorted(preset.rho_grid)]
            continue
        if name == "patterns":
            for task in preset.pattern_tasks:
                for seed in preset.seeds:
                    labels = _with_dense(preset, task, seed, list(preset.pattern_methods))
                    for label in labels:
                        structured = label == "dense" or parse_label(label)[0].rule.structured
                        densities = set()
                        for pattern in preset.patterns:
                            # dense runs once; an unstructured rule runs once per density
                            key = pattern if structured else NxM.parse(pattern).density
                            if (label == "dense" and densities) or key in densities:
                                continue
                            densities.add(key)
                            wanted.append((task, label, seed, None,
                                           None if label == "dense" else (("pattern", pattern),)))
            continue
        if name == "selection":
            # per task: the held-out dense start, then every grid point of every selected label
            heldout = (("heldout", preset.heldout),)
            for task in preset.tasks if preset.selection else ():
                wanted.append((task, "dense", preset.selection_seed, None, heldout))
                wanted += [(task, label, preset.selection_seed, None, point + heldout)
                           for label, grid in preset.selection if label in preset.methods for point in grid]
            continue
        if name == "tuning":
            wanted += [(task, "dense", seed, None, (("learning_rate", lr), ("num_train_epochs", epochs)))
                       for task in preset.tuning_tasks for lr, epochs in preset.dense_grid
                       for seed in preset.tuning_seeds]
            continue
        if name == "convergence":
            labels = [lb for lb in preset.labels if lb == preset.row(lb)[0]
                      and parse_label(lb)[0].records_dynamics and not parse_label(lb)[1]]
            wanted += [(task, label, seed, None, variant) for variant, tasks in preset.convergence
                       for task in tasks for seed in preset.seeds for label in labels]
            continue
        table = []
        for task in preset.tasks:
            for seed in preset.seeds:
                labels = [lb for lb in preset.labels if (lb not in preset.one_seed or seed == preset.seeds[0])
                          and not preset.pending(task, lb)]
                if name == "dynamics":
                    labels = [lb for lb in labels if parse_label(preset.row(lb)[0])[0].records_dynamics]
                table += [(task, label, seed, None, None) for label in _with_dense(preset, task, seed, labels)]
        if preset.kd_last:  # seed by seed, and every KD run after every run without KD
            tasks = list(preset.tasks)
            table.sort(key=lambda k: (k[1].endswith("+kd"), k[2], tasks.index(k[0])))
        wanted += table
    return wanted


def preset_runs(preset: str | Preset, study: str | Sequence[str] = "table", results_dir: str = "results",
                glue_dir: str | None = None) -> list:
    """The runs of one study (or several, deduplicated), in training order.

    Args:
        preset: A :class:`Preset` or its name.
        study: ``"table"``, ``"rho"``, ``"dynamics"``, ``"convergence"``, a list of them, or ``"all"``.
        results_dir: Results store root written into each run.
        glue_dir: GLUE mirror (``None``: ``$NXMLAB_GLUE_DIR``, else the Hub).

    Returns:
        Parsed :class:`~nxmlab.study.config.RunSpec` runs; a dense run comes before the
        sparse runs that need it, and a run shared by two studies appears once.
    """
    preset = get_preset(preset)
    runs, seen = [], set()
    for task, label, seed, rho, variant in study_keys(preset, study):
        spec = make_run(preset, task, label, seed, results_dir, glue_dir, rho, variant)
        key = spec.folder().path
        if key not in seen:
            seen.add(key)
            runs.append(spec)
    return runs


def row_labels(preset: str | Preset, study: str | Sequence[str] = "table", results_dir: str = "results",
               glue_dir: str | None = None) -> dict[str, str]:
    """``{run folder (relative to the store): table row}`` for the runs of a study whose row
    is a named row of the preset (``rows``, e.g. ``nxmlab-admm``), not its method label."""
    preset = get_preset(preset)
    named = dict(preset.rows)
    out = {}
    for task, label, seed, rho, variant in study_keys(preset, study):
        if label in named:
            spec = make_run(preset, task, label, seed, results_dir, glue_dir, rho=rho, variant=variant)
            out[spec.folder().rel] = label
    return out


def membership(results_dir: str = "results", models: Iterable[str] | None = None
               ) -> dict[str, tuple[list[str], str | None]]:
    """``{run folder: (["preset:study", ...], row label or None)}`` over every preset (of
    ``models``, default all) and study: which studies list a stored run (``nxmlab table
    --csv`` prints it beside each run)."""
    out: dict[str, tuple[list[str], str | None]] = {}
    wanted = None if models is None else set(models)
    for name, preset in PRESETS.items():
        if wanted is not None and preset.model not in wanted:
            continue
        studies = [s for s in STUDIES if study_keys(preset, s)]
        for study in studies:
            rows = row_labels(preset, study, results_dir)
            for spec in preset_runs(preset, study, results_dir):
                rel = spec.folder().rel
                where, row = out.setdefault(rel, ([], None))
                where.append(f"{name}:{study}")
                if rel in rows:
                    out[rel] = (where, rows[rel])
    return out
