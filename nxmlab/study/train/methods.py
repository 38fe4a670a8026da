"""The method registry: what each method does, declared once.

A method is a start point and a sequence of steps.  A :class:`Train` step is one
``Trainer.train`` call (its epochs come from a named config field; ``hooks`` adds
method-specific callbacks, e.g. ADMM's).  A :class:`Prune` step chooses the masks with
its :class:`MaskRule` and fixes them for every later step.  Nothing outside this module
branches on a method's name: the recipe, the presets, the store and the frames read
these entries.

Adding a method is one :class:`Method` entry in :data:`METHODS`, its mask rule, and its
tests.

================  =======================================================================
``dense``         fine-tune ``num_train_epochs`` from the pretrained model: the KD teacher and
                  the start point of ASP.
``magnitude``     NVIDIA ASP: one-shot magnitude n:m mask of the dense fine-tuned model
                  (``mask_source="pretrained"``: of the pretrained one), then
                  ``num_train_epochs`` with the mask fixed.
``unstructured``  the same with an unstructured magnitude mask at the same density (reference).
``admm``          NxMTransformer: ``num_train_epochs`` (or ``admm_steps`` optimizer steps) of ADMM
                  from the pretrained model (or the dense one with ``admm_init="dense"``), hard
                  prune by projection, then ``retrain_epochs`` with the masks fixed (none when 0).
``sr-ste``        SR-STE: ``num_train_epochs`` with the n:m-masked forward, prune by projection,
                  ``retrain_epochs`` with the masks fixed.
``wanda``,        one-shot masks of the dense model from calibration data, then
``sparsegpt``     ``num_train_epochs`` with the masks fixed.
``learned``       MaskLLM: ``learn_epochs`` of Gumbel-softmax masks learned on the dense model
                  (gates from a one-shot prior), prune to the most likely candidates, then
                  ``num_train_epochs`` with the masks fixed.
================  =======================================================================
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ...masking import magnitude_nxm_masks, unstructured_masks
from .hooks import ADMMHooks, LearnedHooks, SRSTEHooks, learned_masks
from .spec import Spec

__all__ = ["METHODS", "Method", "MaskRule", "MaskContext", "Prune", "Train", "get_method", "method_label",
           "parse_label", "LABELS"]


@dataclass
class MaskContext:
    """What a mask rule may look at when it runs.

    Attributes:
        spec: The run (pattern, options).
        model: The model as it is at the prune (after the steps before it).
        pretrained: The pretrained model.
        dense: The dense fine-tuned model, when the method needs it, else ``None``.
        targets: ``targets(model) -> {name: nn.Linear}``, the run's target selection.
        calibration: ``calibration() -> [batch]``: ``calibration_examples`` seeded training
            examples of the task as model inputs (no labels), for the rules that need
            activations.
        folder: The store folder the run writes into (for rules that read what an earlier
            phase saved, e.g. the learned masks), or ``None``.
    """

    spec: Spec
    model: Any
    pretrained: Any
    dense: Any | None
    targets: Callable[[Any], Mapping[str, torch.nn.Module]]
    calibration: Callable[[], list] = list
    folder: Any | None = None

    def source(self) -> Any:
        """The model named by the run's ``mask_source`` option (pretrained or dense)."""
        return self.pretrained if self.spec.cfg.mask_source == "pretrained" else self.dense


@dataclass(frozen=True)
class MaskRule:
    """How a method chooses its fixed masks.

    Attributes:
        name: Short name (shown in tables and docs/methods.md).
        choose: ``choose(ctx) -> {target: bool mask}``.
        structured: The masks are exactly n:m (checked at the end of every run);
            otherwise they keep the pattern's density per layer.
        uses_dense: ``uses_dense(spec)``: the rule reads the dense fine-tuned model.
    """

    name: str
    choose: Callable[[MaskContext], dict[str, torch.Tensor]]
    structured: bool = True
    uses_dense: Callable[[Spec], bool] = lambda spec: False


def _magnitude(ctx: MaskContext) -> dict[str, torch.Tensor]:
    return magnitude_nxm_masks(ctx.targets(ctx.source()), ctx.spec.pattern)


def _unstructured(ctx: MaskContext) -> dict[str, torch.Tensor]:
    return unstructured_masks(ctx.targets(ctx.source()), ctx.spec.pattern.density)


def _projection(ctx: MaskContext) -> dict[str, torch.Tensor]:
    return magnitude_nxm_masks(ctx.targets(ctx.model), ctx.spec.pattern)


def _wanda(ctx: MaskContext) -> dict[str, torch.Tensor]:
    from ...wanda import wanda_model

    return wanda_model(ctx.model, ctx.targets(ctx.model), ctx.calibration(), ctx.spec.pattern)


def _sparsegpt(ctx: MaskContext) -> dict[str, torch.Tensor]:
    from ...sparsegpt import sparsegpt_model

    return sparsegpt_model(ctx.model, ctx.targets(ctx.model), ctx.calibration(), ctx.spec.pattern)


def _learned(ctx: MaskContext) -> dict[str, torch.Tensor]:
    if ctx.folder is None:
        raise ValueError("the learned mask rule needs the run's folder (where the learning phase saved its masks)")
    masks = learned_masks(ctx.folder)
    modules = ctx.targets(ctx.model)
    return {name: masks[name].to(modules[name].weight.device) for name in modules}


def _mask_source_is_dense(spec: Spec) -> bool:
    return spec.cfg.mask_source == "dense"


MAGNITUDE = MaskRule("magnitude of the mask source", _magnitude, uses_dense=_mask_source_is_dense)
UNSTRUCTURED = MaskRule("unstructured magnitude of the mask source", _unstructured, structured=False,
                        uses_dense=_mask_source_is_dense)
PROJECTION = MaskRule("projection of the current weights", _projection)
WANDA = MaskRule("Wanda: |W| x input-feature norm over calibration data, layer by layer", _wanda)
SPARSEGPT = MaskRule("SparseGPT: OBS mask selection and weight update from the calibration Hessian, layer by layer",
                     _sparsegpt)
LEARNED = MaskRule("learned: the most likely candidate of every group at the end of the learning phase", _learned)


@dataclass(frozen=True)
class Train:
    """One training phase.

    Attributes:
        name: Phase name (``finetune``, ``admm``, ``retrain``): checkpoints, logs, timings.
        epochs: The config field giving its length (``num_train_epochs`` or ``retrain_epochs``);
            a phase of 0 epochs is skipped.
        steps: A config field giving its length in optimizer steps instead, when set
            (``admm_steps``), or ``None``.
        hooks: A class building extra callbacks for this phase (see
            :class:`nxmlab.study.train.hooks.ADMMHooks`), or ``None``.
    """

    name: str
    epochs: str = "num_train_epochs"
    hooks: type | None = None
    steps: str | None = None


@dataclass(frozen=True)
class Prune:
    """Choose the masks with ``rule`` and fix them for the rest of the run.

    The score is evaluated right before and right after the prune.
    """

    rule: MaskRule


@dataclass(frozen=True)
class Method:
    """One registry entry.

    Attributes:
        name: The ``--method`` value.
        summary: One line for ``--help``, tables and docs/methods.md.
        steps: :class:`Train` and :class:`Prune` steps, in order.
        start: ``start(spec)`` -> ``"pretrained"`` or ``"dense"``: the model the first step
            starts from.
        kd: Whether ``--kd`` (distillation from the dense model) applies.
        options: RunConfig fields that change this method's result (its identity).
        optional: RunConfig fields that change its result too, but enter its identity only
            when they differ from their default (options added later: older runs keep
            their folder names).
    """

    name: str
    summary: str
    steps: tuple[Train | Prune, ...]
    start: Callable[[Spec], str] = lambda spec: "pretrained"
    kd: bool = True
    options: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()

    def uses(self, option: str) -> bool:
        """``option`` is one of this method's options (always or when not default)."""
        return option in self.options or option in self.optional

    @property
    def sparse(self) -> bool:
        """The method prunes (has a :class:`Prune` step)."""
        return self.rule is not None

    @property
    def rule(self) -> MaskRule | None:
        """The mask rule of its prune step, if any."""
        return next((s.rule for s in self.steps if isinstance(s, Prune)), None)

    @property
    def phases(self) -> tuple[Train, ...]:
        """The training phases among the method's steps (its prunes left out)."""
        return tuple(s for s in self.steps if isinstance(s, Train))

    @property
    def records_dynamics(self) -> bool:
        """A phase of the method has hooks that record training dynamics."""
        return any(getattr(s.hooks, "records_dynamics", False) for s in self.phases)

    def uses_dense_weights(self, spec: Spec) -> bool:
        """The run starts from the dense fine-tuned model or takes its mask from it (not KD)."""
        return self.start(spec) == "dense" or (self.rule is not None and self.rule.uses_dense(spec))

    def budget_passes(self, spec: Spec) -> float:
        """Passes over the training set the run pays for (the matched budget of issue #13).

        The epochs of its :class:`Train` steps, plus the dense fine-tune when the run starts
        from the dense model or takes its mask from it.  A KD teacher is not counted: KD
        on or off does not change the budget.
        """
        own = sum(spec.epochs(step.epochs) for step in self.phases)
        return own + (spec.dense_epochs if self.sparse and self.uses_dense_weights(spec) else 0.0)

    def match_budget(self, spec: Spec, budget: float) -> tuple[str, float]:
        """``(field, epochs)``: the length of the last :class:`Train` step that makes
        :meth:`budget_passes` equal ``budget``; ``ValueError`` when nothing is left for it."""
        last = self.phases[-1]
        rest = self.budget_passes(spec) - spec.epochs(last.epochs)
        epochs = float(budget) - rest
        if epochs <= 0:
            raise ValueError(f"{self.name}: a budget of {budget:g} passes leaves no epochs for its "
                             f"'{last.name}' phase (the other phases take {rest:g})")
        return last.epochs, epochs

    def needs_dense(self, spec: Spec) -> bool:
        """The run needs the dense fine-tuned model: as start, mask source or KD teacher."""
        return self.uses_dense_weights(spec) or (spec.kd and spec.cfg.teacher is None)


def _admm_start(spec: Spec) -> str:
    return spec.cfg.admm_init


def _dense_start(spec: Spec) -> str:
    return "dense"


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` to :data:`METHODS` (its name must be new)."""
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


register(Method("dense", "fine-tune the pretrained model (the KD teacher and ASP's start)",
                (Train("finetune"),), kd=False))
register(Method("magnitude", "NVIDIA ASP: one-shot magnitude n:m mask of the dense model, then masked fine-tuning",
                (Prune(MAGNITUDE), Train("finetune")), start=_dense_start, options=("mask_source",),
                optional=("train_only_targets",)))
register(Method("admm", "NxMTransformer: ADMM fine-tuning towards n:m, hard prune, masked retraining",
                (Train("admm", hooks=ADMMHooks, steps="admm_steps"), Prune(PROJECTION), Train("retrain", "retrain_epochs")),
                start=_admm_start,
                options=("rho", "rho_factor", "rho_max", "admm_interval", "admm_init", "retrain_epochs"),
                optional=("u_init", "penalty_before_clip", "train_only_targets", "admm_steps", "decoupled_penalty",
                          "admm_updates_per_epoch", "decoupled_scope")))
register(Method("sr-ste", "SR-STE (Zhou et al., 2021): training with n:m masked forward, straight-through gradients "
                          "and the sparse-refined term, then masked fine-tuning",
                (Train("srste", hooks=SRSTEHooks), Prune(PROJECTION), Train("retrain", "retrain_epochs")),
                options=("srste_lambda", "retrain_epochs")))
register(Method("wanda", "Wanda (Sun et al., 2023): one-shot |W| x activation-norm n:m mask of the dense model, "
                         "then masked fine-tuning", (Prune(WANDA), Train("finetune")), start=_dense_start,
                options=("calibration_examples",)))
register(Method("sparsegpt", "SparseGPT (Frantar & Alistarh, 2023): one-shot OBS n:m pruning with weight update "
                             "of the dense model, then masked fine-tuning", (Prune(SPARSEGPT), Train("finetune")),
                start=_dense_start, options=("calibration_examples",)))
register(Method("unstructured", "reference: unstructured magnitude mask at the same density, then masked fine-tuning",
                (Prune(UNSTRUCTURED), Train("finetune")), start=_dense_start, options=("mask_source",)))
register(Method("learned", "MaskLLM (Fang et al., 2024): n:m masks learned through Gumbel-softmax over the candidate "
                           "masks of every group, from a one-shot prior on the dense model, then masked fine-tuning",
                (Train("learn", "learn_epochs", hooks=LearnedHooks), Prune(LEARNED), Train("finetune")),
                start=_dense_start,
                options=("learn_epochs", "mask_prior", "mask_prior_strength", "mask_tau_start", "mask_tau_end",
                         "mask_scale_start", "mask_scale_end", "mask_lr_mult", "mask_reg", "freeze_weights"),
                optional=("calibration_examples",)))


def get_method(name: str) -> Method:
    """The registry entry called ``name``; ``ValueError`` lists the known ones."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    return METHODS[name]


def method_label(method: str, kd: bool) -> str:
    """``"admm+kd"``-style label."""
    return method + ("+kd" if kd else "")


def parse_label(label: str) -> tuple[Method, bool]:
    """``"admm+kd"`` -> ``(METHODS["admm"], True)``; ``ValueError`` for unknown labels."""
    name, plus, kd = label.partition("+")
    if name not in METHODS or (plus and kd != "kd") or (plus and not METHODS[name].kd):
        raise ValueError(f"unknown method label {label!r}; choose from {', '.join(LABELS())}")
    return METHODS[name], bool(plus)


def LABELS() -> tuple[str, ...]:  # noqa: N802 - a constant that follows the registry
    """Every method label in table order: each method, then its ``+kd`` variant."""
    return tuple(label for m in METHODS.values() for label in ((m.name, m.name + "+kd") if m.kd else (m.name,)))
