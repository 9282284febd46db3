"""Regression inputs for a model repository: what serving's start-up self-check runs.

``write_regression_record`` stores fixed model inputs (``regression_inputs.npy``, float32
``[N, 3, S, S]``, already preprocessed) and the fp32 model's probabilities for them
(``regression.json``, ``cxrmsn.repository.RegressionRecord``), with each variant's
tolerance from the manifest's ``fp32_agreement``. Only fp32 is pinned: every variant is
compared with the fp32 probabilities. Before writing, every variant is run here and must
be within its tolerance: a record the writing machine would refuse is never written.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from cxrmsn.fileio import atomic_write_bytes, atomic_write_text, sha256_file
from cxrmsn.repository import (
    REGRESSION_FILE,
    REGRESSION_INPUTS_FILE,
    RegressionRecord,
    read_manifest,
    verified_model_path,
    write_manifest,
)
from export.errors import ExportError
from export.runtime import cpu_session, run


def write_regression_record(
    repository: str | os.PathLike[str], inputs: Mapping[str, np.ndarray], *, about: str
) -> RegressionRecord:
    """Store ``inputs`` (name -> preprocessed float32 [3, S, S]) and fp32's probabilities for them."""
    root = Path(repository)
    manifest = read_manifest(root)
    if not inputs:
        raise ValueError("need at least one regression input")
    batch = np.stack([np.asarray(image, dtype=np.float32) for image in inputs.values()])
    expected = manifest.io.get("inputs", [{}])[0].get("shape", [])[1:]
    if expected and list(batch.shape[1:]) != list(expected):
        raise ValueError(f"regression inputs are {list(batch.shape[1:])}, the model takes {expected}")
    probabilities = {
        variant: run(cpu_session(verified_model_path(root, manifest, variant)), batch)[0]
        for variant in sorted(manifest.models)
    }
    reference = probabilities["fp32"].astype(np.float64)
    record = RegressionRecord(
        reference={
            name: {label: float(p) for label, p in zip(manifest.labels, row, strict=True)}
            for name, row in zip(inputs, reference, strict=True)
        },
        tolerances={},
        about=about,
    )
    for variant, values in probabilities.items():
        tolerance = record.tolerance(variant, manifest)
        observed = float(np.abs(values - reference).max())
        if not observed <= tolerance.value:
            raise ExportError(
                f"{variant} is {observed:.3g} from fp32 on the regression inputs, over its tolerance "
                f"{tolerance.value:.3g} ({tolerance.source}): its self-check would refuse it here"
            )
        record.tolerances[variant] = tolerance.value
        record.tolerance_sources[variant] = tolerance.source
        record.observed[variant] = observed
    buffer = io.BytesIO()
    np.save(buffer, batch, allow_pickle=False)
    atomic_write_bytes(root / REGRESSION_INPUTS_FILE, buffer.getvalue())
    atomic_write_text(root / REGRESSION_FILE, record.to_json())
    for name in (REGRESSION_INPUTS_FILE, REGRESSION_FILE):
        manifest.files[name] = sha256_file(root / name)
    write_manifest(root, manifest)
    return record
