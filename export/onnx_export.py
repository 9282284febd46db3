"""CXRClassifier -> one self-contained ONNX file, checked against the expected interface.

The graph has one input, ``image`` float32 [B, 3, S, S], and two outputs,
``probabilities`` float32 [B, labels] and ``attention`` float32 [B, gh, gw], with a
dynamic batch dimension; a model exported with the out-of-distribution guard
(``cxrmsn.model.GuardedClassifier``) has a third, ``ood_score`` float32 [B]. It is
exported with torch's dynamo exporter at opset 20 (``LayerNormalization`` and ``Gelu``
stay single ops, which TensorRT maps to its normalisation and activation layers) into a
single file without external data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export._logging import quieter
from export.errors import ExportError

INPUT_NAME = "image"
OUTPUT_NAMES = ("probabilities", "attention")
OOD_OUTPUT = "ood_score"  # cxrmsn.ood.OOD_OUTPUT
OPSET = 20
#: Upper bound of the exported batch dimension (Triton's max_batch_size is far below it).
MAX_EXPORT_BATCH = 4096
#: ONNX element types this project writes, by their KServe v2 / Triton names.
_DATATYPES = {1: "FP32", 10: "FP16"}


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: KServe v2 datatype and shape, -1 for the batch dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class GraphInterface:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": [spec.to_dict() for spec in self.inputs],
            "outputs": [spec.to_dict() for spec in self.outputs],
        }


def expected_interface(
    *, image_size: int, num_labels: int, grid: tuple[int, int], ood_score: bool = False
) -> GraphInterface:
    """The interface every exported variant has (inputs and outputs stay float32)."""
    outputs = [
        TensorSpec(OUTPUT_NAMES[0], "FP32", (-1, num_labels)),
        TensorSpec(OUTPUT_NAMES[1], "FP32", (-1, *grid)),
    ]
    if ood_score:
        outputs.append(TensorSpec(OOD_OUTPUT, "FP32", (-1,)))
    return GraphInterface(
        inputs=(TensorSpec(INPUT_NAME, "FP32", (-1, 3, image_size, image_size)),), outputs=tuple(outputs)
    )


def output_names(interface: GraphInterface) -> list[str]:
    return [spec.name for spec in interface.outputs]


def guard_nodes(model: Any) -> list[str]:
    """The nodes only ``ood_score`` needs (the guard's subtraction, whitening product and norm):
    ancestors of ``ood_score`` that are not ancestors of ``probabilities``. Empty without the output.
    """

    def ancestors(output: str) -> set[str]:
        producers = {name: node for node in model.graph.node for name in node.output}
        found: set[str] = set()
        pending = [output]
        while pending:
            node = producers.get(pending.pop())
            if node is None or node.name in found:
                continue
            found.add(node.name)
            pending.extend(node.input)
        return found

    if OOD_OUTPUT not in {output.name for output in model.graph.output}:
        return []
    return sorted(ancestors(OOD_OUTPUT) - ancestors(OUTPUT_NAMES[0]))


def export_onnx(model: Any, path: str | os.PathLike[str], *, image_size: int, opset: int = OPSET) -> None:
    """Write ``model`` (a CXRClassifier, or a GuardedClassifier with its ``ood_score``, in eval
    mode) to ``path`` as one ONNX file."""
    import torch

    target = Path(path)
    batch = torch.export.Dim("batch", min=1, max=MAX_EXPORT_BATCH)
    example = torch.zeros(2, 3, image_size, image_size)
    with torch.no_grad(), quieter("onnx_ir", "onnxscript", "torch.onnx"):
        torch.onnx.export(
            model.eval(),
            (example,),
            str(target),
            input_names=[INPUT_NAME],
            output_names=[*OUTPUT_NAMES, *([OOD_OUTPUT] if _guarded(model) else [])],
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    leftovers = [p.name for p in target.parent.iterdir() if p.name.startswith(target.name + ".")]
    if leftovers:
        raise ExportError(f"the ONNX export wrote external data files {leftovers}; expected one file")


def _guarded(model: Any) -> bool:
    from cxrmsn.model import GuardedClassifier

    return isinstance(model, GuardedClassifier)


def read_interface(model: Any) -> GraphInterface:
    """The graph inputs and outputs of an ``onnx.ModelProto``."""
    return GraphInterface(
        inputs=tuple(_tensor_spec(value) for value in model.graph.input),
        outputs=tuple(_tensor_spec(value) for value in model.graph.output),
    )


def check_onnx(path: str | os.PathLike[str], expected: GraphInterface, *, full_check: bool = True) -> Any:
    """Run the ONNX checker and compare the interface; return the ModelProto.

    ``full_check`` adds strict shape inference; it needs every op to be a standard ONNX
    op, so onnxruntime-optimised graphs (com.microsoft fused ops) are checked without it.
    """
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=full_check)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"{path} fails the ONNX checker: {exc}") from None
    model = onnx.load(str(path))
    actual = read_interface(model)
    if actual != expected:
        raise ExportError(f"{path} has interface {actual.to_dict()}, expected {expected.to_dict()}")
    return model


def save_onnx(model: Any, path: str | os.PathLike[str], metadata: dict[str, str]) -> None:
    """Save ``model`` as one file with ``metadata`` in its metadata_props (replacing old ones)."""
    import onnx

    del model.metadata_props[:]
    for key, value in sorted(metadata.items()):
        model.metadata_props.add(key=key, value=value)
    onnx.save_model(model, str(path), save_as_external_data=False)


def _tensor_spec(value: Any) -> TensorSpec:
    tensor_type = value.type.tensor_type
    datatype = _DATATYPES.get(tensor_type.elem_type, f"ONNX_ELEM_TYPE_{tensor_type.elem_type}")
    shape = tuple(dim.dim_value if dim.HasField("dim_value") else -1 for dim in tensor_type.shape.dim)
    return TensorSpec(value.name, datatype, shape)
