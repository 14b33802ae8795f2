"""Bias correction: which INT8 layers can take a measured shift of their output into their bias.

Rounding a layer's weights to 255 levels per channel gives an error ``w_q - w`` whose effect on
the output does not average out: output channel ``o`` of a Conv, ConvTranspose or Gemm moves by
``sum((w_q - w)[o] * E[x])`` on average, and E[x] is far from zero after a Relu (depthwise
convolutions, nine weights per channel, are hit hardest). That mean can be measured on
calibration data and subtracted from the layer's float bias (the bias correction of Nagel et al.,
"Data-Free Quantization", 2019, measured empirically, layer by layer):

* ``quantize_model(..., bias_probe=True)`` adds, for each correctable layer, a reference branch
  (the same op on the same dequantized input, with the float weights and bias) and a graph
  output holding each sample's per-channel mean of the difference
  (:meth:`calib.qdq.rewrite.Emitter.add_bias_probe`);
* :func:`calib.collect.bias_shifts` averages those outputs over the data;
* ``quantize_model(..., bias_shift=...)`` subtracts the averages from the biases
  (:meth:`calib.qdq.rewrite.Emitter.correct_bias`).

Only the weights' error is corrected, not the input's: clipping an input makes an error that
depends on the sample (a few large values), and a constant correction for it would move every
output to pay for them. The cache is unaffected: it holds scales only.
"""
from __future__ import annotations

import numpy as np

from ..graph import Graph, attr
from .placement import Placement

BIAS_CORRECTABLE_OPS = ("Conv", "ConvTranspose", "Gemm")


def out_channels(G: Graph, n) -> int | None:
    """Output channels of a Conv / ConvTranspose / Gemm with a constant weight (input 1), else None."""
    w = G.const(n.input[1]) if len(n.input) > 1 else None
    if w is None or w.ndim < 2:
        return None
    if n.op_type == "Conv":
        return int(w.shape[0])
    if n.op_type == "ConvTranspose":
        return int(w.shape[1]) * int(attr(n, "group", 1))
    if n.op_type == "Gemm" and w.ndim == 2:
        return int(w.shape[0] if attr(n, "transB", 0) else w.shape[1])
    return None


def bias_correctable(G: Graph, n, P: Placement) -> bool:
    """An INT8 Conv / ConvTranspose / Gemm with a quantized activation input 0 and a quantized
    constant weight 1, whose bias (if any) is a constant vector of one value per output channel:
    a per-channel shift of its output can be folded into that bias."""
    if n.op_type not in BIAS_CORRECTABLE_OPS or (id(n), 0) not in P.edges or (id(n), 1) not in P.weight_axis:
        return False
    c = out_channels(G, n)
    if c is None:
        return False
    if n.op_type == "Gemm" and float(attr(n, "beta", 1.0)) == 0.0:
        return False
    if len(n.input) > 2 and n.input[2]:
        b = G.const(n.input[2])
        return b is not None and b.ndim == 1 and b.shape[0] == c
    return True


def corrected_bias(old: np.ndarray | None, shift, channels: int, beta: float = 1.0) -> np.ndarray | None:
    """The bias that cancels a mean output error *shift* (one value per output channel):
    ``old - shift / beta`` in float64, as float32 (*old* None: no bias yet, zeros). None when
    *shift* does not hold *channels* finite values."""
    shift = np.asarray(shift, np.float64).ravel()
    if shift.shape != (channels,) or not np.all(np.isfinite(shift)):
        return None
    old = np.zeros(channels, np.float64) if old is None else old.astype(np.float64)
    return (old - shift / beta).astype(np.float32)
