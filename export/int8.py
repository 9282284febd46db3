"""fp32 ONNX -> int8 ONNX by onnxruntime's dynamic quantisation (a CPU variant).

The graph is first pre-processed (shape inference and constant folding, so that weights
reached through a Transpose become constants); then the weights of every MatMul and
Gemm become int8 and activations are quantised on the fly (DynamicQuantizeLinear +
MatMulInteger). The patch-embedding convolution, LayerNorm, Softmax, the attention
side path and the linear head (``classifier_nodes``) stay fp32. These int8 kernels are
CPU kernels: TensorRT needs static Q/DQ quantisation instead, so this variant has no GPU config.

The format is U8S8 (uint8 activations x int8 weights) with 7-bit weights (``reduce_range``)
quantised per output channel. Why 7 bits: on x86-64 CPUs with AVX2 or AVX-512 but without
VNNI (e.g. AMD Zen 3, Intel Skylake), ONNX Runtime multiplies u8 x s8 with ``vpmaddubsw``,
which adds two adjacent products into a *saturating* int16. With 8-bit weights
(|w| <= 128) two products reach 2 x 255 x 128 = 65280 and are clipped to 32767: the same
file then gives other probabilities on those CPUs (seen: 0.83 off fp32 on a Zen 3, where a
VNNI CPU was 0.06 off). With |w| <= 64 a pair is at most 2 x 255 x 64 = 32640, so nothing
can saturate and every x86-64 CPU computes the same integers (ONNX Runtime's quantisation
docs recommend ``reduce_range`` or U8U8 for exactly this). Per-channel scales win back
the precision the eighth bit gave; U8U8 also avoids saturation but has no VNNI kernel and
ran 1.3 x fp32 instead of 1.8 x (``docs/export.md``, "int8"). ``int16_pair_bound`` checks
the written file: export refuses an int8 model whose weights could saturate.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from export._logging import quieter
from export.onnx_export import guard_nodes

QUANTISED_OP_TYPES = ("MatMul", "Gemm")
INT16_MAX = 32767
INT16_MIN = -32768
UINT8_MAX = 255


@dataclass(frozen=True)
class Int8Settings:
    """The ``quantize_dynamic`` options that decide the int8 format."""

    per_channel: bool = True
    reduce_range: bool = True  # 7-bit weights: no int16 saturation without VNNI
    weight_type: str = "QInt8"  # an onnxruntime.quantization.QuantType name
    head_fp32: bool = True  # keep the linear head (classifier_nodes) in fp32

    def __post_init__(self) -> None:
        if self.weight_type not in ("QInt8", "QUInt8"):
            raise ValueError(f"weight_type must be QInt8 or QUInt8, got {self.weight_type!r}")


INT8_SETTINGS = Int8Settings()
CLASSIFIER_FP32_WHY = (
    "the head reads the CLS embedding, whose per-dimension spread is small beside its range: "
    "uint8 per-tensor activations erase it (bundled model: 0.48 max probability difference with "
    "the head in int8), and a 192 x 14 product costs nothing in fp32"
)
#: What export wrote before (per tensor, 8-bit weights, head in int8): saturates on x86-64
#: without VNNI.
#: Kept to show, in tests, what the saturation check catches.
SATURATING_SETTINGS = Int8Settings(per_channel=False, reduce_range=False, head_fp32=False)


def quantise_int8(
    source: str | os.PathLike[str], target: str | os.PathLike[str], settings: Int8Settings = INT8_SETTINGS
) -> dict[str, Any]:
    """Write the dynamically quantised model of ``source`` to ``target``; return notes."""
    import tempfile
    from pathlib import Path

    import onnx
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as scratch, quieter(""):  # the quantiser logs at INFO
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        prepared_model = onnx.load(str(prepared))
        kept_fp32 = classifier_nodes(prepared_model) if settings.head_fp32 else []
        # The out-of-distribution guard's whitening product stays fp32 (like the head, it reads
        # the CLS embedding's small per-dimension spread).
        kept_fp32 = sorted({*kept_fp32, *guard_nodes(prepared_model)})
        quantize_dynamic(
            model_input=str(prepared),
            model_output=str(target),
            op_types_to_quantize=list(QUANTISED_OP_TYPES),
            # quantize_dynamic rewrites a Gemm into "<name>_MatMul" + Add before it checks exclusions
            nodes_to_exclude=[name for node in kept_fp32 for name in (node, f"{node}_MatMul")],
            per_channel=settings.per_channel,
            reduce_range=settings.reduce_range,
            weight_type=QuantType[settings.weight_type],
        )
    signed = settings.weight_type == "QInt8"
    weight_range = (
        ([-64, 64] if signed else [0, 127])
        if settings.reduce_range
        else ([-128, 127] if signed else [0, 255])
    )
    return {
        "quantisation": {
            "method": "onnxruntime.quantization.quant_pre_process + quantize_dynamic",
            "onnxruntime": onnxruntime.__version__,
            **asdict(settings),
            "format": "U8S8 (uint8 activations x int8 weights)" if signed else "U8U8 (uint8 x uint8)",
            "activations": "uint8, per tensor, scale and zero point from each batch at run time "
            "(DynamicQuantizeLinear)",
            "weights": f"{'per output channel' if settings.per_channel else 'per tensor'}, "
            f"symmetric, values in {weight_range}",
            "quantised_op_types": list(QUANTISED_OP_TYPES),
            "kept_fp32": {"nodes": kept_fp32, "why": CLASSIFIER_FP32_WHY},
            "why": "7-bit weights keep every adjacent u8 x s8 pair sum inside int16 "
            "(2 x 255 x 64 = 32640 <= 32767), so x86-64 CPUs without VNNI (vpmaddubsw saturates "
            "int16) compute the same integers as VNNI CPUs; per-channel scales recover the "
            "precision of the lost bit",
        },
        "int16_pair_sums": int16_pair_bound(onnx.load(str(target))),
        "runs_on": "CPU (MatMulInteger/DynamicQuantizeLinear kernels); TensorRT needs static Q/DQ",
    }


def classifier_nodes(model: Any, output: str = "probabilities") -> list[str]:
    """The MatMul/Gemm nodes nearest ``output``: the linear head, kept in fp32.

    Walks back from the output through the nodes that produce it and stops at the first
    matrix product on each path (the head's; the encoder lies behind it).
    """
    producers = {name: node for node in model.graph.node for name in node.output}
    found: list[str] = []
    pending, seen = [output], set()
    while pending:
        node = producers.get(pending.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in QUANTISED_OP_TYPES:
            found.append(node.name)
        else:
            pending.extend(node.input)
    if not found:
        raise ValueError(f"no MatMul/Gemm produces {output!r}: cannot find the classifier head")
    return sorted(found)


def int16_pair_bound(model: Any) -> dict[str, Any]:
    """The largest and smallest sum of two adjacent u8 x s8 products any input can produce.

    For every MatMulInteger with constant int8 weights ``B [K, N]`` and uint8 activations
    ``A`` (0..255): over the pairs of weights (2k, 2k + 1) of each column (the pairs that
    ``vpmaddubsw`` adds, K padded with 0), the extremes of ``a0 * w0 + a1 * w1`` are
    ``255 * (max(w0, 0) + max(w1, 0))`` and ``255 * (min(w0, 0) + min(w1, 0))``. Within
    int16 for every pair, no CPU can saturate. uint8 weights are widened to int16 by
    ONNX Runtime (no ``vpmaddubsw``), so only int8 weights are bounded here.
    """
    from onnx import numpy_helper

    constants = {init.name: init for init in model.graph.initializer}
    largest, smallest, checked = 0, 0, 0
    for node in model.graph.node:
        if node.op_type != "MatMulInteger" or node.input[1] not in constants:
            continue
        weights = numpy_helper.to_array(constants[node.input[1]])
        if weights.dtype != np.int8:
            continue
        checked += 1
        columns = weights.reshape(-1, weights.shape[-1]).astype(np.int64)
        if columns.shape[0] % 2:
            columns = np.vstack([columns, np.zeros((1, columns.shape[1]), dtype=np.int64)])
        even, odd = columns[0::2], columns[1::2]
        largest = max(largest, int((np.maximum(even, 0) + np.maximum(odd, 0)).max()) * UINT8_MAX)
        smallest = min(smallest, int((np.minimum(even, 0) + np.minimum(odd, 0)).min()) * UINT8_MAX)
    return {
        "max": largest,
        "min": smallest,
        "int16_range": [INT16_MIN, INT16_MAX],
        "saturation_free": smallest >= INT16_MIN and largest <= INT16_MAX,
        "int8_weight_matmuls": checked,
        "what": "extremes of u8 x s8 + u8 x s8 over adjacent int8 weight pairs along K, "
        "activations anywhere in 0..255",
    }
