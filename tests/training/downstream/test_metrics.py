"""Metrics against scikit-learn, scipy and hand-computed values; bootstrap, pairing, thresholds."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import average_precision_score, roc_auc_score

from cxrmsn.labels import LABELS, NUM_LABELS
from training.downstream.labels import LabelMatrix
from training.downstream.metrics import (
    BootstrapSettings,
    auroc,
    average_precision,
    bootstrap_weights,
    choose_threshold,
    evaluate,
    paired_comparison,
    weighted_auroc,
    weighted_average_precision,
)

FAST = BootstrapSettings(resamples=200, seed=3)


def test_hand_computed_values() -> None:
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    positive = np.array([False, False, True, True])
    # pairs (pos, neg): (0.35 > 0.1), (0.35 < 0.4), (0.8 > 0.1), (0.8 > 0.4): 3 of 4
    assert auroc(scores, positive) == pytest.approx(0.75)
    # descending: 0.8 (+) P=1 R=.5; 0.4 (-); 0.35 (+) P=2/3 R=1 -> AP = .5 * 1 + .5 * 2/3
    assert average_precision(scores, positive) == pytest.approx(0.5 + 1 / 3)
    ties = np.array([0.5, 0.5, 0.5, 0.9])  # one tied pair counts a half
    assert auroc(ties, np.array([True, False, False, True])) == pytest.approx((0.5 + 0.5 + 1 + 1) / 4)
    assert auroc(scores, np.zeros(4, dtype=bool)) is None
    assert average_precision(scores, np.ones(4, dtype=bool)) is None


@pytest.mark.parametrize("seed", range(6))
def test_weighted_metrics_match_scikit_learn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(8, 80))
    scores = np.round(rng.random(n), 1)  # many ties
    positive = rng.random(n) < 0.35
    positive[:2] = [True, False]
    weights = rng.integers(0, 4, size=(5, n)).astype(float)
    weights[:, :2] = 1.0  # every row keeps a positive and a negative
    got_roc = weighted_auroc(scores, positive, weights)
    got_ap = weighted_average_precision(scores, positive, weights)
    for b in range(5):
        assert got_roc[b] == pytest.approx(
            roc_auc_score(positive, scores, sample_weight=weights[b]), abs=1e-12
        )
        expected_ap = average_precision_score(positive, scores, sample_weight=weights[b])
        assert got_ap[b] == pytest.approx(expected_ap, abs=1e-12)


def test_bootstrap_weights_resample_images_with_replacement_reproducibly() -> None:
    first = np.concatenate(list(bootstrap_weights(30, 250, seed=1)))
    again = np.concatenate(list(bootstrap_weights(30, 250, seed=1)))
    other = np.concatenate(list(bootstrap_weights(30, 250, seed=2)))
    assert first.shape == (250, 30) and (first.sum(axis=1) == 30).all()
    assert np.array_equal(first, again) and not np.array_equal(first, other)


def _data(n: int, seed: int, quality: float) -> tuple[np.ndarray, LabelMatrix]:
    """Labels 0 and 1 annotated; label 2 annotated without positives; the rest blank."""
    rng = np.random.default_rng(seed)
    targets = np.zeros((n, NUM_LABELS), dtype=np.float32)
    mask = np.zeros((n, NUM_LABELS), dtype=bool)
    targets[:, :2] = rng.random((n, 2)) < 0.4
    mask[:, :3] = True
    probabilities = np.clip(quality * targets + rng.normal(0.3, 0.25, (n, NUM_LABELS)), 0, 1)
    return probabilities.astype(np.float32), LabelMatrix(targets, mask)


def test_evaluate_reports_estimable_labels_with_cis_and_the_rest_with_reasons() -> None:
    probabilities, labels = _data(120, seed=0, quality=0.4)
    block = evaluate(probabilities, labels, split="test", settings=FAST)
    for j in (0, 1):
        entry = block["per_label"][LABELS[j]]
        keep = labels.mask[:, j]
        assert entry["auroc"]["value"] == pytest.approx(
            roc_auc_score(labels.targets[keep, j], probabilities[keep, j]), abs=1e-6
        )
        low, high = entry["auroc"]["ci"]
        assert low < entry["auroc"]["value"] < high and entry["auroc"]["resamples_used"] == 200
    assert block["per_label"][LABELS[2]]["auroc"] is None
    assert block["per_label"][LABELS[2]]["reason"] == "no positives in the test split"
    assert block["per_label"][LABELS[5]]["reason"] == "not annotated in the test split"
    macro = block["macro"]
    assert macro["labels"] == [LABELS[0], LABELS[1]] and set(macro["excluded"]) == set(LABELS[2:])
    expected = np.mean([block["per_label"][LABELS[j]]["auroc"]["value"] for j in (0, 1)])
    assert macro["auroc"]["value"] == pytest.approx(expected, abs=1e-6)


def test_masked_pairs_do_not_count_and_untrained_labels_are_excluded() -> None:
    probabilities, labels = _data(80, seed=1, quality=0.4)
    changed = probabilities.copy()
    changed[:, 5:] = 1 - changed[:, 5:]  # only masked columns
    assert evaluate(probabilities, labels, split="test", settings=FAST) == evaluate(
        changed, labels, split="test", settings=FAST
    )
    block = evaluate(probabilities, labels, split="test", trained=[LABELS[1]], settings=FAST)
    assert block["macro"]["labels"] == [LABELS[1]]
    assert "no training signal" in block["per_label"][LABELS[0]]["reason"]


def test_bootstrap_is_seeded_and_drops_undefined_resamples() -> None:
    probabilities, labels = _data(12, seed=2, quality=0.5)
    labels.targets[:, 0] = 0
    labels.targets[0, 0] = 1  # one positive: many resamples leave it out
    a = evaluate(probabilities, labels, split="test", settings=FAST)
    b = evaluate(probabilities, labels, split="test", settings=FAST)
    assert a == b
    used = a["per_label"][LABELS[0]]["auroc"]["resamples_used"]
    assert 0 < used < 200  # P(left out) = (11/12)^12, about 35 %
    assert a["macro"]["auroc"]["resamples_used"] <= used


def test_paired_comparison_of_a_model_with_itself_and_with_a_better_one() -> None:
    probabilities, labels = _data(150, seed=4, quality=0.1)
    labels.targets[:5, 2] = 1  # make label 2 estimable too: three labels for the t-test
    macro = [LABELS[0], LABELS[1], LABELS[2]]
    same = paired_comparison(probabilities, probabilities, labels, macro, settings=FAST)
    assert same["difference"]["value"] == 0 and same["difference"]["ci"] == [0.0, 0.0]
    assert same["t_test"]["p_value"] is None
    better = probabilities.copy()
    better[:, :3] = np.clip(better[:, :3] + 0.6 * labels.targets[:, :3], 0, 1)
    result = paired_comparison(better, probabilities, labels, macro, settings=FAST)
    assert result["difference"]["value"] > 0 and result["difference"]["ci"][0] > 0
    assert result["difference"]["p_value_two_sided"] < 0.05
    per_a = [roc_auc_score(labels.targets[:, j], better[:, j]) for j in range(3)]
    per_b = [roc_auc_score(labels.targets[:, j], probabilities[:, j]) for j in range(3)]
    expected = stats.ttest_rel(per_a, per_b)
    assert result["t_test"]["statistic"] == pytest.approx(expected.statistic, rel=1e-5)
    assert (
        result["t_test"]["p_value"] == pytest.approx(expected.pvalue, rel=1e-5)
        and result["t_test"]["df"] == 2
    )
    with pytest.raises(ValueError, match="not estimable"):
        paired_comparison(better, probabilities, labels, [LABELS[4]], settings=FAST)


def test_thresholds_youden_and_f1_by_hand() -> None:
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    positive = np.array([False, False, True, True])
    youden = choose_threshold(scores, positive, method="youden", chosen_on="valid")
    # J: 0.8 -> .5 - 0 = .5; 0.4 -> .5 - .5 = 0; 0.35 -> 1 - .5 = .5 (tie: the higher threshold); 0.1 -> 0
    assert (youden.value, youden.sensitivity, youden.specificity) == (0.8, 0.5, 1.0)
    f1 = choose_threshold(scores, positive, method="f1", chosen_on="valid")
    # F1: 0.8 -> 2/3; 0.4 -> 1/2; 0.35 -> 4/5; 0.1 -> 2/3
    assert (f1.value, f1.sensitivity, f1.precision) == (0.35, 1.0, pytest.approx(2 / 3, abs=1e-6))
    with pytest.raises(ValueError, match="positives and negatives"):
        choose_threshold(scores, np.ones(4, dtype=bool), method="youden", chosen_on="valid")
    with pytest.raises(ValueError, match="threshold method"):
        choose_threshold(scores, positive, method="accuracy", chosen_on="valid")
