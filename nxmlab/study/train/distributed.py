"""Multi-process runs under ``torchrun``: Trainer DDP, with rank 0 owning the store.

``torchrun --nproc_per_node N -m nxmlab.study train ...`` starts N processes that run
the same recipe.  Training and evaluation are ``transformers.Trainer``'s DDP (gloo on
CPU, NCCL on GPU).  Everything else follows one rule: **rank 0 alone reads and writes
the results store and holds the run lock**; every decision it takes from the store
(reuse a finished run, resume from which checkpoint, retrain a dense run) reaches the
other ranks through the process group (:func:`decide`), and a rank that must read a
file rank 0 writes waits for it (:func:`barrier`).  The ranks share one filesystem
(one node, or a shared folder), as Trainer's own resume does.

A launch that cannot run DDP fails with one line before anything is written
(:func:`configure_launch`, :func:`check_launch`); it never falls back to a single
process silently.  A launch that works says so once, on rank 0 (``DDP on: ...``).

torch is imported inside the functions: :func:`launched_world_size`, :func:`rank` and
:func:`is_main` read the launcher's environment only, so the command line can ask them
before it loads torch.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import torch

__all__ = [
    "launched_world_size",
    "rank",
    "is_main",
    "configure_launch",
    "check_launch",
    "active",
    "barrier",
    "decide",
    "check_replicated",
]

T = TypeVar("T")

logger = logging.getLogger(__name__)
_announced: set[tuple[int, str]] = set()  # "DDP on" is said once per world size and backend


def launched_world_size() -> int:
    """The number of processes the launcher started (``$WORLD_SIZE``, 1 without a launcher)."""
    try:
        return max(int(os.environ.get("WORLD_SIZE", "1")), 1)
    except ValueError:
        raise ValueError(f"WORLD_SIZE must be an integer, got {os.environ['WORLD_SIZE']!r}") from None


def rank() -> int:
    """This process's global rank (``$RANK``, 0 without a launcher)."""
    return int(os.environ.get("RANK", "0")) if launched_world_size() > 1 else 0


def is_main() -> bool:
    """True on the process that owns the results store (rank 0, or the only process)."""
    return rank() == 0


def configure_launch(args: Any) -> None:
    """Fill in the DDP settings of a ``TrainingArguments`` under a launcher; raise for one that cannot work.

    Called before the arguments set up their device (``NxMTrainingArguments.__post_init__``).
    Without CUDA, ``torchrun`` runs the ranks on CPU with gloo (``use_cpu``); with CUDA,
    each rank needs its own GPU.  ``ddp_find_unused_parameters`` left unset becomes ``False``:
    a GLUE classifier uses every parameter that trains in each forward pass (frozen ones,
    ``--train_only_targets``, are frozen before DDP wraps the model and are not tracked), so
    DDP need not search the graph for unused ones, and torch's warning that it found none is
    gone.  Nothing changes in a single process.

    Raises:
        ValueError: the launch cannot run DDP (a backend the device lacks, fewer GPUs than
            ranks on a node).
    """
    import torch

    world = launched_world_size()
    if world == 1:
        return
    if getattr(args, "ddp_find_unused_parameters", False) is None:
        args.ddp_find_unused_parameters = False
    backend = args.ddp_backend
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if args.use_cpu or not torch.cuda.is_available():
        if backend not in (None, "gloo"):
            raise ValueError(f"torchrun on CPU needs --ddp_backend gloo, got {backend!r}")
        args.use_cpu, args.ddp_backend = True, "gloo"
        return
    gpus = torch.cuda.device_count()
    if local > gpus:
        raise ValueError(f"torchrun started {local} processes on this node but it has {gpus} GPU(s); "
                         f"use --nproc_per_node {gpus} (or --use_cpu for gloo on CPU)")


def check_launch(args: Any) -> int:
    """The world size of a run, after checking that Trainer will really run DDP across it.

    Sets up the arguments' device (which starts the process group under a launcher).

    Raises:
        ValueError: the launcher started several processes but ``args`` would train each
            of them alone (e.g. plain ``TrainingArguments`` without ``use_cpu`` on CPU).
    """
    world = launched_world_size()
    if world == 1:
        return 1
    from transformers.training_args import ParallelMode

    if args.parallel_mode != ParallelMode.DISTRIBUTED or args.world_size != world:
        raise ValueError(f"torchrun started {world} processes, but Trainer would train each alone "
                         f"(parallel mode {args.parallel_mode.value}, world size {args.world_size}); "
                         f"pass --use_cpu --ddp_backend gloo on CPU")
    backend = str(getattr(args, "ddp_backend", None) or "default backend")
    if is_main() and (world, backend) not in _announced:
        _announced.add((world, backend))
        device = "CPU" if getattr(args, "use_cpu", False) else "one GPU each"
        logger.info("DDP on: %d processes (%s, %s), global batch %d", world, backend, device,
                    world * args.per_device_train_batch_size * args.gradient_accumulation_steps)
    return world


def active() -> bool:
    """True when this process is one of several ranks of an initialised process group."""
    import torch

    return (launched_world_size() > 1 and torch.distributed.is_available()
            and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1)


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if active():
        import torch

        torch.distributed.barrier()


def decide(choose: Callable[[], T]) -> T:
    """Run ``choose`` on rank 0 and give its result (or its exception) to every rank.

    In a single process this is ``choose()``.  ``choose`` typically reads the store;
    the other ranks never do.  An exception raised by ``choose`` is raised on every rank.
    """
    if not active():
        return choose()
    import torch

    box: list[Any] = [None]
    if is_main():
        try:
            box[0] = ("ok", choose())
        except Exception as exc:  # re-raised on every rank below
            box[0] = ("error", exc)
    torch.distributed.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise value
    return value


def _digest(tensors: Mapping[str, torch.Tensor]) -> str:
    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def check_replicated(tensors: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise ``RuntimeError`` unless every rank holds bit-identical ``tensors`` (no-op in one process).

    DDP keeps the weights replicated; masks, Z and U are computed from them on each rank,
    so they must agree too.  This checks it (a SHA-256 of the bytes, gathered).
    """
    if not active():
        return
    import torch

    digests: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(digests, _digest(tensors))
    if len(set(digests)) > 1:
        bad = [r for r, d in enumerate(digests) if d != digests[0]]
        raise RuntimeError(f"the ranks hold different {what} (rank(s) {bad} differ from rank 0)")
