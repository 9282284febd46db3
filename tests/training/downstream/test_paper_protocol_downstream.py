"""The paper's downstream protocol (issue 16): label policy, evaluation views, ReduceLROnPlateau,
the experiment table's header and NIH's own findings in external validation."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrmsn.labels import LABELS, NUM_LABELS
from cxrmsn.preprocess import PreprocessConfig, normalise
from tests.training.downstream.fixtures import small_config
from tests.training.test_builders import _nih_root
from training.data.manifest import ManifestRow, write_manifest
from training.data.nih import NIH_FINDINGS, build_nih, read_nih_findings
from training.downstream.augment import eval_preprocessing, plain_view, training_view
from training.downstream.config import AugmentConfig, HeadConfig, LabelConfig, named_config
from training.downstream.data import data_summary, prepare_data
from training.downstream.evaluate import evaluate_classifier, nih_finding_metrics
from training.downstream.experiment import results_markdown
from training.downstream.labels import label_matrix
from training.downstream.metrics import BootstrapSettings

NO_FINDING = LABELS.index("No Finding")
OPTIONS: tuple[float | None, ...] = (1.0, 0.0, -1.0, None)

# -- the label policy -------------------------------------------------------------------------


def _mimic_like_rows() -> list[ManifestRow]:
    """Studies as in MIMIC-CXR's CheXpert file: 1, 0, -1 or blank; No Finding only 1 or blank;
    the last study is absent from the file (every label blank)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(40):
        values = [OPTIONS[int(k)] for k in rng.integers(0, len(OPTIONS), NUM_LABELS)]
        finding = i % 2 == 0
        values[NO_FINDING] = 1.0 if finding else None
        rows.append(
            ManifestRow(
                path=f"{i}.jpg",
                patient_id=str(i),
                split=("train", "valid", "test")[i % 3],
                dataset="mimic",
                labels=tuple(values),
            )
        )
    rows.append(ManifestRow(path="unlabelled.jpg", patient_id="99", split="train", dataset="mimic"))
    return rows


def _the_papers_targets(rows: list[ManifestRow]) -> np.ndarray:
    """The paper's code: labels[...].fillna(0); labels.replace(-1.0, 0.0)."""
    raw = np.asarray([[np.nan if v is None else v for v in row.labels] for row in rows], dtype=np.float64)
    return np.where(np.isnan(raw) | (raw == -1.0), 0.0, raw).astype(np.float32)


def test_the_paper_label_policy_is_the_papers_code() -> None:
    rows = _mimic_like_rows()
    config = named_config("paper")
    assert config.labels.policy == "paper"
    matrix = label_matrix(
        rows,
        blank=config.labels.blank,
        uncertain=config.labels.uncertain,
        blank_zero_datasets=config.labels.blank_zero_datasets,
    )
    labelled = slice(0, 40)
    np.testing.assert_array_equal(matrix.targets[labelled], _the_papers_targets(rows[:40]))
    assert matrix.mask[labelled].all()  # every (image, label) counts, as in the paper's BCE
    negatives = (~matrix.targets[labelled, NO_FINDING].astype(bool)).sum()
    assert negatives == sum(r.labels[NO_FINDING] is None for r in rows[:40]) > 0  # No Finding keeps them
    assert not matrix.mask[40].any()  # a study absent from the label file: dropped, as the inner join did


def test_the_masked_policy_is_a_named_config_of_its_own() -> None:
    rows = _mimic_like_rows()
    config = named_config("masked")
    assert (config.name, config.labels.policy, config.labels.blank) == ("masked", "masked", "masked")
    matrix = label_matrix(rows, blank=config.labels.blank, uncertain=config.labels.uncertain)
    no_finding = matrix.targets[matrix.mask[:, NO_FINDING], NO_FINDING]
    assert set(no_finding.tolist()) == {1.0}  # masked blanks: No Finding has no negatives
    assert named_config("smoke").labels.policy == "paper"
    assert LabelConfig(uncertain="ones").policy == "custom"
    with pytest.raises(ValueError, match="labels: blank_zero_datasets"):
        LabelConfig(blank_zero_datasets=("mimic",))
    with pytest.raises(ValueError, match="blank policy"):
        LabelConfig(blank="zero")


def test_the_run_summary_says_which_policy_was_used(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    write_manifest(manifest, _mimic_like_rows())
    for name in ("paper", "masked"):
        config = named_config(name)
        data = prepare_data(config, manifest)
        policy = data_summary(data, config)["label_policy"]
        assert policy["name"] == name and policy["uncertain"] == "zeros"
    counts = data_summary(prepare_data(named_config("paper"), manifest), named_config("paper"))
    assert counts["splits"]["train"]["labels"]["No Finding"]["negatives"] > 0


def test_the_experiment_table_names_the_label_policy() -> None:
    row = {
        "variant": "vanilla",
        "pretrain_epochs": 1,
        "test_macro_auroc": None,
        "test_macro_auprc": None,
        "test_macro_labels": ["Cardiomegaly"],
    }
    results = {"backbone": "vit_t", "seed": 0, "baseline": "vanilla", "rows": [row]}
    assert "label policy" not in results_markdown(results).splitlines()[0]
    assert "label policy paper;" in results_markdown(results | {"label_policy": "paper"}).splitlines()[0]


# -- the evaluation views ---------------------------------------------------------------------


def test_eval_preprocessing_is_resize_256_then_centre_crop_224() -> None:
    assert eval_preprocessing(PreprocessConfig(resize=224, crop=224)) == PreprocessConfig(
        resize=256, crop=224
    )
    assert eval_preprocessing(PreprocessConfig(resize=64, crop=64)) == PreprocessConfig(resize=73, crop=64)
    stated = PreprocessConfig(resize=240, crop=224)
    assert eval_preprocessing(stated) == stated  # a checkpoint that already says its inference view


PORTRAIT = np.linspace(0, 1, 600 * 300, dtype=np.float32).reshape(600, 300)


def test_the_plain_view_is_resize_then_centre_crop() -> None:
    config = eval_preprocessing(PreprocessConfig())
    resized = Image.fromarray(PORTRAIT, mode="F").resize((256, 512), Image.Resampling.BILINEAR)
    expected = np.asarray(resized, dtype=np.float32)[144:368, 16:240]  # (512-224)/2, (256-224)/2
    np.testing.assert_allclose(plain_view(PORTRAIT, config), normalise(expected, config), atol=1e-5)
    still = AugmentConfig(flip_p=0.0, degrees=0.0, translate=0.0, scale=(1.0, 1.0))
    view = training_view(PORTRAIT, config, still, np.random.default_rng(0))
    np.testing.assert_allclose(view, plain_view(PORTRAIT, config), atol=1e-4)


class _Highest:
    """A stand-in generator: no flip, and every uniform draw at its upper end."""

    def random(self) -> float:
        return 1.0

    def uniform(self, low: float, high: float) -> float:
        return high


def test_training_views_transform_the_whole_resized_film() -> None:
    config = eval_preprocessing(PreprocessConfig())
    white = np.ones((600, 300), np.float32)
    turn = AugmentConfig(flip_p=0.0, degrees=45.0, translate=0.0, scale=(1.0, 1.0))
    view = training_view(white, config, turn, _Highest())  # type: ignore[arg-type]
    black = (0.0 - config.mean[0]) / config.std[0]
    corners = [view[0, 0, 0], view[0, 0, -1], view[0, -1, 0], view[0, -1, -1]]
    # a 45 degree turn takes two corners of the crop above and below the central square: the
    # film is there (the paper's RandomAffine turns the whole resized film); the other two are fill
    assert sum(c == pytest.approx(black, abs=1e-3) for c in corners) == 2


def test_plateau_defaults_are_the_papers() -> None:
    assert (HeadConfig().plateau_factor, HeadConfig().plateau_patience) == (0.5, 3)
    assert named_config("paper").head.plateau_factor == 0.5


# -- external validation on NIH's own findings ------------------------------------------------


def test_nih_findings_are_scored_by_their_chexpert_heads() -> None:
    findings = {
        "a.png": frozenset({"Mass"}),
        "b.png": frozenset({"Nodule", "Effusion"}),
        "c.png": frozenset(),
        "d.png": frozenset({"Infiltration"}),
        "e.png": frozenset({"Mass", "Nodule"}),
    }
    rows = [
        ManifestRow(path=f"/x/{n}", patient_id=n, split="test", dataset="nih") for n in [*findings, "z.png"]
    ]
    probabilities = np.full((6, NUM_LABELS), 0.1, dtype=np.float32)
    lesion, effusion = LABELS.index("Lung Lesion"), LABELS.index("Pleural Effusion")
    probabilities[:, lesion] = [0.9, 0.2, 0.1, 0.1, 0.8, 0.5]  # Mass: a, e high; Nodule: b low
    probabilities[:, effusion] = [0.1, 0.9, 0.1, 0.1, 0.1, 0.5]
    block = nih_finding_metrics(
        probabilities,
        rows,
        findings,
        trained=["Lung Lesion", "Pleural Effusion"],
        split="test",
        settings=BootstrapSettings(resamples=50),
    )
    per = block["per_label"]
    assert list(per) == list(NIH_FINDINGS)
    assert per["Mass"]["auroc"]["value"] == 1.0 and per["Effusion"]["auroc"]["value"] == 1.0
    assert per["Nodule"]["auroc"]["value"] == pytest.approx(2 / 3)  # b (0.2) under a (0.9), over c, d
    assert per["Mass"]["counted"] == 5  # z.png is not in the table: masked
    assert block["images_without_nih_findings"] == 1
    assert "needs a classifier trained on NIH's 14 findings" in per["Infiltration"]["reason"]
    assert "Cardiomegaly head had no training signal" in per["Cardiomegaly"]["reason"]
    assert block["macro"]["labels"] == ["Effusion", "Mass", "Nodule"]
    assert "Infiltration" in block["macro"]["excluded"] and "Atelectasis" in block["macro"]["excluded"]


@pytest.mark.slow
def test_evaluate_reports_nih_findings_beside_the_chexpert_labels(
    manifest: Path, encoder_file: Path, tmp_path: Path
) -> None:
    from training.downstream.linear_eval import linear_eval

    linear_eval(encoder_file, small_config(manifest, tmp_path / "cache", max_epochs=2), tmp_path / "linear")
    root = _nih_root(tmp_path)
    nih = tmp_path / "nih.csv"
    write_manifest(nih, build_nih(root, valid_fraction=0.4, seed=0))
    config = replace(small_config(nih, tmp_path / "cache"), labels=LabelConfig())
    metrics = evaluate_classifier(
        tmp_path / "linear" / "classifier.safetensors",
        config,
        tmp_path / "eval",
        nih_findings=root / "Data_Entry_2017.csv",
    )
    block = metrics["nih_findings"]
    assert block["images_with_nih_findings"] == metrics["test"]["images"] == 6
    # the generated classifier learnt Cardiomegaly; NIH's test patients 10-12 have one positive
    assert block["per_label"]["Cardiomegaly"]["status"] == "estimable"
    assert block["macro"]["labels"] == ["Cardiomegaly"]
    assert "no CheXpert head" in block["per_label"]["Hernia"]["reason"]
    assert read_nih_findings(root / "Data_Entry_2017.csv")["00000010_000.png"] == {"Nodule", "Cardiomegaly"}


def test_the_pretraining_eval_view_keeps_the_encoders_own_preprocessing() -> None:
    own = PreprocessConfig(resize=64, crop=64)
    assert eval_preprocessing(own, "pretraining") == own
    with pytest.raises(ValueError, match="eval_view"):
        AugmentConfig(eval_view="zoomed")


def test_a_run_folder_resolves_to_the_last_or_the_best_loss_encoder(tmp_path: Path) -> None:
    from training.downstream.embeddings import resolve_encoder_path

    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    for name in ("encoder.safetensors", "encoder_best_loss.safetensors"):
        (checkpoints / name).write_bytes(b"")
    assert resolve_encoder_path(tmp_path) == checkpoints / "encoder.safetensors"
    assert resolve_encoder_path(tmp_path, "best_loss") == checkpoints / "encoder_best_loss.safetensors"
    (checkpoints / "encoder_best_loss.safetensors").unlink()
    with pytest.raises(ValueError, match="no encoder checkpoint"):
        resolve_encoder_path(tmp_path, "best_loss")
