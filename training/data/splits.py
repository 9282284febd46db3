"""Patient-level splits: every image of a patient lands in the same split."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

DEFAULT_FRACTIONS = {"train": 0.7, "valid": 0.15, "test": 0.15}


def split_patients(
    patient_ids: Iterable[str], *, fractions: dict[str, float] | None = None, seed: int = 0
) -> dict[str, str]:
    """Map each distinct patient to a split, shuffled with ``seed``; counts follow ``fractions``.

    Deterministic for a given set of patients and seed (the input order does not matter).
    Every split with a positive fraction gets at least one patient when there are enough.
    """
    fractions = dict(DEFAULT_FRACTIONS if fractions is None else fractions)
    if any(f < 0 for f in fractions.values()) or abs(sum(fractions.values()) - 1) > 1e-6:
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    patients = sorted(set(patient_ids))
    order = np.random.default_rng(seed).permutation(len(patients))
    counts = _split_counts(len(patients), fractions)
    assignment: dict[str, str] = {}
    start = 0
    for split, count in counts.items():
        for index in order[start : start + count]:
            assignment[patients[index]] = split
        start += count
    return assignment


def _split_counts(total: int, fractions: dict[str, float]) -> dict[str, int]:
    names = [name for name, f in fractions.items() if f > 0]
    counts = {name: round(fractions[name] * total) for name in names}
    if total >= len(names):
        for name in names:
            counts[name] = max(counts[name], 1)
    largest = max(names, key=lambda name: fractions[name])
    counts[largest] += total - sum(counts.values())
    return counts
