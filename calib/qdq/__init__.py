"""Explicit quantization: write a Q/DQ (QuantizeLinear / DequantizeLinear) ONNX model.

``quantize_model(model, amax, target=...)`` rewrites an FP32 model so that the quantization
chosen by calibration is in the graph itself:

* activations: per tensor, scale ``amax / 127``, symmetric (int8 zero point 0 for
  ``tensorrt``; uint8 zero point 128 for ``onnxruntime``, the same grid shifted, because ONNX
  Runtime's x86 integer kernels want U8 activations and S8 weights);
* weights: int8 initializers with a DequantizeLinear, scale ``max|w| / 127`` per output channel
  (Conv axis 0, ConvTranspose axis 1, Gemm axis 0 with ``transB=1`` else 1, MatMul with a
  constant B: its last axis) or per tensor with ``per_channel=False``.

Two placements (:mod:`calib.qdq.placement`: a table per target from op type to rule):

``target="tensorrt"``
    What TensorRT fuses in a strongly typed network (TensorRT developer guide, "Explicit
    quantization" / "Q/DQ layer-placement recommendations"): quantize the inputs of weighted
    ops (Conv, ConvTranspose, Gemm, MatMul: both inputs when both are activations), the input of
    pooling ops, and the residual (non-fused) input of an Add whose other input is the output of
    a weighted op that only feeds this Add (so TensorRT fuses Conv+Add); outputs stay float
    (TensorRT propagates Q/DQ and fuses on its own) and network outputs are never quantized.
    Biases stay float.

``target="onnxruntime"``
    What ONNX Runtime's CPU QDQ optimizer turns into integer kernels: inputs *and* outputs of
    Conv / Gemm / MatMul / Add / Concat / (Global)AveragePool are quantized so the chains
    DQ -> op -> Q become QLinearConv, QGemm, MatMulIntegerToFloat, QLinearAdd, ...; biases are
    int32 (scale = input scale x weight scale); a Relu or Clip(0, m) right after such an op is
    folded into the output quantization (uint8, zero point 0, scale ``amax / 255``, which clamps
    exactly as the Relu/Clip did); data-movement ops (Reshape, Transpose, Squeeze, Unsqueeze,
    Flatten, Slice, Gather, MaxPool) carry their input's scale through so ONNX Runtime runs them
    on int8 data. Gemm/MatMul producing a network output keep a float output.

Bias correction (both targets, :mod:`calib.qdq.bias`): ``quantize_model(..., bias_probe=True)``
adds graph outputs measuring each INT8 Conv / ConvTranspose / Gemm's mean output error per
channel caused by rounding its weights, :func:`calib.collect.bias_shifts` averages them over
calibration data, and ``quantize_model(..., bias_shift=...)`` subtracts them from the biases.

Before placement, both targets work on the prepared model (:func:`prepare`,
:mod:`calib.preparation`): opset raised to 13 where lower, Dropout/Identity removed, constant zero
Pads folded into the following Conv's ``pads`` and a BatchNormalization after a Conv folded into
its weights (so weights are quantized as they will be used). Channel smoothing factors
(:mod:`calib.smooth`), if given, are applied to that float graph before placement.

A :class:`~calib.plan.PrecisionPlan` chooses per node: ``fp32`` nodes get no Q/DQ on their
inputs and keep float weights, ``fp16`` nodes are wrapped in Cast nodes (float16 in, float32
out) and get no Q/DQ, ``int8`` nodes (the default) are quantized as the target places them.
With ``fp16_fallback`` (the default for ``onnxruntime``) an fp16 node whose op ONNX Runtime's CPU
provider has no float16 kernel for (not in :data:`ORT_FP16_OPS`) stays float32 between Casts to
float16 and back on its inputs, weights and outputs: ONNX Runtime computes it on rounded values
instead of silently dropping the rounding. Plan entries of nodes that preparation folded away
follow the node they were folded into. The rewrite (:mod:`calib.qdq.rewrite`) uses only standard
ONNX ops, so ONNX Runtime runs the same graph TensorRT builds.

Output is deterministic (same inputs give byte-identical models); inserted nodes and tensors are
named after the tensor they quantize (``<tensor>_QuantizeLinear``, ``<tensor>_dequantized``).
``quantize_model(...).quant_report`` says what was quantized, folded and left in float.
"""
from __future__ import annotations

from ..errors import QuantizationError
from ..graph import WEIGHTED_OPS
from ..preparation import MIN_OPSET, Preparation, prepare
from .bias import BIAS_CORRECTABLE_OPS
from .placement import DATA_MOVEMENT_OPS, ORT_FP16_OPS, ORT_INT8_OPS, POOL_OPS, QParams
from .quantize import TARGETS, QuantReport, check_input, quantize_model, required_tensors

__all__ = [
    "BIAS_CORRECTABLE_OPS", "DATA_MOVEMENT_OPS", "MIN_OPSET", "ORT_FP16_OPS", "ORT_INT8_OPS", "POOL_OPS", "TARGETS",
    "WEIGHTED_OPS", "Preparation", "QParams", "QuantReport", "QuantizationError", "check_input", "prepare",
    "quantize_model", "required_tensors",
]
