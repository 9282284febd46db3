"""The DINO self-distillation loss, with the teacher's centring and sharpening.

Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021
(facebookresearch/dino ``DINOLoss``), the baseline the MSN paper compares with (Table 3).

Shapes (B images on this rank, G global views, V = G + L views in all, K prototypes):

- ``student``: [V * B, K] student logits, view-major (row ``v * B + b`` is view ``v`` of
  image ``b``); the first G views are the global views the teacher also sees, in order
- ``teacher``: [G * B, K] teacher logits of the G global views (no gradient)
- ``center``: [1, K] the running centre of the teacher logits

Steps:

1. Student probabilities in log space: log_softmax(student / tau_s).
2. Teacher probabilities: softmax((teacher - center) / tau_t): centring (against collapse
   to one dimension) and sharpening (tau_t < tau_s, against collapse to uniform).
3. Cross-entropy H(p_t(view i), p_s(view v)) for every teacher view i and every student
   view v != i, averaged over the batch, then over the G * (V - 1) pairs.
4. Centre update (after the loss, no gradient): center = m * center + (1 - m) * mean of the
   teacher logits over the global batch (summed across ranks, as DINO's all-reduce).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from training.distributed import all_reduce_sum_, world_size


@dataclass(frozen=True)
class DINOLossOutput:
    loss: torch.Tensor  # scalar, differentiable
    teacher_probabilities: torch.Tensor  # [G * B, K], no gradient
    student_log_probabilities: torch.Tensor  # [V * B, K]


def teacher_probabilities(teacher: torch.Tensor, center: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax((teacher - center) / temperature): [N, K], no gradient."""
    if temperature <= 0:
        raise ValueError(f"temperature must be in (0, inf), got {temperature}")
    return torch.softmax((teacher.detach() - center) / temperature, dim=1)


def dino_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    center: torch.Tensor,
    *,
    global_views: int,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> DINOLossOutput:
    """The DINO loss of the module docstring; see there for shapes."""
    if student.ndim != 2 or teacher.ndim != 2 or student.shape[1] != teacher.shape[1]:
        raise ValueError(
            f"student [V*B, K] and teacher [G*B, K] expected, got {student.shape}, {teacher.shape}"
        )
    if global_views < 1 or teacher.shape[0] % global_views:
        raise ValueError(f"teacher rows {teacher.shape[0]} are not {global_views} views of a batch")
    batch = teacher.shape[0] // global_views
    if batch < 1 or student.shape[0] % batch or student.shape[0] // batch < global_views:
        raise ValueError(
            f"student rows {student.shape[0]} are not {global_views} or more views of a batch of {batch}"
        )
    if center.shape != (1, teacher.shape[1]):
        raise ValueError(f"center must be [1, {teacher.shape[1]}], got {tuple(center.shape)}")
    if student_temp <= 0:
        raise ValueError(f"student_temp must be in (0, inf), got {student_temp}")
    views = student.shape[0] // batch
    # Step 1.
    log_student = torch.log_softmax(student / student_temp, dim=1)
    # Step 2.
    targets = teacher_probabilities(teacher, center, teacher_temp)
    # Step 3: every teacher view against every other student view.
    total = student.new_zeros(())
    pairs = 0
    for i in range(global_views):
        target = targets[i * batch : (i + 1) * batch]
        for v in range(views):
            if v == i:
                continue
            total = total + (-(target * log_student[v * batch : (v + 1) * batch]).sum(dim=1)).mean()
            pairs += 1
    if pairs == 0:
        raise ValueError("DINO needs at least two views: one teacher view and another student view")
    return DINOLossOutput(
        loss=total / pairs, teacher_probabilities=targets, student_log_probabilities=log_student
    )


@torch.no_grad()
def update_center_(center: torch.Tensor, teacher: torch.Tensor, momentum: float) -> torch.Tensor:
    """Step 4, in place: center = momentum * center + (1 - momentum) * global mean of ``teacher``."""
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    batch_center = all_reduce_sum_(teacher.detach().sum(dim=0, keepdim=True).clone())
    batch_center /= teacher.shape[0] * world_size()
    center.mul_(momentum).add_(batch_center, alpha=1 - momentum)
    return center


def teacher_temperature(epoch: int, *, start: float, end: float, warmup_epochs: int) -> float:
    """DINO's per-epoch schedule: ``np.linspace(start, end, warmup_epochs)``, then ``end``."""
    if warmup_epochs <= 0 or epoch >= warmup_epochs:
        return end
    if warmup_epochs == 1:
        return start
    return start + (end - start) * epoch / (warmup_epochs - 1)
