"""Triton model configurations (config.pbtxt text) and the python-backend twin.

Each ONNX variant is one Triton model folder::

    cxr_msn/config.pbtxt        CPU: platform onnxruntime_onnx, KIND_CPU
    cxr_msn/configs/gpu.pbtxt   GPU: KIND_GPU, TensorRT execution accelerator at FP16
                                (tritonserver --model-config-name=gpu)
    cxr_msn/labels.txt          one label a line, the order of ``probabilities``
    cxr_msn/1/model.onnx

``max_batch_size > 0``, so the batch dimension is implicit in ``dims``; an output with one
value per image (``ood_score`` [B], the out-of-distribution score of a guarded model) is
declared ``dims: [ 1 ]`` with ``reshape: { shape: [ ] }``, Triton's form for that. The python
twin (backend "python") runs the fp32 ONNX file with onnxruntime, one call per batch,
for CPU hosts whose Triton has no onnxruntime backend (the nvidia-pytriton wheel).
"""

from __future__ import annotations

from pathlib import Path

from export.onnx_export import GraphInterface, TensorSpec

CPU_CONFIG = "config.pbtxt"
GPU_CONFIG = "configs/gpu.pbtxt"
LABELS_FILE = "labels.txt"
TWIN_MODEL_SOURCE = Path(__file__).with_name("twin_model.py")
MAX_QUEUE_DELAY_US = 2000
TRT_WORKSPACE_BYTES = 1 << 30


def cpu_config(name: str, interface: GraphInterface, *, max_batch_size: int) -> str:
    """An onnxruntime_onnx model on CPU instances, with dynamic batching."""
    return _config(
        name,
        interface,
        max_batch_size=max_batch_size,
        header='platform: "onnxruntime_onnx"',
        instance_kind="KIND_CPU",
    )


def gpu_config(name: str, interface: GraphInterface, *, max_batch_size: int) -> str:
    """The same model on a GPU, with ONNX Runtime's TensorRT execution accelerator at FP16.

    LayerNorm falls back to fp32 inside TensorRT, the engine cache lives in the
    container's /tmp, and the optimisation profile spans batch 1 to ``max_batch_size``.
    """
    image = interface.inputs[0]
    dims = "x".join(str(d) for d in image.shape[1:])
    trt = {
        "precision_mode": "FP16",
        "max_workspace_size_bytes": str(TRT_WORKSPACE_BYTES),
        "trt_layer_norm_fp32_fallback": "1",
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": f"/tmp/triton_trt_cache/{name}",
        "trt_profile_min_shapes": f"{image.name}:1x{dims}",
        "trt_profile_opt_shapes": f"{image.name}:{min(8, max_batch_size)}x{dims}",
        "trt_profile_max_shapes": f"{image.name}:{max_batch_size}x{dims}",
    }
    parameters = "\n".join(f'      parameters {{ key: "{k}" value: "{v}" }}' for k, v in trt.items())
    optimisation = (
        "optimization {\n  execution_accelerators {\n    gpu_execution_accelerator: [\n"
        f'    {{\n      name: "tensorrt"\n{parameters}\n    }}\n    ]\n  }}\n}}\n'
    )
    body = _config(
        name,
        interface,
        max_batch_size=max_batch_size,
        header='platform: "onnxruntime_onnx"',
        instance_kind="KIND_GPU",
    )
    return body + optimisation


def twin_config(
    name: str, interface: GraphInterface, *, max_batch_size: int, onnx_path: str, onnx_sha256: str
) -> str:
    """The python-backend twin: ``onnx_path`` is relative to the repository root."""
    header = 'backend: "python"'
    body = _config(name, interface, max_batch_size=max_batch_size, header=header, instance_kind="KIND_CPU")
    return (
        body
        + f'parameters {{ key: "onnx_model" value: {{ string_value: "{onnx_path}" }} }}\n'
        + f'parameters {{ key: "onnx_sha256" value: {{ string_value: "{onnx_sha256}" }} }}\n'
    )


def labels_text(labels: list[str] | tuple[str, ...]) -> str:
    return "".join(f"{label}\n" for label in labels)


def _config(
    name: str, interface: GraphInterface, *, max_batch_size: int, header: str, instance_kind: str
) -> str:
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    preferred = sorted({size for size in (4, 8, 16) if size <= max_batch_size})
    inputs = ",\n".join(_tensor(spec) for spec in interface.inputs)
    outputs = ",\n".join(
        _tensor(spec, label_file=LABELS_FILE if index == 0 else None)
        for index, spec in enumerate(interface.outputs)
    )
    preferred_line = f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n" if preferred else ""
    return (
        f'name: "{name}"\n{header}\nmax_batch_size: {max_batch_size}\n'
        f"input [\n{inputs}\n]\noutput [\n{outputs}\n]\n"
        f"dynamic_batching {{\n{preferred_line}"
        f"  max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US}\n}}\n"
        f"instance_group [ {{ kind: {instance_kind} count: 1 }} ]\n"
        "version_policy: { latest { num_versions: 1 } }\n"
    )


def _tensor(spec: TensorSpec, *, label_file: str | None = None) -> str:
    if spec.shape[0] != -1:
        raise ValueError(f"{spec.name}: the first dimension must be the dynamic batch, got {spec.shape}")
    lines = [f'    name: "{spec.name}"', f"    data_type: TYPE_{spec.datatype}"]
    if spec.shape[1:]:
        lines.append(f"    dims: [ {', '.join(str(d) for d in spec.shape[1:])} ]")
    else:  # one value per image ([B], e.g. ood_score): Triton needs dims, so [1] reshaped to []
        lines += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
    if label_file:
        lines.append(f'    label_filename: "{label_file}"')
    return "  {\n" + "\n".join(lines) + "\n  }"
