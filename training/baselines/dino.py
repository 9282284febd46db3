"""The DINO baseline's networks and forward pass (method=dino).

- ``DINOStudent`` (trained): encoder, ``DINOHead`` (Linear-GELU-Linear-GELU-Linear to an
  L2-normalised bottleneck, no BatchNorm, as DINO's default) and the K prototypes: DINO's
  weight-normalised last layer with its norm fixed to 1 (``norm_last_layer=True``), so a
  logit is the cosine between the bottleneck and a prototype. It also holds the teacher's
  running centre (a buffer, so it is saved and resumed with the network).
- ``DINOTeacher`` (EMA of the student, no gradients): encoder, head and prototypes.

Views (the project's MSN view machinery, ``training.msn.views``): the global views are the
target view and the ``rand`` views, the local views the ``focal`` ones; no masking. The
teacher sees the global views, the student all of them; the teacher encoder is what the
checkpoint keeps (DINO evaluates its teacher).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from cxrmsn.model import create_encoder
from training.baselines.dino_loss import dino_loss, update_center_
from training.distributed import all_reduce_mean
from training.msn.model import encode_cls
from training.msn.msn_loss import entropy


class DINOHead(nn.Module):
    """[N, in_dim] -> [N, bottleneck], L2-normalised (DINO's MLP with ``nlayers=3``)."""

    def __init__(self, in_dim: int, *, hidden_dim: int, bottleneck: int) -> None:
        super().__init__()
        if min(in_dim, hidden_dim, bottleneck) < 1:
            raise ValueError(f"dimensions must be >= 1, got {in_dim}, {hidden_dim}, {bottleneck}")
        self.layers = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, bottleneck),
        )
        for module in self.layers:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.layers(features), dim=-1)


def prototype_logits(projections: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """DINO's last layer with weight norm g = 1: cosines [N, K] of projections and prototypes."""
    return F.normalize(projections, dim=-1) @ F.normalize(prototypes, dim=-1).T


def size_groups(views: list[torch.Tensor]) -> list[torch.Tensor]:
    """Consecutive views ([B, 3, S, S] each) of one size concatenated (view-major), for one
    encoder pass per size."""
    groups: list[list[torch.Tensor]] = []
    for view in views:
        if groups and groups[-1][0].shape[-2:] == view.shape[-2:]:
            groups[-1].append(view)
        else:
            groups.append([view])
    return [torch.cat(group) for group in groups]


class DINOTeacher(nn.Module):
    def __init__(self, encoder: VisionTransformer, head: DINOHead, prototypes: torch.Tensor) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.prototypes = nn.Parameter(prototypes.detach().clone(), requires_grad=False)

    def forward(self, groups: list[torch.Tensor]) -> torch.Tensor:
        """Global view groups (view-major) -> logits [G * B, K]."""
        features = torch.cat([encode_cls(self.encoder, group) for group in groups])
        return prototype_logits(self.head(features), self.prototypes)


class DINOStudent(nn.Module):
    center: torch.Tensor  # [1, K], the running centre of the teacher's logits (a buffer)

    def __init__(self, arch: str, *, head_hidden: int, bottleneck: int, num_prototypes: int) -> None:
        super().__init__()
        self.encoder = create_encoder(arch, dynamic_img_size=True)
        self.head = DINOHead(self.encoder.embed_dim, hidden_dim=head_hidden, bottleneck=bottleneck)
        bound = 1 / math.sqrt(bottleneck)  # nn.Linear's initialisation of DINO's last layer
        self.prototypes = nn.Parameter(torch.empty(num_prototypes, bottleneck).uniform_(-bound, bound))
        self.register_buffer("center", torch.zeros(1, num_prototypes))
        self.fusion = None  # no EHR branch: an image-only baseline

    def make_target(self) -> DINOTeacher:
        teacher = DINOTeacher(copy.deepcopy(self.encoder), copy.deepcopy(self.head), self.prototypes)
        teacher.requires_grad_(False)
        return teacher

    def forward(self, groups: list[torch.Tensor]) -> torch.Tensor:
        """All view groups (global first, view-major) -> logits [V * B, K]."""
        features = torch.cat([encode_cls(self.encoder, group) for group in groups])
        return prototype_logits(self.head(features), self.prototypes)


def dino_views(batch: dict[str, torch.Tensor], device: torch.device) -> tuple[list[torch.Tensor], int]:
    """Every view [B, 3, S, S], global first (target, rand...), then the focal ones; and G."""

    def unstack(views: torch.Tensor) -> list[torch.Tensor]:
        return [views[:, i].to(device, non_blocking=True) for i in range(views.shape[1])]

    global_views = [batch["target"].to(device, non_blocking=True), *unstack(batch["rand"])]
    return [*global_views, *unstack(batch["focal"])], len(global_views)


def dino_forward(
    model: nn.Module,
    student: DINOStudent,
    teacher: DINOTeacher,
    batch: dict[str, torch.Tensor],
    *,
    student_temp: float,
    teacher_temp: float,
    center_momentum: float,
    device: torch.device,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one step (call inside autocast); updates the centre. ``model`` is the
    student or its DDP wrapper."""
    views, global_count = dino_views(batch, device)
    batch_size = views[0].shape[0]
    student_logits = model(size_groups(views))
    with torch.no_grad():
        teacher_logits = teacher(size_groups(views[:global_count]))
    center = student.center
    out = dino_loss(
        student_logits.float(),
        teacher_logits.float(),
        center,
        global_views=global_count,
        student_temp=student_temp,
        teacher_temp=teacher_temp,
    )
    update_center_(center, teacher_logits.float(), center_momentum)
    with torch.no_grad():
        targets = out.teacher_probabilities
        student_choice = out.student_log_probabilities.argmax(dim=1).view(len(views), batch_size)
        teacher_choice = targets.argmax(dim=1).view(global_count, batch_size)
        agree = [
            (student_choice[v] == teacher_choice[i]).float().mean()
            for i in range(global_count)
            for v in range(len(views))
            if v != i
        ]
        mean_probability = all_reduce_mean(out.student_log_probabilities.exp().mean(dim=0))
    stats = {
        "cross_entropy": float(out.loss.detach()),
        "mean_entropy": float(entropy(mean_probability)),
        "target_max": float(targets.max(dim=1).values.mean()),
        "distinct_targets": float(teacher_choice.unique().numel()),
        "agreement": float(torch.stack(agree).mean()),
    }
    return out.loss, stats
