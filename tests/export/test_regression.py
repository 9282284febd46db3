"""regression.json and regression_inputs.npy: what serving's start-up self-check runs.

Only fp32 probabilities are stored; every variant's tolerance comes from the manifest's
``fp32_agreement`` (or, for a manifest written before it, from its export notes).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cxrmsn.fileio import sha256_file
from cxrmsn.labels import LABELS
from cxrmsn.preprocess import preprocess
from cxrmsn.repository import (
    DEFAULT_DERIVED_TOLERANCE,
    FP32_TOLERANCE,
    MANIFEST_NAME,
    REGRESSION_FILE,
    REGRESSION_INPUTS_FILE,
    RepositoryError,
    agreement_tolerance,
    cpu_features,
    describe_cpu,
    read_manifest,
    read_regression_record,
    variant_tolerance,
)
from export.errors import ExportError
from export.regression import write_regression_record
from export.runtime import cpu_session, run
from tests.helpers import chest_like_picture


def regression_images() -> dict[str, np.ndarray]:
    return {
        f"picture {seed}": preprocess((chest_like_picture(240, 200, seed=seed) / 255.0).astype(np.float32))
        for seed in (1, 2)
    }


@pytest.fixture
def repository(nano_repository: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "model_repository"
    shutil.copytree(nano_repository, copy)
    return copy


def rewrite_manifest(repository: Path, change: object) -> None:
    values = json.loads((repository / MANIFEST_NAME).read_text())
    change(values)  # type: ignore[operator]
    (repository / MANIFEST_NAME).write_text(json.dumps(values))


def test_the_record_pins_fp32_and_takes_each_tolerance_from_the_manifest(repository: Path) -> None:
    images = regression_images()
    written = write_regression_record(repository, images, about="test inputs")
    manifest = read_manifest(repository)
    for name in (REGRESSION_FILE, REGRESSION_INPUTS_FILE):
        assert manifest.files[name] == sha256_file(repository / name)
    record = read_regression_record(repository, manifest)
    assert record == written and record.format_version == 2 and record.inputs_file == REGRESSION_INPUTS_FILE
    stored = np.load(repository / REGRESSION_INPUTS_FILE, allow_pickle=False)
    np.testing.assert_array_equal(stored, np.stack(list(images.values())))
    fp32 = run(cpu_session(repository / manifest.models["fp32"].path), stored)[0]
    assert record.names == list(images)
    for row, name in zip(fp32, record.names, strict=True):
        assert list(record.reference[name]) == list(LABELS)
        np.testing.assert_allclose(list(record.reference[name].values()), row, rtol=0, atol=1e-7)
    assert sorted(record.tolerances) == ["fp16", "fp32", "int8"]
    for variant, tolerance in record.tolerances.items():
        assert tolerance == variant_tolerance(manifest.models[variant]).value
        assert record.observed[variant] <= tolerance
    assert record.tolerances["fp32"] == FP32_TOLERANCE and record.observed["fp32"] == 0
    assert record.observed["int8"] > 1e-6  # int8 is compared with fp32, not with itself
    assert json.loads((repository / REGRESSION_FILE).read_text())["reference"]["variant"] == "fp32"


def test_a_variant_outside_its_tolerance_is_not_written(repository: Path) -> None:
    rewrite_manifest(repository, lambda v: v["models"]["int8"]["fp32_agreement"].update(tolerance=1e-9))
    with pytest.raises(
        ExportError, match=r"int8 is .* from fp32 on the regression inputs, over its tolerance 1e-09"
    ):
        write_regression_record(repository, regression_images(), about="test")
    assert not (repository / REGRESSION_FILE).exists()


def test_a_modified_record_is_refused(repository: Path) -> None:
    write_regression_record(repository, regression_images(), about="test")
    path = repository / REGRESSION_FILE
    path.write_text(path.read_text().replace('"tolerance": 1e-05', '"tolerance": 1'))
    with pytest.raises(RepositoryError, match=r"regression\.json has sha256 .* modified or corrupt"):
        read_regression_record(repository, read_manifest(repository))


def test_a_format_1_record_is_read_as_its_fp32_values(repository: Path) -> None:
    """What the bundled model carried before the self-check: every variant's own values, no inputs."""
    manifest = read_manifest(repository)
    values = {name: dict.fromkeys(LABELS, 0.5) for name in ("a.png", "b.dcm")}
    document = {"about": "old", "tolerance": 1e-5, "variants": {"fp32": values, "int8": values}}
    (repository / REGRESSION_FILE).write_text(json.dumps(document))

    def old_manifest(v: dict) -> None:
        v["files"][REGRESSION_FILE] = sha256_file(repository / REGRESSION_FILE)
        for entry in v["models"].values():
            entry.pop("fp32_agreement")

    rewrite_manifest(repository, old_manifest)
    manifest = read_manifest(repository)
    record = read_regression_record(repository, manifest)
    assert record is not None and record.format_version == 1 and record.inputs_file is None
    assert record.reference == values and record.tolerances["fp32"] == 1e-5
    measured = manifest.models["int8"].notes["max_abs_diff_vs_fp32"]["probabilities"]
    int8 = record.tolerance("int8", manifest)
    assert int8.value == agreement_tolerance(measured) and "predates fp32_agreement" in int8.source
    fp16 = record.tolerance("fp16", manifest)  # not in the file: from the manifest
    assert fp16.value == agreement_tolerance(
        manifest.models["fp16"].notes["max_abs_diff_vs_fp32"]["probabilities"]
    )
    manifest.models["fp16"].notes.pop("max_abs_diff_vs_fp32")
    assert variant_tolerance(manifest.models["fp16"]).value == DEFAULT_DERIVED_TOLERANCE
    assert variant_tolerance(manifest.models["fp32"]).value == FP32_TOLERANCE


def test_a_repository_without_a_record_has_none(nano_repository: Path) -> None:
    assert read_regression_record(nano_repository, read_manifest(nano_repository)) is None


def test_cpu_features_name_the_int8_flags(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC 7763 64-Core Processor\nflags\t\t: fpu sse2 avx avx2 fma\n"
    )
    features = cpu_features(cpuinfo)
    assert features["model"] == "AMD EPYC 7763 64-Core Processor"
    assert features["flags"] == {"avx2": True, "avx512f": False, "avx512_vnni": False, "avx_vnni": False}
    assert describe_cpu(features).endswith("avx2 yes, avx512f no, avx512_vnni no, avx_vnni no")
    cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd\n")  # an ARM CPU
    assert "flags unknown" in describe_cpu(cpu_features(cpuinfo))
    assert "flags unknown" in describe_cpu(cpu_features(tmp_path / "absent"))
