"""The paper's data handling (issue 16): EHR imputation and mortality, MIMIC split file, the
whole-film image cache, the CheXpert test set layout and NIH's own findings."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from cxrmsn.labels import LABELS
from tests.helpers import SHARED_DATA, chest_like_picture, requires_shared_data, to_jpeg, to_png
from tests.training.test_builders import MIMIC_IMAGES, _mimic_roots, _nih_root, _write_csv
from training import manifest_command
from training.config import EHRConfig, PretrainConfig
from training.configs import named_config
from training.data.cache import CACHE_FORMAT, cache_key, load_or_build_cache
from training.data.chexpert import build_chexpert
from training.data.dataset import PretrainDataset
from training.data.manifest import ManifestRow, check_patient_disjoint
from training.data.mimic import build_mimic
from training.data.nih import NIH_FINDING_HEADS, NIH_FINDINGS, read_nih_findings
from training.ehr import FEATURES, EHRPipeline, encode, encoded_columns, resolve_features
from training.msn.views import MultiView, MultiViewTransform

FIT = {"age_min": 16.0, "age_max": 100.0, "trees": 10, "max_iter": 5, "fit_rows": 1000, "seed": 0}


def _row(i: int, split: str = "train", dataset: str = "x", **kwargs: object) -> ManifestRow:
    return ManifestRow(path=f"{i}.png", patient_id=str(i), split=split, dataset=dataset, **kwargs)  # type: ignore[arg-type]


# -- EHR: imputed categorical values are valid categories -------------------------------------


def _scan_rows(count: int = 80) -> list[ManifestRow]:
    """View and position related to each other and to age; some of each missing."""
    rng = np.random.default_rng(1)
    rows = []
    for i in range(count):
        lying = i % 3 == 0
        rows.append(
            _row(
                i,
                age=float(85 if lying else 35) + float(rng.normal(0, 3)),
                sex="M" if i % 2 else "F",
                view="" if i % 5 == 0 else ("AP" if lying else ("PA" if i % 4 else "LATERAL")),
                position="" if i % 7 == 0 else ("recumbent" if lying else "erect"),
                icu=None if i % 6 == 0 else int(lying),
                mortality=None if i % 4 == 0 else int(lying and i % 9 == 0),
            )
        )
    return rows


@pytest.mark.parametrize("names", [("SM",), ("all",), ("view",)])
def test_imputed_categorical_values_are_valid_categories(names: tuple[str, ...]) -> None:
    rows = _scan_rows()
    features = resolve_features(names)
    pipeline = EHRPipeline.fit(rows, features, **FIT)  # type: ignore[arg-type]
    filled = pipeline.transform(rows)
    columns = encoded_columns(features)
    start = 0
    for feature in features:
        block = filled[:, start : start + len(FEATURES[feature])]
        if feature in ("sex", "view", "position"):
            assert set(np.unique(block)) <= {0.0, 1.0} and (block.sum(axis=1) == 1).all(), feature
        elif feature in ("icu", "mortality"):
            assert set(np.unique(block)) <= {0.0, 1.0}, feature
        start += len(FEATURES[feature])
    # known values are kept as they are
    known = encode(rows, features, age_min=16, age_max=100)
    present = ~np.isnan(known)
    np.testing.assert_allclose(filled[present], known[present], rtol=1e-6)
    assert filled.shape == (len(rows), len(columns))


def test_imputed_views_follow_the_related_features() -> None:
    rows = _scan_rows()
    pipeline = EHRPipeline.fit(rows, ("view", "position"), **FIT)  # type: ignore[arg-type]
    filled = pipeline.transform(rows)
    missing_view_lying = [i for i, r in enumerate(rows) if r.view == "" and r.position == "recumbent"]
    assert missing_view_lying
    assert (filled[missing_view_lying, 0] == 1).all()  # imputed AP, as every recumbent film here


def test_runs_saved_before_the_fix_keep_their_fractional_values(tmp_path: Path) -> None:
    rows = _scan_rows()
    pipeline = EHRPipeline.fit(rows, ("view",), **FIT)  # type: ignore[arg-type]
    pipeline.save(tmp_path / "ehr")
    description = json.loads((tmp_path / "ehr" / "encoding.json").read_text())
    assert description["valid_categories"] is True and description["mortality_outside_admission"] == "zero"
    for key in ("valid_categories", "mortality_outside_admission"):  # an encoding.json of an older run
        del description[key]
    (tmp_path / "ehr" / "encoding.json").write_text(json.dumps(description))
    old = EHRPipeline.load(tmp_path / "ehr")
    assert old.valid_categories is False and old.mortality_outside_admission == "impute"
    fractional = old.transform(rows)
    assert not set(np.unique(fractional)) <= {0.0, 1.0}  # what such a run trained on; a resume keeps it


# -- EHR: mortality of MIMIC studies outside every admission ----------------------------------


def test_mortality_outside_admissions_is_zero_under_the_paper_and_imputed_on_request(tmp_path: Path) -> None:
    rows = {Path(r.path).stem: r for r in build_mimic(*_mimic_roots(tmp_path))}
    outside, absent = rows["b1"], rows["c1"]  # b1: no admission contains it; c1: not in MIMIC-IV
    assert (outside.mortality, outside.icu, absent.mortality, absent.icu) == (None, 0, None, None)
    paper = encode(
        [outside, absent], ("mortality",), age_min=16, age_max=100, mortality_outside_admission="zero"
    )
    assert paper[0, 0] == 0.0 and np.isnan(paper[1, 0])  # a patient absent from MIMIC-IV is still imputed
    imputed = encode([outside], ("mortality",), age_min=16, age_max=100, mortality_outside_admission="impute")
    assert np.isnan(imputed[0, 0])
    # through the pipeline: fitted on training rows without a gap, the outside study needs no imputer
    train = [r for r in rows.values() if r.split == "train"]
    as_paper = EHRPipeline.fit(train, ("mortality",), **FIT, mortality_outside_admission="zero")  # type: ignore[arg-type]
    assert as_paper.transform([outside]).tolist() == [[0.0]]
    as_project = EHRPipeline.fit(train, ("mortality",), **FIT, mortality_outside_admission="impute")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="imputer"):
        as_project.transform([outside])


def test_other_data_sets_blank_mortality_is_never_set_to_zero() -> None:
    covid = _row(1, dataset="covid", icu=1)  # icu known, mortality unknown: not a MIMIC study
    assert np.isnan(
        encode([covid], ("mortality",), age_min=16, age_max=100, mortality_outside_admission="zero")
    ).all()


def test_the_paper_configs_zero_mortality_outside_admissions() -> None:
    assert EHRConfig().mortality_outside_admission == "zero"
    assert named_config("vit_t-SI").ehr.mortality_outside_admission == "zero"
    assert PretrainConfig().ehr.mortality_outside_admission == "zero"
    with pytest.raises(ValueError, match="mortality_outside_admission"):
        EHRConfig(mortality_outside_admission="one")


# -- MIMIC: the paper's split file ------------------------------------------------------------


def _medfuse_split(path: Path) -> Path:
    """MIMIC-CXR's split columns with the patients reassigned (as MedFuse's file does)."""
    moved = {"10000032": "test", "10000764": "train", "10001000": "validate"}
    rows = [[d, study, subject, moved[subject]] for d, subject, study, *_ in MIMIC_IMAGES]
    _write_csv(path, ["dicom_id", "study_id", "subject_id", "split"], rows)
    return path


def test_the_split_file_replaces_the_official_split(tmp_path: Path) -> None:
    cxr, iv = _mimic_roots(tmp_path)
    official = {r.patient_id: r.split for r in build_mimic(cxr, iv)}
    assert official == {"10000032": "train", "10000764": "valid", "10001000": "test"}
    rows = build_mimic(cxr, iv, split_file=_medfuse_split(tmp_path / "mimic-cxr-ehr-split.csv"))
    check_patient_disjoint(rows)
    assert {r.patient_id: r.split for r in rows} == {
        "10000032": "test",
        "10000764": "train",
        "10001000": "valid",
    }


def test_a_split_file_must_cover_every_image_with_known_split_names(tmp_path: Path) -> None:
    cxr, iv = _mimic_roots(tmp_path)
    short = tmp_path / "short.csv"
    _write_csv(short, ["dicom_id", "split"], [["a1", "train"]])
    with pytest.raises(ValueError, match="not in the split file"):
        build_mimic(cxr, iv, split_file=short)
    odd = tmp_path / "odd.csv"
    _write_csv(odd, ["dicom_id", "split"], [[d, "val"] for d, *_ in MIMIC_IMAGES])
    with pytest.raises(ValueError, match="split must be one of"):
        build_mimic(cxr, iv, split_file=odd)


def test_the_manifest_summary_says_which_split_was_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cxr, iv = _mimic_roots(tmp_path)
    parser = argparse.ArgumentParser()
    manifest_command.add_arguments(parser)
    common = ["mimic", "--root", str(cxr), "--mimic-iv-root", str(iv)]
    assert manifest_command.run(parser.parse_args([*common, "--out", str(tmp_path / "a.csv")])) == 0
    assert json.loads(capsys.readouterr().out)["split"].startswith("official MIMIC-CXR split")
    split_file = _medfuse_split(tmp_path / "mimic-cxr-ehr-split.csv")
    args = parser.parse_args([*common, "--split-file", str(split_file), "--out", str(tmp_path / "b.csv")])
    assert manifest_command.run(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert str(split_file) in summary["split"] and summary["patients"] == {"test": 1, "train": 1, "valid": 1}
    wrong = parser.parse_args(
        ["nih", "--root", str(tmp_path), "--split-file", "x", "--out", str(tmp_path / "c.csv")]
    )
    assert manifest_command.run(wrong) == 2 and "mimic only" in capsys.readouterr().err


# -- the image cache keeps the whole film -----------------------------------------------------


def _portrait(folder: Path) -> Path:
    """A 200 x 100 portrait film: mid-grey, white top band, black bottom band."""
    pixels = np.full((200, 100), 128, np.uint8)
    pixels[:20] = 255
    pixels[-20:] = 0
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "portrait.png").write_bytes(to_png(pixels))
    return folder / "portrait.png"


def test_the_cache_keeps_the_whole_portrait_film(tmp_path: Path) -> None:
    path = _portrait(tmp_path / "img")
    whole = load_or_build_cache([path], 64, tmp_path / "cache", layout="whole")
    assert whole.images.shape == (1, 64, 64) and whole.boxes.tolist() == [[0, 16, 64, 32]]
    film = whole.images[0, :, 16:48]
    assert film[:4].min() >= 250 and film[-4:].max() <= 5  # both bands are there
    assert whole.images[0, :, :15].max() == 0 and whole.images[0, :, 49:].max() == 0  # padding
    crop = load_or_build_cache([path], 64, tmp_path / "cache", layout="crop")
    assert crop.boxes.tolist() == [[0, 0, 64, 64]]
    assert 100 < crop.images[0, :8].mean() < 160 and 100 < crop.images[0, -8:].mean() < 160  # bands cut off


def test_the_cache_key_changes_with_the_format_and_the_layout(tmp_path: Path) -> None:
    path = _portrait(tmp_path / "img")
    assert CACHE_FORMAT == 2  # format 1 (centre crop only, no boxes) is never read
    assert cache_key([path], 64, "whole") != cache_key([path], 64, "crop")
    with pytest.raises(ValueError, match="layout"):
        load_or_build_cache([path], 64, tmp_path / "cache", layout="square")


class _Recorder(MultiViewTransform):
    def __init__(self) -> None:
        from training.config import ViewsConfig

        super().__init__(ViewsConfig(target_size=32, rand_size=32, focal_views=1, focal_size=16))
        self.seen: list[np.ndarray] = []

    def __call__(self, image: np.ndarray, generator: object = None) -> MultiView:
        self.seen.append(image)
        return super().__call__(image)


def test_pretraining_views_are_drawn_from_the_film_not_its_padding(tmp_path: Path) -> None:
    path = _portrait(tmp_path / "img")
    cache = load_or_build_cache([path], 64, tmp_path / "cache", layout="whole")
    transform = _Recorder()
    dataset = PretrainDataset(cache.images, np.arange(1), transform, boxes=cache.boxes)
    item = dataset[0]
    assert item["target"].shape == (3, 32, 32)
    assert transform.seen[0].shape == (64, 32)  # the film, its aspect ratio kept
    assert transform.seen[0][:4].min() >= 250 and transform.seen[0][-4:].max() <= 5
    with pytest.raises(ValueError, match="boxes"):
        PretrainDataset(cache.images, np.arange(1), transform, boxes=np.zeros((2, 4), np.int32))


# -- CheXpert: the test set's test_labels.csv layout ------------------------------------------

TEST_LABELS_ORDER = [
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
]  # fmt: skip


def test_chexpert_test_labels_layout_becomes_the_test_split(tmp_path: Path) -> None:
    from tests.training.test_builders import _chexpert_root

    root = _chexpert_root(tmp_path)
    test_folder = tmp_path / "chexpert-test"
    rows = []
    for patient in (64741, 64742):
        for view in ("view1_frontal", "view2_lateral"):
            relative = f"test/patient{patient}/study1/{view}.jpg"
            (test_folder / relative).parent.mkdir(parents=True, exist_ok=True)
            (test_folder / relative).write_bytes(to_jpeg(chest_like_picture(40, 32, seed=patient)))
            rows.append(
                [
                    relative,
                    *("1" if n == "Cardiomegaly" and patient == 64741 else "0" for n in TEST_LABELS_ORDER),
                ]
            )
    with open(test_folder / "test_labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Path", *TEST_LABELS_ORDER])
        writer.writerows(rows)
    built = build_chexpert(root, valid_fraction=0.2, seed=0, test_csv=test_folder / "test_labels.csv")
    check_patient_disjoint(built)
    test = [r for r in built if r.split == "test"]
    assert {r.patient_id for r in test} == {"patient64741", "patient64742"} and len(test) == 4
    assert all(Path(r.path).is_file() for r in test)
    assert [r.view for r in test] == ["", "LATERAL", "", "LATERAL"]  # frontal: AP/PA not given
    cardio = LABELS.index("Cardiomegaly")
    assert [r.labels[cardio] for r in test] == [1.0, 1.0, 0.0, 0.0] and all(
        None not in r.labels for r in test
    )
    default = build_chexpert(root, valid_fraction=0.2, seed=0)  # valid.csv, as before
    assert {r.patient_id for r in default if r.split == "test"} == {"patient64541", "patient64542"}


# -- NIH: its own 14 findings -----------------------------------------------------------------


def test_nih_findings_are_read_per_image_from_the_data_entry_table(tmp_path: Path) -> None:
    root = _nih_root(tmp_path)
    findings = read_nih_findings(root / "Data_Entry_2017.csv")
    assert len(findings) == 24
    assert findings["00000001_000.png"] == {"Effusion", "Infiltration"}
    assert findings["00000002_001.png"] == frozenset()  # No Finding
    assert findings["00000004_000.png"] == {"Nodule", "Cardiomegaly"}
    assert len(NIH_FINDINGS) == len(set(NIH_FINDINGS)) == 14
    unscored = {f for f, head in NIH_FINDING_HEADS.items() if head is None}
    assert unscored == {"Infiltration", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia"}
    assert NIH_FINDING_HEADS["Mass"] == NIH_FINDING_HEADS["Nodule"] == "Lung Lesion"
    bad = tmp_path / "bad.csv"
    _write_csv(bad, ["Image Index", "Finding Labels"], [["x.png", "Pneumonia|Covid"]])
    with pytest.raises(ValueError, match="unknown NIH findings"):
        read_nih_findings(bad)


@requires_shared_data
def test_nih_findings_of_the_shared_nih1000_set() -> None:
    findings = read_nih_findings(SHARED_DATA / "nih1000" / "labels.csv")
    assert len(findings) == 826
    counts = {f: sum(f in found for found in findings.values()) for f in NIH_FINDINGS}
    assert counts["Infiltration"] == 144 and counts["Hernia"] == 8  # the README's counts
