"""The MSN loss against values worked out by hand on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

from training.msn.msn_loss import entropy, msn_loss, sinkhorn, target_probabilities

E = math.e
UNIT = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # two prototypes along the axes


def test_sinkhorn_one_iteration_by_hand() -> None:
    # [[.9, .1], [.6, .4]] / total 2 -> [[.45, .05], [.3, .2]]; prototype sums .75 and .25
    # -> [[.6, .2], [.4, .8]] / K=2 -> [[.3, .1], [.2, .4]]; sample sums .4 and .6
    # -> [[.75, .25], [1/3, 2/3]] / B=2, then x B.
    balanced = sinkhorn(torch.tensor([[0.9, 0.1], [0.6, 0.4]]), iterations=1)
    assert torch.allclose(balanced, torch.tensor([[0.75, 0.25], [1 / 3, 2 / 3]]), atol=1e-6)


def test_sinkhorn_rows_sum_to_one_and_prototypes_balance() -> None:
    probabilities = torch.softmax(torch.randn(8, 4, generator=torch.Generator().manual_seed(0)) * 3, dim=1)
    balanced = sinkhorn(probabilities, iterations=50)
    assert torch.allclose(balanced.sum(dim=1), torch.ones(8), atol=1e-5)
    assert torch.allclose(balanced.sum(dim=0), torch.full((4,), 2.0), atol=1e-3)  # B / K each


def test_single_sample_sinkhorn_is_uniform() -> None:
    assert torch.allclose(sinkhorn(torch.tensor([[0.99, 0.01]]), iterations=3), torch.tensor([[0.5, 0.5]]))


def test_loss_by_hand_without_sharpening_or_sinkhorn() -> None:
    # anchor (2, 0) -> cosines (1, 0); target (0, 3) -> cosines (0, 1); tau = 1, T = 1.
    p = [E / (E + 1), 1 / (E + 1)]  # anchor probabilities
    p_plus = [1 / (E + 1), E / (E + 1)]  # target probabilities
    cross_entropy = -(p_plus[0] * math.log(p[0]) + p_plus[1] * math.log(p[1]))
    mean_entropy = -(p[0] * math.log(p[0]) + p[1] * math.log(p[1]))
    out = msn_loss(
        torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 3.0]]), UNIT, tau=1.0, sharpen=1.0, sinkhorn_iters=0
    )
    assert float(out.cross_entropy) == pytest.approx(cross_entropy, abs=1e-6)
    assert float(out.mean_entropy) == pytest.approx(mean_entropy, abs=1e-6)
    assert float(out.loss) == pytest.approx(cross_entropy - mean_entropy, abs=1e-6)
    assert float(out.loss) == pytest.approx(0.4622, abs=1e-4)  # 1.0444 - 0.5822


def test_sharpening_uses_tau_times_t() -> None:
    # cosines (0.6, 0.8) at tau 0.1 and T 0.25: softmax((0.6, 0.8) / 0.025) = (1, e^8) / (1 + e^8).
    targets = target_probabilities(torch.tensor([[0.6, 0.8]]), UNIT, tau=0.1, sharpen=0.25, sinkhorn_iters=0)
    expected = torch.tensor([[1 / (1 + E**8), E**8 / (1 + E**8)]])
    assert torch.allclose(targets, expected, atol=1e-7)


def test_loss_by_hand_with_two_views_two_images_and_sinkhorn() -> None:
    tau, sharpen = 0.5, 0.5
    anchors = torch.tensor(
        [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6]]
    )  # view-major: v0b0 v0b1 v1b0 v1b1
    targets = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # target probabilities: softmax(cos / (tau * T)) = softmax(cos / 0.25), then one Sinkhorn pass.
    t0 = [E**4 / (E**4 + 1), 1 / (E**4 + 1)]
    t1 = [E**2.4 / (E**2.4 + E**3.2), E**3.2 / (E**2.4 + E**3.2)]
    total = 2.0
    q = [[t0[0] / total, t0[1] / total], [t1[0] / total, t1[1] / total]]
    column = [q[0][k] + q[1][k] for k in range(2)]
    q = [[q[b][k] / column[k] / 2 for k in range(2)] for b in range(2)]
    q = [[q[b][k] / sum(q[b]) for k in range(2)] for b in range(2)]  # rows sum to 1 (x B / B)
    # anchor probabilities: softmax(cos / 0.5)
    cosines = [(1.0, 0.0), (0.0, 1.0), (0.6, 0.8), (0.8, 0.6)]
    p = [[math.exp(c[k] / tau) / sum(math.exp(x / tau) for x in c) for k in range(2)] for c in cosines]
    target_of = [q[0], q[1], q[0], q[1]]
    cross_entropy = (
        sum(-sum(t[k] * math.log(pi[k]) for k in range(2)) for t, pi in zip(target_of, p, strict=True)) / 4
    )
    mean = [sum(pi[k] for pi in p) / 4 for k in range(2)]
    mean_entropy = -sum(m * math.log(m) for m in mean)
    out = msn_loss(anchors, targets, UNIT, tau=tau, sharpen=sharpen, sinkhorn_iters=1, me_max_weight=0.5)
    assert float(out.cross_entropy) == pytest.approx(cross_entropy, abs=1e-6)
    assert float(out.mean_entropy) == pytest.approx(mean_entropy, abs=1e-6)
    assert float(out.loss) == pytest.approx(cross_entropy - 0.5 * mean_entropy, abs=1e-6)


def test_inputs_and_prototypes_are_l2_normalised() -> None:
    anchors, targets = torch.randn(6, 4), torch.randn(3, 4)
    prototypes = torch.randn(5, 4)
    a = msn_loss(anchors, targets, prototypes)
    b = msn_loss(anchors * 7, targets * 0.1, prototypes * torch.rand(5, 1) * 10)
    assert torch.allclose(a.loss, b.loss, atol=1e-5)


def test_gradients_reach_prototypes_and_anchors_not_targets() -> None:
    anchors = torch.randn(6, 4, requires_grad=True)
    targets = torch.randn(3, 4, requires_grad=True)
    prototypes = torch.nn.Parameter(torch.randn(5, 4))
    msn_loss(anchors, targets, prototypes).loss.backward()
    assert prototypes.grad is not None and prototypes.grad.abs().sum() > 0
    assert anchors.grad is not None and anchors.grad.abs().sum() > 0
    assert targets.grad is None


def test_mean_entropy_term_spreads_anchors_over_the_prototypes() -> None:
    # Both anchors sit on prototype 0; a gradient step on -lambda * H(p_bar) alone raises H(p_bar).
    anchors = torch.tensor([[1.0, 0.0], [1.0, 0.1]], requires_grad=True)
    targets = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    with_term = msn_loss(anchors, targets, UNIT, me_max_weight=1.0, sinkhorn_iters=0)
    without = msn_loss(anchors, targets, UNIT, me_max_weight=0.0, sinkhorn_iters=0)
    (gradient,) = torch.autograd.grad(with_term.loss - without.loss, anchors)
    moved = msn_loss(anchors.detach() - 0.5 * gradient, targets, UNIT, sinkhorn_iters=0)
    assert float(with_term.mean_entropy.detach()) < float(moved.mean_entropy) <= math.log(2)
    assert float(entropy(torch.tensor([0.5, 0.5]))) == pytest.approx(math.log(2))
    assert float(entropy(torch.tensor([1.0, 0.0]))) == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("anchors", "targets", "kwargs"),
    [
        (torch.randn(5, 4), torch.randn(2, 4), {}),  # 5 anchors for 2 targets
        (torch.randn(4, 3), torch.randn(2, 4), {}),  # widths differ
        (torch.randn(4, 4), torch.randn(2, 4), {"tau": 0.0}),
    ],
)
def test_invalid_inputs_raise(anchors: torch.Tensor, targets: torch.Tensor, kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        msn_loss(anchors, targets, torch.randn(3, 4), **kwargs)  # type: ignore[arg-type]


def _sinkhorn_before_issue_18(probabilities: torch.Tensor, *, iterations: int = 3) -> torch.Tensor:
    """The previous ``sinkhorn``, whose batch size was a host value copied to the device."""
    q = probabilities.T.clone()
    num_prototypes = q.shape[0]
    global_batch = torch.tensor(float(q.shape[1]), device=q.device)
    q /= q.sum()
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True)
        q /= num_prototypes
        q /= q.sum(dim=0, keepdim=True)
        q /= global_batch
    return (q * global_batch).T


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_sinkhorn_equals_the_previous_version_bit_for_bit(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(18)
    for batch, prototypes, iterations in ((1, 4, 3), (7, 16, 3), (64, 1024, 3), (32, 256, 0), (5, 3, 10)):
        logits = torch.randn(batch, prototypes, generator=generator) * 4
        probabilities = torch.softmax(logits, dim=1).to(dtype)
        new = sinkhorn(probabilities, iterations=iterations)
        old = _sinkhorn_before_issue_18(probabilities, iterations=iterations)
        assert new.dtype == old.dtype == dtype
        assert torch.equal(new, old), (batch, prototypes, iterations)


def test_sinkhorn_copies_no_host_value_to_the_device() -> None:
    from typing import Any

    from torch.overrides import TorchFunctionMode

    created: list[str] = []

    class Creation(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            if func in (torch.tensor, torch.as_tensor, torch.Tensor.item, torch.Tensor.tolist):
                created.append(func.__name__)
            return func(*args, **(kwargs or {}))

    probabilities = torch.softmax(torch.randn(8, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    with Creation():
        sinkhorn(probabilities, iterations=3)
    assert created == []  # torch.tensor(value, device=cuda) waits for the device
