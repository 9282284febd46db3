"""fp32 ONNX -> int8 ONNX by onnxruntime's dynamic quantisation (a CPU variant).

Weights of every MatMul and Gemm become int8; activations are quantised on the fly
(DynamicQuantizeLinear + MatMulInteger). The patch-embedding convolution, LayerNorm,
Softmax and the attention side path stay fp32. These int8 kernels are CPU kernels:
TensorRT needs static Q/DQ quantisation instead, so this variant has no GPU config.
"""

from __future__ import annotations

import os
from typing import Any

from export._logging import quieter

QUANTISED_OP_TYPES = ("MatMul", "Gemm")


def quantise_int8(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> dict[str, Any]:
    """Write the dynamically quantised model of ``source`` to ``target``; return notes."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quieter(""):  # the quantiser logs every tensor it skips at INFO on the root logger
        quantize_dynamic(
            model_input=str(source),
            model_output=str(target),
            op_types_to_quantize=list(QUANTISED_OP_TYPES),
            per_channel=False,
            weight_type=QuantType.QInt8,
        )
    return {
        "method": "onnxruntime.quantization.quantize_dynamic",
        "weight_type": "QInt8",
        "quantised_op_types": list(QUANTISED_OP_TYPES),
        "per_channel": False,
        "runs_on": "CPU (MatMulInteger/DynamicQuantizeLinear kernels); TensorRT needs static Q/DQ",
    }
