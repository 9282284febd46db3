"""Per-step schedules: cosine learning rate with linear warm-up, cosine weight decay."""

from __future__ import annotations

import math


def cosine_lr(
    step: int, total_steps: int, *, base_lr: float, min_lr: float = 0.0, warmup_steps: int = 0
) -> float:
    """Linear warm-up from 0 to ``base_lr`` over ``warmup_steps``, then cosine to ``min_lr``."""
    if total_steps < 1 or step < 0 or warmup_steps < 0:
        raise ValueError(
            f"need total_steps >= 1, step >= 0, warmup_steps >= 0; got {total_steps}, {step}, {warmup_steps}"
        )
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return min_lr + (base_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def cosine_weight_decay(step: int, total_steps: int, *, start: float, end: float | None) -> float:
    """Constant ``start`` when ``end`` is None, else a cosine from ``start`` to ``end`` (original MSN)."""
    if end is None:
        return start
    progress = min(max(step, 0) / max(total_steps, 1), 1.0)
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))
