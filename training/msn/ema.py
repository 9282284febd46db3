"""The target network: an exponential moving average (EMA) of the anchor network.

After every optimiser step, each target parameter becomes m * target + (1 - m) * anchor.
The paper used a constant m = 0.996; the original MSN ramps m linearly from 0.996 towards
1.0, reaching it after 1.25 x the planned number of steps. Buffers (BatchNorm running
statistics) are copied, not averaged. The target never receives gradients.
"""

from __future__ import annotations

import torch
from torch import nn

from training.config import EMAConfig


def momentum_at(step: int, total_steps: int, config: EMAConfig) -> float:
    """The momentum for optimiser step ``step`` (0-based) of ``total_steps``."""
    if step < 0 or total_steps < 1:
        raise ValueError(f"need step >= 0 and total_steps >= 1, got {step}, {total_steps}")
    if not config.ramp:
        return config.momentum
    ramp_steps = total_steps * config.ramp_stretch
    fraction = min(step / ramp_steps, 1.0)
    return config.momentum + (config.final_momentum - config.momentum) * fraction


@torch.no_grad()
def ema_update_(target: nn.Module, anchor: nn.Module, momentum: float) -> None:
    """target = momentum * target + (1 - momentum) * anchor, parameter by parameter.

    Parameters are matched by name; every target parameter must exist in ``anchor``
    (which may hold more, e.g. the EHR branch and the prototypes).
    """
    if not 0 <= momentum <= 1:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    anchor_params = dict(anchor.named_parameters())
    names = [name for name, _ in target.named_parameters()]
    missing = [name for name in names if name not in anchor_params]
    if missing:
        raise ValueError(f"the anchor network lacks target parameters {missing[:5]}")
    target_params: list[torch.Tensor] = [p for _, p in target.named_parameters()]
    source = [anchor_params[name].detach() for name in names]
    torch._foreach_mul_(target_params, momentum)
    torch._foreach_add_(target_params, source, alpha=1 - momentum)
    anchor_buffers = dict(anchor.named_buffers())
    for name, buffer in target.named_buffers():
        buffer.copy_(anchor_buffers[name])
