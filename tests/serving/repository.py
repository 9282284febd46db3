"""Export a small random model into a model repository for serving tests."""

from __future__ import annotations

from pathlib import Path

import torch

from cxrmsn.fileio import sha256_file
from cxrmsn.labels import LABELS
from cxrmsn.model import CXRClassifier
from cxrmsn.preprocess import DEFAULT_PREPROCESS
from cxrmsn.repository import ModelFile, RepositoryManifest, write_manifest

TRAINED = ["Cardiomegaly", "Pleural Effusion", "No Finding"]
THRESHOLDS = {"Cardiomegaly": 0.0, "Pleural Effusion": 1.0, "No Finding": 0.0, "Edema": 0.0}


def export_test_repository(root: Path, architecture: str = "vit_nano_patch16_224") -> Path:
    torch.manual_seed(0)
    model = CXRClassifier(architecture).eval()
    onnx_path = root / "cxr_msn" / "1" / "model.onnx"
    onnx_path.parent.mkdir(parents=True)
    torch.onnx.export(
        model,
        (torch.randn(1, 3, 224, 224),),
        str(onnx_path),
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        output_names=["probabilities", "attention"],
        dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}, "attention": {0: "batch"}},
    )
    manifest = RepositoryManifest(
        name="cxr_msn",
        version="1",
        architecture=architecture,
        labels=list(LABELS),
        preprocessing=DEFAULT_PREPROCESS.to_dict(),
        models={
            "fp32": ModelFile(
                path="cxr_msn/1/model.onnx",
                sha256=sha256_file(onnx_path),
                bytes=onnx_path.stat().st_size,
                precision="fp32",
                triton_model="cxr_msn",
            )
        },
        # Thresholds chosen so that Cardiomegaly and No Finding are always positive, Pleural
        # Effusion never, and Edema (untrained) never despite its threshold of 0.
        trained_labels=TRAINED,
        thresholds=THRESHOLDS,
        training_data={"summary": "randomly initialised: untrained, for testing only"},
        intended_use="tests only",
    )
    write_manifest(root, manifest)
    return root
