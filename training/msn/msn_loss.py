"""The Masked Siamese Network loss, with the mean-entropy (me-max) regulariser.

Assran et al., "Masked Siamese Networks for Label-Efficient Learning", ECCV 2022, as used
by Shurrab, Guerra-Manzanares and Shamout, "Multimodal masked siamese network improves
chest X-ray representation learning", Sci Rep 14, 22516 (2024).

Shapes (B images on this rank, M anchor views per image, d projection size, K prototypes):

- ``anchors``: [M * B, d], view-major (row ``v * B + b`` is view ``v`` of image ``b``)
- ``targets``: [B, d], the target branch's projections of the unmasked target views
- ``prototypes``: [K, d], learnable; gradients reach them through the anchor branch

Steps:

1. L2-normalise anchors, targets and prototypes.
2. Anchor probabilities p = softmax(anchor . q / tau)                       [M * B, K]
3. Target probabilities, without gradient: p+ = softmax(target . q / (tau * T)), i.e. the
   tau-softmax sharpened with temperature T; then Sinkhorn balancing over the global batch
   (``sinkhorn_iters`` > 0), and repeated for the M views of each image.          [M * B, K]
4. Cross-entropy H(p+, p), averaged over the M * B anchors.
5. Mean entropy: p_bar = mean of p over all anchors of all ranks; H(p_bar).
6. loss = H(p+, p) - lambda * H(p_bar).

Under DDP the Sinkhorn sums and p_bar are reduced across ranks as in the original MSN, so
the loss and its gradient equal those of one process holding the global batch.
The original MSN code reports me-max as log(K) - H(p_bar); the constant changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from training.distributed import all_reduce_mean, all_reduce_sum_


@dataclass(frozen=True)
class MSNLossOutput:
    loss: torch.Tensor  # scalar, differentiable
    cross_entropy: torch.Tensor  # scalar, differentiable
    mean_entropy: torch.Tensor  # H(p_bar), scalar, differentiable
    targets: torch.Tensor  # [M * B, K] target probabilities (no gradient)


def anchor_log_probabilities(anchors: torch.Tensor, prototypes: torch.Tensor, tau: float) -> torch.Tensor:
    """log softmax(normalise(anchors) . normalise(prototypes) / tau): [N, K]."""
    logits = F.normalize(anchors, dim=1) @ F.normalize(prototypes, dim=1).T
    return torch.log_softmax(logits / tau, dim=1)


@torch.no_grad()
def target_probabilities(
    targets: torch.Tensor, prototypes: torch.Tensor, *, tau: float, sharpen: float, sinkhorn_iters: int
) -> torch.Tensor:
    """Sharpened (temperature tau * sharpen), optionally Sinkhorn-balanced: [B, K]."""
    logits = F.normalize(targets, dim=1) @ F.normalize(prototypes, dim=1).T
    probabilities = torch.softmax(logits / (tau * sharpen), dim=1)
    return sinkhorn(probabilities, iterations=sinkhorn_iters) if sinkhorn_iters > 0 else probabilities


@torch.no_grad()
def sinkhorn(probabilities: torch.Tensor, *, iterations: int = 3) -> torch.Tensor:
    """Sinkhorn-Knopp balancing of [B, K] probabilities over the global batch.

    Alternately makes every prototype carry 1/K of the total mass (sums over all ranks) and
    every sample 1/B_global; returns rows that sum to 1.
    """
    q = probabilities.T.clone()  # [K, B]
    num_prototypes = q.shape[0]
    # Filled on the device: torch.tensor(value, device=cuda) would copy from the host and
    # wait for the device (a synchronisation every step); the value and dtype are the same.
    global_batch = all_reduce_sum_(torch.full((), float(q.shape[1]), dtype=torch.float32, device=q.device))
    q /= all_reduce_sum_(q.sum())
    for _ in range(iterations):
        q /= all_reduce_sum_(q.sum(dim=1, keepdim=True))  # each prototype: total mass 1/K
        q /= num_prototypes
        q /= q.sum(dim=0, keepdim=True)  # each sample: total mass 1/B
        q /= global_batch
    return (q * global_batch).T


def entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """-sum p log p over the last dimension (0 log 0 = 0)."""
    return -torch.special.xlogy(probabilities, probabilities).sum(dim=-1)


def msn_loss(
    anchors: torch.Tensor,
    targets: torch.Tensor,
    prototypes: torch.Tensor,
    *,
    tau: float = 0.1,
    sharpen: float = 0.25,
    sinkhorn_iters: int = 3,
    me_max_weight: float = 1.0,
) -> MSNLossOutput:
    """The MSN loss of the module docstring; see there for shapes."""
    if anchors.ndim != 2 or targets.ndim != 2 or anchors.shape[1] != targets.shape[1]:
        raise ValueError(
            f"anchors [M*B, d] and targets [B, d] expected, got {anchors.shape}, {targets.shape}"
        )
    if anchors.shape[0] % targets.shape[0]:
        raise ValueError(
            f"anchor count {anchors.shape[0]} is not a multiple of the target count {targets.shape[0]}"
        )
    if tau <= 0 or sharpen <= 0:
        raise ValueError(f"tau and sharpen must be > 0, got {tau}, {sharpen}")
    views = anchors.shape[0] // targets.shape[0]
    # Steps 1-2: anchor probabilities (kept as logs for the cross-entropy).
    log_probs = anchor_log_probabilities(anchors, prototypes, tau)
    # Step 3: sharpened, balanced targets, one copy per anchor view (view-major).
    target_probs = target_probabilities(
        targets, prototypes, tau=tau, sharpen=sharpen, sinkhorn_iters=sinkhorn_iters
    ).repeat(views, 1)
    # Step 4: cross-entropy H(p+, p).
    cross_entropy = -(target_probs * log_probs).sum(dim=1).mean()
    # Step 5: entropy of the mean anchor probability over the global batch.
    mean_entropy = entropy(all_reduce_mean(log_probs.exp().mean(dim=0)))
    # Step 6.
    loss = cross_entropy - me_max_weight * mean_entropy
    return MSNLossOutput(
        loss=loss, cross_entropy=cross_entropy, mean_entropy=mean_entropy, targets=target_probs
    )
