"""EHR features: names and groups, encodings, the imputer fitted on training rows only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.data.manifest import ManifestRow
from training.ehr import EHRPipeline, encode, encoded_columns, resolve_features

FIT = {"age_min": 16.0, "age_max": 100.0, "trees": 10, "max_iter": 5, "fit_rows": 1000, "seed": 0}


def _row(i: int, split: str = "train", **kwargs: object) -> ManifestRow:
    return ManifestRow(path=f"{i}.png", patient_id=str(i), split=split, dataset="x", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("names", "features"),
    [
        (["D"], ("age", "sex")),
        (["SM"], ("view", "position")),
        (["SI"], ("icu", "mortality")),
        (["mortality", "age", "D"], ("age", "sex", "mortality")),
        (["all"], ("age", "sex", "view", "position", "icu", "mortality")),
        ([], ()),
    ],
)
def test_features_and_groups_resolve_in_canonical_order(names: list[str], features: tuple[str, ...]) -> None:
    assert resolve_features(names) == features


def test_unknown_feature_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown EHR feature"):
        resolve_features(["bmi"])


def test_encoding_by_hand() -> None:
    rows = [
        _row(0, age=58.0, sex="F", view="LL", position="recumbent", icu=1, mortality=0),
        _row(1),  # everything unknown
    ]
    features = resolve_features(["all"])
    matrix = encode(rows, features, age_min=16, age_max=100)
    assert encoded_columns(features) == (
        "age", "sex_M", "sex_F", "view_AP", "view_PA", "view_LATERAL", "view_LL",
        "position_erect", "position_recumbent", "icu", "mortality",
    )  # fmt: skip
    np.testing.assert_allclose(matrix[0], [0.5, 0, 1, 0, 0, 0, 1, 0, 1, 1, 0])
    assert np.isnan(matrix[1]).all()


def _training_rows(count: int = 60) -> list[ManifestRow]:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(count):
        old = i % 2 == 0
        rows.append(
            _row(
                i,
                age=None if i % 7 == 0 else float(80 if old else 30) + float(rng.normal(0, 2)),
                sex="" if i % 11 == 0 else ("M" if old else "F"),
                icu=None if i % 5 == 0 else int(old),
            )
        )
    return rows


def test_imputer_fills_missing_values_from_related_features() -> None:
    rows = _training_rows()
    pipeline = EHRPipeline.fit(rows, ("age", "sex", "icu"), **FIT)  # type: ignore[arg-type]
    filled = pipeline.transform(rows)
    assert filled.dtype == np.float32 and not np.isnan(filled).any()
    old_missing_age = [i for i, r in enumerate(rows) if r.age is None and r.sex == "M"]
    young_missing_age = [i for i, r in enumerate(rows) if r.age is None and r.sex == "F"]
    assert (
        filled[old_missing_age, 0].min() > filled[young_missing_age, 0].max()
    )  # the forest used sex and icu
    known = [(i, r.age) for i, r in enumerate(rows) if r.age is not None]
    expected = np.asarray([(age - 16) / 84 for _, age in known])
    np.testing.assert_allclose(filled[[i for i, _ in known], 0], expected, rtol=1e-6)
    assert pipeline.fit_summary is not None and pipeline.fit_summary["missing_fraction"][
        "icu"
    ] == pytest.approx(0.2)


def test_a_single_chosen_feature_is_imputed_from_the_other_features() -> None:
    rows = _training_rows()
    pipeline = EHRPipeline.fit(rows, ("age",), **FIT)  # type: ignore[arg-type]
    filled = pipeline.transform(rows)
    assert filled.shape == (60, 1) and not np.isnan(filled).any()
    old = [i for i, r in enumerate(rows) if r.age is None and r.sex == "M"]
    young = [i for i, r in enumerate(rows) if r.age is None and r.sex == "F"]
    assert old and young and filled[old, 0].min() > filled[young, 0].max()  # not the column mean


def test_imputer_is_fitted_on_training_rows_only() -> None:
    with pytest.raises(ValueError, match="training-split rows only"):
        EHRPipeline.fit([*_training_rows(), _row(99, "valid", age=40.0)], ("age",), **FIT)  # type: ignore[arg-type]


def test_a_feature_missing_everywhere_is_kept_as_a_column() -> None:
    rows = _training_rows()
    pipeline = EHRPipeline.fit(rows, ("age", "mortality"), **FIT)  # type: ignore[arg-type]
    filled = pipeline.transform(rows)
    assert filled.shape == (60, 2) and not np.isnan(filled).any()


def test_no_missing_values_needs_no_imputer_and_refuses_missing_later() -> None:
    rows = [_row(i, age=20.0 + i, sex="M") for i in range(5)]
    pipeline = EHRPipeline.fit(rows, ("age", "sex"), **FIT)  # type: ignore[arg-type]
    assert pipeline.imputer is None
    with pytest.raises(ValueError, match="imputer"):
        pipeline.transform([_row(9, sex="F")])


def test_save_and_load_give_the_same_transform(tmp_path: Path) -> None:
    rows = _training_rows()
    pipeline = EHRPipeline.fit(rows, ("age", "sex", "icu"), **FIT)  # type: ignore[arg-type]
    pipeline.save(tmp_path / "ehr")
    loaded = EHRPipeline.load(tmp_path / "ehr")
    assert loaded.features == pipeline.features and loaded.columns == pipeline.columns
    np.testing.assert_array_equal(loaded.transform(rows), pipeline.transform(rows))
    # fitted with every core, predicting with one: the same values on every rank and resume
    assert {step.estimator.n_jobs for step in loaded.imputer.imputation_sequence_} == {1}
