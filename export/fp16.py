"""fp32 ONNX -> mixed fp16 ONNX with the numerically fragile parts kept in fp32.

Kept in fp32, for a ViT:

1. every ``LayerNormalization``: its variance sums squares over the embedding, which
   overflows fp16 (max 65504) once activations pass about 256, and trained ViTs have
   such outlier channels; TensorRT warns about exactly this for fp16 LayerNorm;
2. every ``Softmax``: exp and the normalising sum over the tokens (197 at 224 px with
   16 px patches, 65 at 64 px with 8 px patches) lose the small attention weights that
   the attention map is made of;
3. every node whose fp32 output exceeds a quarter of fp16's range on the probe inputs
   (found by running the fp32 graph with every intermediate exposed).

Inputs and outputs stay float32 (``keep_io_types``), so every variant has the same
interface. The conversion itself is onnxruntime's ``transformers.float16`` (the
onnxconverter-common algorithm), whose output is topologically re-sorted here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Sigmoid too: probabilities near a threshold would otherwise move in fp16 steps (~5e-4).
FP32_OP_TYPES = ("LayerNormalization", "Softmax", "Sigmoid")
FP16_MAX = 65504.0
#: A node whose fp32 output reaches this on the probe inputs stays fp32 (4x headroom).
FP16_SAFE_LIMIT = FP16_MAX / 4


def activation_ranges(model: Any, images: np.ndarray) -> dict[str, float]:
    """Max |value| of every float intermediate, by producing node name, over ``images``.

    Runs one image at a time on an unoptimised copy of ``model`` whose intermediate
    float tensors are all graph outputs, so memory stays one image's activations.
    """
    import onnx

    from export.runtime import cpu_session

    probe = onnx.shape_inference.infer_shapes(_copy_without_value_info(model))
    floats = {
        v.name for v in probe.graph.value_info if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    }
    producers = {out: node.name for node in probe.graph.node for out in node.output if out in floats}
    existing = {output.name for output in probe.graph.output}
    for name in producers:
        if name not in existing:
            probe.graph.output.add(name=name)
    session = cpu_session(probe.SerializeToString(), optimise=False)
    names = [output.name for output in session.get_outputs()]
    ranges: dict[str, float] = {}
    for image in images:
        values = session.run(names, {session.get_inputs()[0].name: image[None]})
        for name, value in zip(names, values, strict=True):
            node = producers.get(name)
            if node is not None:
                ranges[node] = max(ranges.get(node, 0.0), float(np.max(np.abs(value), initial=0.0)))
    return ranges


def convert_to_fp16(model: Any, probe_images: np.ndarray) -> tuple[Any, dict[str, Any]]:
    """The mixed-precision ModelProto and notes on what stayed fp32 and why.

    The out-of-distribution guard's nodes (``export.onnx_export.guard_nodes``) stay fp32: the
    squared distance of an unusual image can exceed fp16's range.
    """
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    from export.onnx_export import guard_nodes

    _name_unnamed_nodes(model.graph)
    ranges = activation_ranges(model, probe_images)
    out_of_range = sorted(name for name, peak in ranges.items() if peak >= FP16_SAFE_LIMIT)
    guard = guard_nodes(model)
    converted = convert_float_to_float16(
        _copy_without_value_info(model),
        keep_io_types=True,
        op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FP32_OP_TYPES],
        node_block_list=sorted({*out_of_range, *guard}),
    )
    removed = drop_cast_round_trips(converted.graph, {node.name for node in model.graph.node})
    topological_sort(converted.graph)
    notes = {
        "converter": "onnxruntime.transformers.float16.convert_float_to_float16, keep_io_types",
        "fp32_op_types": list(FP32_OP_TYPES),
        "fp32_nodes_out_of_fp16_range": out_of_range,
        "fp32_guard_nodes": guard,
        "fp16_safe_limit": FP16_SAFE_LIMIT,
        "max_abs_activation_fp32": max(ranges.values(), default=0.0),
        "probe_images": len(probe_images),
        "fp32_fp16_fp32_round_trips_removed": removed,
    }
    return converted, notes


def drop_cast_round_trips(graph: Any, original_nodes: set[str]) -> int:
    """Let fp32 nodes that feed fp32 nodes pass fp32 values straight through.

    The converter casts every blocked node's output to fp16 and casts it back to fp32
    for the next blocked node, so a value beyond fp16's range becomes inf in between.
    Each inserted Cast-to-fp32 whose input comes from an inserted Cast-to-fp16 (whose
    own input is therefore fp32) is removed, and its consumers read the fp32 tensor;
    inserted Cast-to-fp16 nodes left unused are removed too. Nodes named in
    ``original_nodes`` (the graph's own casts) are never touched. Returns the count.
    """
    import onnx

    inserted = {
        node.output[0]: node
        for node in graph.node
        if node.op_type == "Cast" and node.name not in original_nodes
    }
    rename = {}
    for output, node in inserted.items():
        source = inserted.get(node.input[0])
        if (
            source is not None
            and _cast_target(node) == onnx.TensorProto.FLOAT
            and _cast_target(source) == onnx.TensorProto.FLOAT16
        ):
            rename[output] = source.input[0]
    rename = {old: new for old, new in rename.items() if old not in {o.name for o in graph.output}}
    kept = [node for node in graph.node if not (node.op_type == "Cast" and node.output[0] in rename)]
    for node in kept:
        for index, name in enumerate(node.input):
            if name in rename:
                node.input[index] = rename[name]
    used = {name for node in kept for name in node.input} | {output.name for output in graph.output}
    kept = [node for node in kept if not (node.output[0] in inserted and node.output[0] not in used)]
    del graph.node[:]
    graph.node.extend(kept)
    return len(rename)


def _cast_target(node: Any) -> int:
    return next((attribute.i for attribute in node.attribute if attribute.name == "to"), -1)


def topological_sort(graph: Any) -> None:
    """Reorder ``graph.node`` so every node comes after the producers of its inputs (Kahn)."""
    available = {value.name for value in graph.input} | {init.name for init in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        ready = [node for node in pending if all(name in available for name in node.input)]
        if not ready:
            names = [node.name for node in pending[:5]]
            raise ValueError(f"graph has a cycle or undefined inputs; stuck at nodes {names}")
        ready_ids = {id(node) for node in ready}
        for node in ready:
            available.update(node.output)
        ordered.extend(ready)
        pending = [node for node in pending if id(node) not in ready_ids]
    copies = [type(node)() for node in ordered]
    for copy, node in zip(copies, ordered, strict=True):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


def _copy_without_value_info(model: Any) -> Any:
    """A copy without intermediate type annotations (stale after a dtype change)."""
    copy = type(model)()
    copy.CopyFrom(model)
    del copy.graph.value_info[:]
    return copy


def _name_unnamed_nodes(graph: Any) -> None:
    taken = {node.name for node in graph.node}
    for index, node in enumerate(graph.node):
        if not node.name:
            candidate = f"{node.op_type}_{index}"
            while candidate in taken:
                candidate += "_"
            node.name = candidate
            taken.add(candidate)
