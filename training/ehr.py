"""Static EHR features by name, their encoding, and the imputer for missing values.

Encodings (the paper's Table 1):

========== ============================== ======================================
feature    columns                        encoding
========== ============================== ======================================
age        age                            (age - age_min) / (age_max - age_min)
sex        sex_M, sex_F                   one-hot
view       view_AP/PA/LATERAL/LL          one-hot
position   position_erect/recumbent       one-hot
icu        icu                            0 / 1
mortality  mortality                      0 / 1
========== ============================== ======================================

Groups: ``D`` = age + sex, ``SM`` = view + position, ``SI`` = icu + mortality, ``all``.
An unknown value makes all of its feature's columns missing (NaN); the missing values are
filled by scikit-learn's IterativeImputer around a random forest, fitted on training-split
rows only and saved with the run (``EHRPipeline.save``). The imputer always reads every
feature, whichever are chosen, so that a single chosen feature (``age``, ``sex`` ...) is
still predicted from the others rather than filled with a column mean.

The paper's extraction imputed only view and position, each from the other; its other
features had no gaps left to fill (a MIMIC study outside every admission got mortality 0,
below). Imputing every feature from all six is this project's choice: it also covers patients
absent from MIMIC-IV and the other data sets' gaps.

Imputed values of categorical features are valid categories, as the paper's were: a one-hot
feature (sex, view, position) gets a 1 in its highest-scoring column and 0 elsewhere, a 0/1
feature (icu, mortality) is rounded at 0.5; age stays a number. (The forest regresses each
column on its own, so without this a view could be 0.3 AP + 0.6 PA.)

``mortality_outside_admission``: a MIMIC row with a recorded ``icu`` (its patient is in
MIMIC-IV) but blank ``mortality`` is a study outside every admission (``build-manifest
mimic``). ``zero`` (default, the paper's extraction) encodes it as 0, not an in-hospital
death; ``impute`` leaves it missing for the imputer. Blank mortality anywhere else (a patient
absent from MIMIC-IV, other data sets) is always imputed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.data.manifest import POSITIONS, SEXES, VIEWS, ManifestRow

log = logging.getLogger(__name__)

FEATURES: dict[str, tuple[str, ...]] = {
    "age": ("age",),
    "sex": tuple(f"sex_{s}" for s in SEXES),
    "view": tuple(f"view_{v}" for v in VIEWS),
    "position": tuple(f"position_{p}" for p in POSITIONS),
    "icu": ("icu",),
    "mortality": ("mortality",),
}
ONE_HOT = ("sex", "view", "position")
BINARY = ("icu", "mortality")
MORTALITY_POLICIES = ("zero", "impute")
GROUPS: dict[str, tuple[str, ...]] = {
    "D": ("age", "sex"),
    "SM": ("view", "position"),
    "SI": ("icu", "mortality"),
    "all": tuple(FEATURES),
}


def resolve_features(names: Iterable[str]) -> tuple[str, ...]:
    """Feature and group names -> distinct feature names in the canonical order."""
    chosen: set[str] = set()
    for name in names:
        if name in GROUPS:
            chosen.update(GROUPS[name])
        elif name in FEATURES:
            chosen.add(name)
        else:
            raise ValueError(
                f"unknown EHR feature {name!r}; features: {sorted(FEATURES)}, groups: {sorted(GROUPS)}"
            )
    return tuple(f for f in FEATURES if f in chosen)


def encoded_columns(features: Sequence[str]) -> tuple[str, ...]:
    return tuple(column for feature in features for column in FEATURES[feature])


def encode(
    rows: Sequence[ManifestRow],
    features: Sequence[str],
    *,
    age_min: float,
    age_max: float,
    mortality_outside_admission: str = "impute",
) -> np.ndarray:
    """[len(rows), n columns] float64, NaN where a value is unknown (see the module docstring
    for ``mortality_outside_admission``)."""
    if mortality_outside_admission not in MORTALITY_POLICIES:
        raise ValueError(
            f"mortality_outside_admission must be one of {MORTALITY_POLICIES}, "
            f"got {mortality_outside_admission!r}"
        )
    blocks = [
        _encode_feature(rows, f, age_min=age_min, age_max=age_max, mortality=mortality_outside_admission)
        for f in features
    ]
    if not blocks:
        return np.zeros((len(rows), 0))
    return np.concatenate(blocks, axis=1)


def outside_admission(row: ManifestRow) -> bool:
    """A MIMIC study of a patient in MIMIC-IV that no admission contains (``build-manifest mimic``
    records icu for every patient it finds in MIMIC-IV and mortality only inside an admission)."""
    return row.dataset == "mimic" and row.mortality is None and row.icu is not None


def _encode_feature(
    rows: Sequence[ManifestRow], feature: str, *, age_min: float, age_max: float, mortality: str
) -> np.ndarray:
    if feature == "age":
        ages = [np.nan if r.age is None else (r.age - age_min) / (age_max - age_min) for r in rows]
        return np.asarray(ages, dtype=np.float64)[:, None]
    if feature in BINARY:
        values = [
            0
            if feature == "mortality" and mortality == "zero" and outside_admission(r)
            else getattr(r, feature)
            for r in rows
        ]
        return np.asarray([np.nan if v is None else float(v) for v in values], dtype=np.float64)[:, None]
    vocabulary = {"sex": SEXES, "view": VIEWS, "position": POSITIONS}[feature]
    return np.stack([_one_hot(getattr(r, feature), vocabulary) for r in rows]).reshape(
        len(rows), len(vocabulary)
    )


def _one_hot(value: str, vocabulary: tuple[str, ...]) -> np.ndarray:
    if value == "":
        return np.full(len(vocabulary), np.nan)
    return np.asarray([1.0 if value == item else 0.0 for item in vocabulary])


@dataclass
class EHRPipeline:
    """Encoding + imputation of the chosen features; ``imputer`` is None when nothing was missing."""

    features: tuple[str, ...]
    age_min: float
    age_max: float
    imputer: Any = None
    fit_summary: dict[str, Any] | None = None
    imputer_features: tuple[str, ...] = tuple(FEATURES)  # what the imputer reads (runs before the
    # fix imputed only the chosen features: their saved encoding.json has no imputer_features)
    mortality_outside_admission: str = "zero"  # see the module docstring (older runs: impute)
    valid_categories: bool = True  # imputed categorical values made valid categories (older
    # runs kept the forest's fractional values: their encoding.json says neither, and resume so)

    @property
    def columns(self) -> tuple[str, ...]:
        return encoded_columns(self.features)

    def _encode(self, rows: Sequence[ManifestRow]) -> np.ndarray:
        return encode(
            rows,
            self.imputer_features,
            age_min=self.age_min,
            age_max=self.age_max,
            mortality_outside_admission=self.mortality_outside_admission,
        )

    def _chosen(self, full: np.ndarray) -> np.ndarray:
        all_columns = encoded_columns(self.imputer_features)
        return full[:, [all_columns.index(column) for column in self.columns]]

    @classmethod
    def fit(
        cls,
        train_rows: Sequence[ManifestRow],
        features: Sequence[str],
        *,
        age_min: float,
        age_max: float,
        trees: int,
        max_iter: int,
        fit_rows: int,
        seed: int,
        mortality_outside_admission: str = "zero",
    ) -> EHRPipeline:
        """Fit the imputer on ``train_rows`` (the training split, never valid or test)."""
        if any(row.split != "train" for row in train_rows):
            raise ValueError("the EHR imputer must be fitted on training-split rows only")
        pipeline = cls(
            tuple(features), age_min, age_max, mortality_outside_admission=mortality_outside_admission
        )
        full = pipeline._encode(train_rows)
        if len(full) > fit_rows:
            full = full[np.random.default_rng(seed).choice(len(full), fit_rows, replace=False)]
        matrix = pipeline._chosen(full)
        pipeline.fit_summary = _missing_summary(matrix, pipeline.columns)
        if matrix.size and np.isnan(matrix).any():
            pipeline.imputer = _sequential_predictions(
                _make_imputer(trees=trees, max_iter=max_iter, seed=seed).fit(full)
            )
        return pipeline

    def transform(self, rows: Sequence[ManifestRow]) -> np.ndarray:
        """[len(rows), n] float32 with no missing values."""
        full = self._encode(rows)
        matrix = self._chosen(full)
        if self.imputer is not None and np.isnan(matrix).any():
            filled = self.imputer.transform(full)
            if self.valid_categories:
                filled = to_categories(filled, np.isnan(full), self.imputer_features)
            matrix = self._chosen(filled)
        if np.isnan(matrix).any():
            raise ValueError(
                "EHR values are missing but the imputer saw no missing values at fit time: "
                "refit it on training rows that include missing values"
            )
        return matrix.astype(np.float32)

    def save(self, folder: Path) -> None:
        """Write imputer.joblib, then encoding.json (its presence means both are complete)."""
        import io

        import joblib

        from cxrmsn.fileio import atomic_write_bytes, atomic_write_text

        buffer = io.BytesIO()
        joblib.dump(self.imputer, buffer)
        atomic_write_bytes(folder / "imputer.joblib", buffer.getvalue())
        atomic_write_text(folder / "encoding.json", json.dumps(self._description(), indent=2))

    @classmethod
    def load(cls, folder: Path) -> EHRPipeline:
        """Load what ``save`` wrote (a joblib pickle: only load files your own runs wrote)."""
        import joblib

        description = json.loads((folder / "encoding.json").read_text())
        return cls(
            features=tuple(description["features"]),
            age_min=float(description["age_min"]),
            age_max=float(description["age_max"]),
            imputer=joblib.load(folder / "imputer.joblib"),
            fit_summary=description["fit_summary"],
            imputer_features=tuple(description.get("imputer_features", description["features"])),
            mortality_outside_admission=description.get("mortality_outside_admission", "impute"),
            valid_categories=bool(description.get("valid_categories", False)),
        )

    def _description(self) -> dict[str, Any]:
        import sklearn

        return {
            "features": list(self.features),
            "columns": list(self.columns),
            "imputer_features": list(self.imputer_features),
            "mortality_outside_admission": self.mortality_outside_admission,
            "valid_categories": self.valid_categories,
            "age_min": self.age_min,
            "age_max": self.age_max,
            "imputer": None if self.imputer is None else repr(self.imputer),
            "sklearn_version": sklearn.__version__,
            "fit_summary": self.fit_summary,
        }


def to_categories(filled: np.ndarray, missing: np.ndarray, features: Sequence[str]) -> np.ndarray:
    """Imputed values of categorical features made valid: one-hot features get a 1 in their
    highest-scoring column (the first among ties) and 0 elsewhere, 0/1 features are rounded at
    0.5. Only the (row, feature) pairs that were ``missing`` change; age is left as it is."""
    result = filled.copy()
    start = 0
    for feature in features:
        width = len(FEATURES[feature])
        block = slice(start, start + width)
        rows = missing[:, block].any(axis=1)
        if rows.any() and feature in ONE_HOT:
            result[rows, block] = np.eye(width)[np.argmax(filled[rows, block], axis=1)]
        elif rows.any() and feature in BINARY:
            result[rows, block] = (filled[rows, block] >= 0.5).astype(result.dtype)
        start += width
    return result


def _make_imputer(*, trees: int, max_iter: int, seed: int) -> Any:
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401
    from sklearn.impute import IterativeImputer

    forest = RandomForestRegressor(n_estimators=trees, random_state=seed, n_jobs=-1)  # seeded per tree
    return IterativeImputer(estimator=forest, max_iter=max_iter, random_state=seed, keep_empty_features=True)


def _sequential_predictions(imputer: Any) -> Any:
    """Predict with one job: a forest's parallel predictions add up trees in any order,
    which would make the imputed values (and so a resumed run) differ in the last bits."""
    for step in imputer.imputation_sequence_:
        step.estimator.set_params(n_jobs=1)
    return imputer


def _missing_summary(matrix: np.ndarray, columns: tuple[str, ...]) -> dict[str, Any]:
    missing = np.isnan(matrix).mean(axis=0) if len(matrix) else np.zeros(len(columns))
    return {
        "rows": len(matrix),
        "missing_fraction": {c: round(float(m), 4) for c, m in zip(columns, missing, strict=True)},
    }
