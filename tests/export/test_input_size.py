"""Export at the small recipe's input size: a 64 px model with 8 px patches (8 x 8 grid).

The checkpoint's preprocessing (resize 64, crop 64) and the architecture's patch grid set
every shape export writes: the ONNX interface of each variant, manifest.json ``io``, the
Triton configs (CPU, GPU with its TensorRT profile, int8, the python twin), the generated
inputs of the variant comparison and the benchmark. The checkpoint is made as a user would:
``cxr-msn init-checkpoint``, then its preprocessing set to the recipe's; ``python -m export``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from cxrmsn.checkpoint import load_checkpoint, load_classifier, save_checkpoint
from cxrmsn.imaging import decode
from cxrmsn.labels import LABELS
from cxrmsn.preprocess import PreprocessConfig, preprocess
from cxrmsn.repository import read_manifest, verified_model_path
from export.benchmark import benchmark_repository
from export.build import TRITON_MODELS, TWIN_MODEL
from export.onnx_export import read_interface
from export.parity import torch_outputs
from export.runtime import cpu_session, generated_images, max_abs_difference, run
from tests.export.triton_server import TritonInstall, running_server
from tests.helpers import chest_like_picture, to_png

pytestmark = pytest.mark.slow
ARCH, SIZE, GRID = "vit_nano_patch8_64", 64, 8
SMALL = PreprocessConfig(resize=SIZE, crop=SIZE)
REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE_DIMS, OUTPUT_DIMS = [3, SIZE, SIZE], [[len(LABELS)], [GRID, GRID]]


def run_command(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *map(str, args)], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT
    )


def with_preprocessing(checkpoint: Path, preprocessing: PreprocessConfig) -> Path:
    """Rewrite ``checkpoint`` with ``preprocessing`` in its metadata; the weights unchanged."""
    state, metadata = load_checkpoint(checkpoint)
    metadata.preprocessing = preprocessing.to_dict()
    save_checkpoint(checkpoint, state, metadata)
    return checkpoint


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("small-checkpoint") / "nano64.safetensors"
    created = run_command("-m", "cxrmsn.cli", "init-checkpoint", path, "--arch", ARCH, "--seed", "1")
    assert created.returncode == 0, created.stderr
    return with_preprocessing(path, SMALL)


@pytest.fixture(scope="module")
def small_repository(small_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("small-exported") / "model_repository"
    result = run_command("-m", "export", small_checkpoint, "--out", out, "--ort-optimised", "never")
    assert result.returncode == 0, result.stderr
    return out


def parse_config(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(encoding="utf-8"), mc.ModelConfig())


def test_manifest_records_the_64px_preprocessing_and_interface(small_repository: Path) -> None:
    manifest = read_manifest(small_repository)
    assert manifest.architecture == ARCH and sorted(manifest.models) == ["fp16", "fp32", "int8"]
    assert manifest.preprocessing == SMALL.to_dict()
    assert manifest.io["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 3, SIZE, SIZE]}]
    assert manifest.io["outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(LABELS)]},
        {"name": "attention", "datatype": "FP32", "shape": [-1, GRID, GRID]},
    ]


@pytest.mark.parametrize("variant", ["fp32", "fp16", "int8"])
def test_every_onnx_variant_takes_64px_and_gives_an_8x8_map(small_repository: Path, variant: str) -> None:
    manifest = read_manifest(small_repository)
    path = verified_model_path(small_repository, manifest, variant)
    model = onnx.load(str(path))
    interface = read_interface(model).to_dict()
    assert [spec["shape"] for spec in interface["inputs"]] == [[-1, 3, SIZE, SIZE]]
    assert [spec["shape"] for spec in interface["outputs"]] == [[-1, len(LABELS)], [-1, GRID, GRID]]
    # The batch is one named dynamic dimension shared by the input and both outputs.
    batch_dims = {
        value.type.tensor_type.shape.dim[0].dim_param for value in [*model.graph.input, *model.graph.output]
    }
    assert len(batch_dims) == 1 and batch_dims != {""}
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    assert PreprocessConfig.from_dict(json.loads(metadata["cxr_msn.preprocessing"])) == SMALL

    # onnxruntime runs it on real pictures preprocessed as the repository says, at batch 1 and 3.
    pictures = [to_png(chest_like_picture(120 + 10 * i, 100, seed=i)) for i in range(3)]
    images = np.stack([preprocess(decode(data).pixels, manifest.preprocess_config) for data in pictures])
    session = cpu_session(path, threads=1)
    for batch in (1, 3):
        probabilities, attention = run(session, images[:batch])
        assert probabilities.shape == (batch, len(LABELS)) and attention.shape == (batch, GRID, GRID)
        assert np.isfinite(probabilities).all() and ((probabilities > 0) & (probabilities < 1)).all()
        # CLS-to-patch attention: positive, summing to just under 1 (the CLS-to-CLS share is left out).
        sums = attention.sum(axis=(1, 2))
        assert (attention > 0).all() and ((sums > 0.5) & (sums < 1.0 + 1e-3)).all()


def test_fp32_matches_pytorch_at_64px(small_repository: Path, small_checkpoint: Path) -> None:
    model, _ = load_classifier(small_checkpoint)
    assert model.grid_size == (GRID, GRID)
    images = generated_images(4, image_size=SIZE, seed=7)
    path = verified_model_path(small_repository, read_manifest(small_repository), "fp32")
    difference = max_abs_difference(run(cpu_session(path, threads=1), images), torch_outputs(model, images))
    assert max(difference.values()) <= 1e-4, difference


def test_triton_configs_have_the_64px_dims(small_repository: Path) -> None:
    manifest = read_manifest(small_repository)
    folders = {TRITON_MODELS[variant] for variant in manifest.models} | {TWIN_MODEL}
    assert folders == {"cxr_msn", "cxr_msn_fp16", "cxr_msn_int8", "cxr_msn_python"}
    configs = {folder: parse_config(small_repository / folder / "config.pbtxt") for folder in folders}
    configs |= {
        f"{folder}/gpu": parse_config(small_repository / folder / "configs" / "gpu.pbtxt")
        for folder in ("cxr_msn", "cxr_msn_fp16")
    }
    assert not (small_repository / "cxr_msn_int8" / "configs").exists()  # int8 is CPU only
    for name, config in configs.items():
        assert config.max_batch_size == 32, name
        assert [(i.name, list(i.dims), i.data_type) for i in config.input] == [
            ("image", IMAGE_DIMS, mc.TYPE_FP32)
        ], name
        assert [list(o.dims) for o in config.output] == OUTPUT_DIMS, name
        assert [o.name for o in config.output] == ["probabilities", "attention"], name
    for name in ("cxr_msn/gpu", "cxr_msn_fp16/gpu"):
        [accelerator] = configs[name].optimization.execution_accelerators.gpu_execution_accelerator
        assert accelerator.parameters["trt_profile_min_shapes"] == f"image:1x3x{SIZE}x{SIZE}"
        assert accelerator.parameters["trt_profile_opt_shapes"] == f"image:8x3x{SIZE}x{SIZE}"
        assert accelerator.parameters["trt_profile_max_shapes"] == f"image:32x3x{SIZE}x{SIZE}"


def test_benchmark_times_every_variant_at_64px(small_repository: Path) -> None:
    timings = benchmark_repository(small_repository, batch_sizes=(1, 2), repeats=2, warmup=1, threads=1)
    assert sorted({(t.variant, t.batch_size) for t in timings}) == [
        (variant, batch) for variant in ("fp16", "fp32", "int8") for batch in (1, 2)
    ]


def test_a_preprocessing_that_does_not_fit_the_architecture_is_refused(
    small_checkpoint: Path, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong.safetensors"
    wrong.write_bytes(small_checkpoint.read_bytes())
    with_preprocessing(wrong, PreprocessConfig(resize=224, crop=224))
    result = run_command("-m", "export", wrong, "--out", tmp_path / "out", "--variants", "fp32")
    assert result.returncode == 2
    assert f"preprocessing crops 224 px but {ARCH} takes {SIZE} px images" in result.stderr
    assert not (tmp_path / "out").exists()


def test_triton_serves_the_64px_twin_like_onnxruntime(
    install: TritonInstall, small_repository: Path, tmp_path: Path
) -> None:
    import tritonclient.http as httpclient

    manifest = read_manifest(small_repository)
    images = generated_images(3, image_size=SIZE, seed=11)
    expected = run(cpu_session(verified_model_path(small_repository, manifest, "fp32"), threads=1), images)
    with running_server(install, small_repository, [TWIN_MODEL], tmp_path / "triton.log") as server:
        client = httpclient.InferenceServerClient(server.http_url)
        metadata = client.get_model_metadata(TWIN_MODEL)
        assert [i["shape"] for i in metadata["inputs"]] == [[-1, 3, SIZE, SIZE]]
        assert [o["shape"] for o in metadata["outputs"]] == [[-1, len(LABELS)], [-1, GRID, GRID]]
        image = httpclient.InferInput("image", list(images.shape), "FP32")
        image.set_data_from_numpy(images)
        result = client.infer(TWIN_MODEL, [image])
        got = (result.as_numpy("probabilities"), result.as_numpy("attention"))
    assert got[1].shape == (3, GRID, GRID)
    for value, want in zip(got, expected, strict=True):
        np.testing.assert_allclose(value, want, rtol=0, atol=1e-5)  # the server's onnxruntime is older
