"""What the method registry and the phase hooks read of a run: the :class:`Spec` protocol.

The parsed run, :class:`~nxmlab.study.train.config.RunSpec`, is a :class:`Spec`.  The registry
(:mod:`~nxmlab.study.train.methods`) and the hooks (:mod:`~nxmlab.study.train.hooks`) are typed
against this protocol rather than against ``RunSpec``, so that their imports point one
way, type hints included: ``config`` -> ``methods`` -> ``hooks`` -> ``spec``.
"""

from __future__ import annotations

from typing import Any, Protocol

from ...nxm import NxM

__all__ = ["Spec"]


class Spec(Protocol):
    """A parsed run, as the registry's mask rules and steps and the phase hooks read it.

    Attributes:
        cfg: The run's :class:`~nxmlab.study.train.config.RunConfig` (every method option).
        args: Its training arguments (``TrainingArguments``).
        pattern: The n:m pattern.
        kd: Whether the run distils from the dense model.
    """

    cfg: Any
    args: Any
    pattern: NxM
    kd: bool

    @property
    def dense_epochs(self) -> float:
        """Epochs of the dense run this run starts from or distils from."""
        ...

    def epochs(self, field_name: str) -> float:
        """A phase length by its config field (``num_train_epochs``, ``retrain_epochs``...)."""
        ...
