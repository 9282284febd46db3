"""Manifest labels -> training targets and masks, under a stated policy.

Manifest values: ``1`` present, ``0`` absent, ``-1`` uncertain, blank = not annotated by
the source (never the same as ``0`` in the manifest). For every image and label this module
gives a target in {0, 1} and a mask saying whether the pair counts at all:

- uncertain (-1): ``zeros`` (the paper's code: counted as absent), ``ones`` (counted as
  present) or ``ignore`` (masked out);
- blank: ``zeros`` (the paper's code, ``fillna(0)``: in MIMIC-CXR's CheXpert file a blank
  means "not mentioned in the report", and No Finding is only ever 1 or blank, so its
  negatives are all blanks) or ``masked`` (out of the loss and of every metric; opt back in
  per data set with ``blank_zero_datasets``).

Two guards keep ``zeros`` from inventing negatives the paper never had: a blank becomes 0
only for labels the image's data set annotates somewhere (NIH never annotates Fracture, and
its blanks there stay masked), and an image with no label at all (a MIMIC study absent from
the CheXpert file, which the paper's inner join dropped) stays entirely masked. On MIMIC the
result equals the paper's.

Named policies (``policy_name``): ``paper`` = blank zeros + uncertain zeros; ``masked`` =
blank masked + uncertain zeros; anything else is ``custom``.

A label is *estimable* on a set of images when the masked targets hold at least one
positive and one negative; otherwise its AUROC and AUPRC are reported as not estimable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cxrmsn.labels import LABELS, NUM_LABELS
from training.data.manifest import ManifestRow

UNCERTAIN_POLICIES = ("zeros", "ones", "ignore")
BLANK_POLICIES = ("zeros", "masked")


@dataclass(frozen=True)
class LabelMatrix:
    targets: np.ndarray  # float32 [N, 14] in {0, 1} (0 where masked)
    mask: np.ndarray  # bool [N, 14]: the pair counts in the loss and the metrics

    def __post_init__(self) -> None:
        if self.targets.shape != self.mask.shape or self.targets.ndim != 2:
            raise ValueError(f"targets and mask must be [N, L], got {self.targets.shape}, {self.mask.shape}")

    def subset(self, indices: np.ndarray) -> LabelMatrix:
        return LabelMatrix(self.targets[indices], self.mask[indices])


def annotated_labels(rows: Sequence[ManifestRow]) -> dict[str, set[int]]:
    """Per data set, the label indices with at least one non-blank value."""
    seen: dict[str, set[int]] = {}
    for row in rows:
        labels = seen.setdefault(row.dataset, set())
        labels.update(i for i, value in enumerate(row.labels) if value is not None)
    return seen


def check_policy(blank: str, uncertain: str, blank_zero_datasets: Sequence[str]) -> None:
    if blank not in BLANK_POLICIES:
        raise ValueError(f"blank policy must be one of {BLANK_POLICIES}, got {blank!r}")
    if uncertain not in UNCERTAIN_POLICIES:
        raise ValueError(f"uncertain policy must be one of {UNCERTAIN_POLICIES}, got {uncertain!r}")
    if blank == "zeros" and blank_zero_datasets:
        raise ValueError(
            f"blank_zero_datasets {list(blank_zero_datasets)} only applies with blank=masked "
            "(with blank=zeros every data set's blanks are already 0)"
        )


def label_matrix(
    rows: Sequence[ManifestRow],
    *,
    blank: str = "zeros",
    uncertain: str = "zeros",
    blank_zero_datasets: Sequence[str] = (),
    annotated: dict[str, set[int]] | None = None,
) -> LabelMatrix:
    """Targets and mask for ``rows`` (see the module docstring for the policy; the defaults
    are the paper's).

    ``annotated`` (from ``annotated_labels`` over the whole manifest) decides which labels a
    data set annotates; by default it is computed from ``rows``.
    """
    check_policy(blank, uncertain, blank_zero_datasets)
    annotated = annotated_labels(rows) if annotated is None else annotated
    targets = np.zeros((len(rows), NUM_LABELS), dtype=np.float32)
    mask = np.zeros((len(rows), NUM_LABELS), dtype=bool)
    for i, row in enumerate(rows):
        labelled = any(value is not None for value in row.labels)
        blank_is_zero = labelled and (blank == "zeros" or row.dataset in blank_zero_datasets)
        for j, value in enumerate(row.labels):
            if value is None:
                mask[i, j] = blank_is_zero and j in annotated.get(row.dataset, set())
            elif value == -1.0:
                mask[i, j] = uncertain != "ignore"
                targets[i, j] = 1.0 if uncertain == "ones" else 0.0
            else:
                mask[i, j] = True
                targets[i, j] = value
    return LabelMatrix(targets, mask)


def label_counts(matrix: LabelMatrix) -> dict[str, dict[str, int]]:
    """Per label: images counted (annotated after the policy), positives, negatives."""
    positives = ((matrix.targets == 1) & matrix.mask).sum(axis=0)
    counted = matrix.mask.sum(axis=0)
    return {
        label: {
            "counted": int(counted[j]),
            "positives": int(positives[j]),
            "negatives": int(counted[j] - positives[j]),
        }
        for j, label in enumerate(LABELS)
    }


def estimable(matrix: LabelMatrix) -> np.ndarray:
    """bool [14]: at least one positive and one negative among the counted images."""
    positives = ((matrix.targets == 1) & matrix.mask).sum(axis=0)
    negatives = ((matrix.targets == 0) & matrix.mask).sum(axis=0)
    return (positives > 0) & (negatives > 0)


def not_estimable_reason(counts: dict[str, int], split: str) -> str | None:
    """Why a label's metric cannot be computed on ``split`` (None when it can)."""
    if counts["counted"] == 0:
        return f"not annotated in the {split} split"
    if counts["positives"] == 0:
        return f"no positives in the {split} split"
    if counts["negatives"] == 0:
        return f"no negatives in the {split} split"
    return None


def raw_value_counts(rows: Sequence[ManifestRow]) -> dict[str, dict[str, int]]:
    """Per label, how many rows hold 1, 0, -1 and blank (before any policy)."""
    names = {1.0: "1", 0.0: "0", -1.0: "-1", None: "blank"}
    counts: dict[str, dict[str, int]] = {label: dict.fromkeys(names.values(), 0) for label in LABELS}
    for row in rows:
        for label, value in zip(LABELS, row.labels, strict=True):
            counts[label][names[value]] += 1
    return counts


def policy_name(blank: str, uncertain: str, blank_zero_datasets: Sequence[str]) -> str:
    """``paper``, ``masked`` or ``custom`` (see the module docstring)."""
    if uncertain == "zeros" and blank == "zeros":
        return "paper"
    if uncertain == "zeros" and blank == "masked" and not blank_zero_datasets:
        return "masked"
    return "custom"


def policy_summary(blank: str, uncertain: str, blank_zero_datasets: Sequence[str]) -> dict[str, Any]:
    if blank == "zeros":
        blank_text = (
            "0 (the paper's code) for labels the image's data set annotates somewhere; masked for "
            "labels it never annotates and on images without any label"
        )
    else:
        blank_text = "masked out of the loss and of every metric" + (
            f", except in {list(blank_zero_datasets)} where a blank is 0 for labels that data set annotates"
            if blank_zero_datasets
            else ""
        )
    return {
        "name": policy_name(blank, uncertain, blank_zero_datasets),
        "uncertain": uncertain,
        "blank": blank_text,
    }
