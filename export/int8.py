"""fp32 ONNX -> int8 ONNX by onnxruntime's dynamic quantisation (a CPU variant).

The graph is first pre-processed (shape inference and constant folding, so that weights
reached through a Transpose become constants); then the weights of every MatMul and
Gemm become int8 and activations are quantised on the fly (DynamicQuantizeLinear +
MatMulInteger). The patch-embedding convolution, LayerNorm,
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
    import tempfile
    from pathlib import Path

    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as scratch, quieter(""):  # the quantiser logs at INFO
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_dynamic(
            model_input=str(prepared),
            model_output=str(target),
            op_types_to_quantize=list(QUANTISED_OP_TYPES),
            per_channel=False,
            weight_type=QuantType.QInt8,
        )
    return {
        "method": "onnxruntime.quantization.quant_pre_process + quantize_dynamic",
        "weight_type": "QInt8",
        "quantised_op_types": list(QUANTISED_OP_TYPES),
        "per_channel": False,
        "runs_on": "CPU (MatMulInteger/DynamicQuantizeLinear kernels); TensorRT needs static Q/DQ",
    }
