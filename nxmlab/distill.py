"""Knowledge distillation from the dense fine-tuned teacher.

Classification: ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``
(Hinton et al., 2015; the ``T^2`` keeps the soft-target gradients on the same scale
as the hard-label ones when T changes).  The KL is averaged over the batch.

Regression (STS-B, one output): ``alpha * MSE(s, t) + (1 - alpha) * MSE(s, y)``;
temperature does not apply.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .nxm import check_tensor

__all__ = ["distillation_loss"]


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None,
    temperature: float = 2.0,
    alpha: float = 0.5,
) -> torch.Tensor:
    """Distillation loss mixing the teacher's soft targets with the labels.

    Args:
        student_logits: ``[B, C]`` (classification) or ``[B]`` / ``[B, 1]`` (regression).
        teacher_logits: Same shape as ``student_logits``; treated as a constant.
        labels: ``[B]`` class ids or regression targets; may be ``None`` only when
            ``alpha == 1``.
        temperature: Softmax temperature ``T > 0`` (classification only).
        alpha: Weight of the teacher term, in ``[0, 1]``.

    Returns:
        A scalar loss tensor.

    Raises:
        TypeError: logits (or labels) that are not tensors.
    """
    check_tensor(student_logits, "student_logits")
    check_tensor(teacher_logits, "teacher_logits")
    if labels is not None:
        check_tensor(labels, "labels", dtypes=None)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ: do teacher and student have the same label count?"
        )
    if labels is None and alpha < 1.0:
        raise ValueError("labels are required unless alpha == 1")
    teacher_logits = teacher_logits.detach()
    regression = student_logits.dim() == 1 or student_logits.shape[-1] == 1

    if regression:
        s = student_logits.reshape(-1).float()
        soft = F.mse_loss(s, teacher_logits.reshape(-1).float())
        hard = F.mse_loss(s, labels.reshape(-1).float()) if labels is not None else soft.new_zeros(())
    else:
        t = temperature
        log_p_student = F.log_softmax(student_logits.float() / t, dim=-1)
        log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
        soft = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * (t * t)
        hard = (
            F.cross_entropy(student_logits.float(), labels.reshape(-1).long())
            if labels is not None
            else soft.new_zeros(())
        )
    return alpha * soft + (1.0 - alpha) * hard
