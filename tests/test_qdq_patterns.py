"""Q/DQ placement and the graph passes on tiny hand-built graphs (milliseconds each), so that a
placement change fails here first, not only through whole models.

Each pattern is checked twice: the graph structure (where the Q/DQ nodes are, which scales and
zero points they carry, what was folded), and the numbers: ONNX Runtime runs the Q/DQ model and
the float model on the same random input, and they must agree within the worst-case error of the
quantization steps the scales allow (every amax is the float run's own maximum, so nothing
clips). A scale that is too small clips and breaks the bound; the structure checks pin each
scale exactly.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from calib import graph
from calib.backends.onnxruntime import OrtEngine
from calib.model import Model
from calib.plan import PrecisionPlan
from calib.qdq import ORT_INT8_OPS, TARGETS, prepare, quantize_model
from calib.qdq.placement import DATA_MOVEMENT_OPS, ORT_RULES

F = TensorProto.FLOAT
X_SHAPE = (2, 3, 6, 6)


# --------------------------------------------------------------------------- building and running
def _model(nodes, inits: dict, x_shape=X_SHAPE, outputs=("y",), opset=13) -> Model:
    g = helper.make_graph(nodes, "pattern", [helper.make_tensor_value_info("x", F, list(x_shape))],
                          [helper.make_tensor_value_info(o, F, [None] * len(x_shape)) for o in outputs],
                          initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return Model.from_proto(helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8))


def _weights(seed: int, *shapes) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


def _input(seed: int = 0, shape=X_SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _float_run(m: Model, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every tensor of the float model on *x* (input included)."""
    out = OrtEngine(m, capture=m.activation_tensors(), threads=1).run({"x": x})
    return {"x": x, **out}


def _amax(values: dict[str, np.ndarray]) -> dict[str, float]:
    return {k: float(np.abs(v).max()) for k, v in values.items()}


def _quantize(m: Model, x: np.ndarray, target: str, **kw):
    """(Q/DQ model, its graph view, float tensors, Q/DQ model's output ``y`` on *x*)."""
    ref = _float_run(m, x)
    q = quantize_model(m, _amax(ref), target=target, **kw)
    y = OrtEngine(q, threads=1).run({"x": x})["y"]
    return q, _View(q), ref, y


class _View:
    """The quantized graph: producers, consumers, initializer values."""

    def __init__(self, m: Model):
        self.nodes = list(m.proto.graph.node)
        self.prod = {o: n for n in self.nodes for o in n.output}
        self.cons: dict[str, list] = {}
        for n in self.nodes:
            for i in n.input:
                self.cons.setdefault(i, []).append(n)
        self.inits = {i.name: numpy_helper.to_array(i) for i in m.proto.graph.initializer}

    def node(self, name):
        return next(n for n in self.nodes if n.name == name)

    def ops(self, op):
        return [n for n in self.nodes if n.op_type == op]

    def op_of(self, tensor):
        n = self.prod.get(tensor)
        return n.op_type if n is not None else None

    def dq_source(self, tensor):
        """``(float tensor, scale, zero point)`` when *tensor* is DequantizeLinear(QuantizeLinear(t)),
        else None."""
        dq = self.prod.get(tensor)
        if dq is None or dq.op_type != "DequantizeLinear":
            return None
        q = self.prod.get(dq.input[0])
        assert q is not None and q.op_type == "QuantizeLinear", f"{tensor}: DQ of {dq.input[0]}"
        assert list(q.input[1:]) == list(dq.input[1:])
        return q.input[0], self.inits[q.input[1]], self.inits[q.input[2]]

    def weight(self, tensor):
        """``(int8 values, scales, axis)`` when *tensor* is DequantizeLinear of an int8 initializer."""
        dq = self.prod.get(tensor)
        assert dq is not None and dq.op_type == "DequantizeLinear", tensor
        q = self.inits[dq.input[0]]
        assert q.dtype == np.int8 and not self.inits[dq.input[2]].any()
        axis = next((helper.get_attribute_value(a) for a in dq.attribute if a.name == "axis"), None)
        return q, self.inits[dq.input[1]], axis


def _step(amax: float, levels: float = 127.0) -> float:
    return float(np.float32(amax) / np.float32(levels))


def _channel_scales(w: np.ndarray, axis: int) -> np.ndarray:
    red = tuple(i for i in range(w.ndim) if i != axis)
    return (np.abs(w).max(axis=red) / np.float32(127.0)).astype(np.float32)


def _linear_err(w: np.ndarray, axis: int, s_w: np.ndarray, e_in: float, in_max: float) -> float:
    """Worst-case error of a Conv / MatMul output when its input carries an error up to *e_in*
    (|input| <= *in_max*) and its weights one of up to half their channel's step *s_w*."""
    rows = np.moveaxis(np.abs(w).astype(np.float64), axis, 0).reshape(w.shape[axis], -1)
    taps = rows.shape[1]
    return float(np.max(rows.sum(1) * e_in + taps * (in_max + e_in) * s_w.astype(np.float64) / 2))


def _close(got: np.ndarray, want: np.ndarray, bound: float):
    err = float(np.abs(got.astype(np.float64) - want).max())
    assert err <= bound * 1.001 + 1e-6, (err, bound)
    return err


def _assert_weight(view: _View, tensor: str, w: np.ndarray, axis: int):
    q, s, ax = view.weight(tensor)
    assert ax == axis and s.shape == (w.shape[axis],)
    np.testing.assert_array_equal(s, _channel_scales(w, axis))
    shape = [1] * w.ndim
    shape[axis] = -1
    np.testing.assert_array_equal(q, np.clip(np.rint(w / s.reshape(shape)), -127, 127).astype(np.int8))
    return s


def _assert_act(view: _View, tensor: str, source: str, amax: float, target: str, relu: bool = False) -> float:
    """*tensor* is DQ(Q(*source*)) with the target's parameters for *amax*; returns the scale."""
    src, s, z = view.dq_source(tensor)
    assert src == source
    if relu:
        assert (s, z, z.dtype) == (np.float32(_step(amax, 255.0)), 0, np.uint8)
    elif target == "tensorrt":
        assert (s, z, z.dtype) == (np.float32(_step(amax)), 0, np.int8)
    else:
        assert (s, z, z.dtype) == (np.float32(_step(amax)), 128, np.uint8)
    return float(s)


# --------------------------------------------------------------------------- Conv + Add residual
def _residual():
    """x -> Conv0 -> h -> Conv1 (1x1) -> c ; y0 = Add(c, h) ; y = Relu(y0)."""
    w0, b0, w1, b1 = _weights(1, (4, 3, 3, 3), (4,), (4, 4, 1, 1), (4,))
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["h"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["h", "w1", "b1"], ["c"], name="conv1"),
             helper.make_node("Add", ["c", "h"], ["y0"], name="add"),
             helper.make_node("Relu", ["y0"], ["y"], name="relu")]
    return _model(nodes, {"w0": w0, "b0": b0, "w1": w1, "b1": b1}), (w0, w1)


def test_residual_add_tensorrt_quantizes_the_unfused_input_only():
    m, (w0, w1) = _residual()
    x = _input()
    q, v, ref, y = _quantize(m, x, "tensorrt")
    a = _amax(ref)
    conv0, conv1, add = v.node("conv0"), v.node("conv1"), v.node("add")
    s_x = _assert_act(v, conv0.input[0], "x", a["x"], "tensorrt")
    s_h = _assert_act(v, conv1.input[0], "h", a["h"], "tensorrt")
    assert add.input[0] == "c" and v.op_of("c") == "Conv"            # fused: no Q/DQ on the Conv output
    assert _assert_act(v, add.input[1], "h", a["h"], "tensorrt") == s_h   # the residual input
    assert add.input[1] != conv1.input[0]                              # one DQ per consuming edge
    assert [n.input[0] for n in v.ops("QuantizeLinear")] == ["x", "h"]
    assert v.op_of(conv0.input[2]) is None                             # TensorRT: float bias
    sw0 = _assert_weight(v, conv0.input[1], w0, 0)
    sw1 = _assert_weight(v, conv1.input[1], w1, 0)
    assert q.quant_report.int8_nodes == ["conv0", "conv1", "add"]
    e_h = _linear_err(w0, 0, sw0, s_x / 2, a["x"])
    e_hq = e_h + s_h / 2
    e_c = _linear_err(w1, 0, sw1, e_hq, a["h"])
    _close(y, ref["y"], e_c + e_hq)


def test_residual_add_onnxruntime_quantizes_inputs_and_output():
    m, (w0, w1) = _residual()
    x = _input()
    q, v, ref, y = _quantize(m, x, "onnxruntime")
    a = _amax(ref)
    conv0, conv1, add, relu = v.node("conv0"), v.node("conv1"), v.node("add"), v.node("relu")
    s_x = _assert_act(v, conv0.input[0], "x", a["x"], "onnxruntime")
    s_h = _assert_act(v, conv1.input[0], "h", a["h"], "onnxruntime")
    s_c = _assert_act(v, add.input[0], "c", a["c"], "onnxruntime")
    assert _assert_act(v, add.input[1], "h", a["h"], "onnxruntime") == s_h
    s_y0 = _assert_act(v, relu.input[0], "y0", a["y0"], "onnxruntime")    # the Add's output
    assert {n.op_type for n in v.cons["h"]} == {"QuantizeLinear"}          # Conv output only feeds its Q
    for conv in (conv0, conv1):                                           # int32 bias: input x weight scale
        b = v.prod[conv.input[2]]
        assert b.op_type == "DequantizeLinear" and v.inits[b.input[0]].dtype == np.int32
    sw0 = _assert_weight(v, conv0.input[1], w0, 0)
    sw1 = _assert_weight(v, conv1.input[1], w1, 0)
    np.testing.assert_array_equal(v.inits[v.prod[conv0.input[2]].input[1]], np.float32(s_x) * sw0)
    e_h = _linear_err(w0, 0, sw0, s_x / 2, a["x"]) + s_x * sw0.max() + s_h / 2
    e_c = _linear_err(w1, 0, sw1, e_h, a["h"]) + s_h * sw1.max() + s_c / 2
    _close(y, ref["y"], e_c + e_h + s_y0 / 2)


# --------------------------------------------------------------------------- Conv + Relu
def _conv_relu():
    """x -> Conv -> c -> Relu -> r -> Sigmoid -> y."""
    w, b = _weights(2, (4, 3, 3, 3), (4,))
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Sigmoid", ["r"], ["y"], name="sigmoid")]
    return _model(nodes, {"w": w, "b": b}), w


def test_conv_relu_onnxruntime_folds_the_relu_into_the_output_quantization():
    m, w = _conv_relu()
    x = _input(1)
    q, v, ref, y = _quantize(m, x, "onnxruntime")
    a = _amax(ref)
    assert not v.ops("Relu") and q.quant_report.folded == ["relu"]
    conv = v.node("conv")
    assert list(conv.output) == ["r"]                                     # the Conv writes the Relu's output
    s_r = _assert_act(v, v.node("sigmoid").input[0], "r", a["r"], "onnxruntime", relu=True)   # uint8, zp 0
    s_x = _assert_act(v, conv.input[0], "x", a["x"], "onnxruntime")
    sw = _assert_weight(v, conv.input[1], w, 0)
    e_r = _linear_err(w, 0, sw, s_x / 2, a["x"]) + s_x * sw.max() + s_r / 2
    _close(y, ref["y"], e_r / 4)                                          # Sigmoid: slope <= 1/4


def test_conv_relu_tensorrt_keeps_the_relu_and_its_output_float():
    m, w = _conv_relu()
    x = _input(1)
    q, v, ref, y = _quantize(m, x, "tensorrt")
    a = _amax(ref)
    conv, relu, sig = v.node("conv"), v.node("relu"), v.node("sigmoid")
    assert list(conv.output) == ["c"] and list(relu.input) == ["c"] and list(sig.input) == ["r"]
    assert [n.input[0] for n in v.ops("QuantizeLinear")] == ["x"] and q.quant_report.folded == []
    s_x = _assert_act(v, conv.input[0], "x", a["x"], "tensorrt")
    sw = _assert_weight(v, conv.input[1], w, 0)
    _close(y, ref["y"], _linear_err(w, 0, sw, s_x / 2, a["x"]) / 4)


# --------------------------------------------------------------------------- MatMul with a constant weight
@pytest.mark.parametrize("target", TARGETS)
def test_matmul_constant_weight_is_int8_per_channel_on_its_last_axis(target):
    (w,) = _weights(3, (8, 6))
    m = _model([helper.make_node("MatMul", ["x", "w"], ["y"], name="matmul")], {"w": w}, x_shape=(2, 3, 8))
    x = _input(2, (2, 3, 8))
    q, v, ref, y = _quantize(m, x, target)
    a = _amax(ref)
    mm = v.node("matmul")
    s_x = _assert_act(v, mm.input[0], "x", a["x"], target)
    sw = _assert_weight(v, mm.input[1], w, 1)
    assert sw.shape == (6,) and mm.output[0] == "y" and not v.cons.get("y")   # float network output
    assert q.quant_report.int8_nodes == ["matmul"]
    _close(y, ref["y"], _linear_err(w, 1, sw, s_x / 2, a["x"]))


# --------------------------------------------------------------------------- precision plans
def _two_convs():
    """x -> Conv1 -> Relu -> r -> Conv2 -> y."""
    w1, b1, w2, b2 = _weights(4, (4, 3, 3, 3), (4,), (5, 4, 3, 3), (5,))
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2", "b2"], ["y"], name="conv2")]
    return _model(nodes, {"w1": w1, "b1": b1, "w2": w2, "b2": b2}), (w1, w2)


def _plan_err(v, ref, target, w1, w2) -> tuple[float, float]:
    """Error bound of r (Conv1 INT8, then Relu) and of Conv2's float output from it."""
    a = _amax(ref)
    conv1 = v.node("conv1")
    s_x = _assert_act(v, conv1.input[0], "x", a["x"], target)
    sw1 = _assert_weight(v, conv1.input[1], w1, 0)
    e_r = _linear_err(w1, 0, sw1, s_x / 2, a["x"])
    if target == "onnxruntime":      # Conv1's output is quantized before the Relu, int32 bias
        e_r += s_x * sw1.max() + _assert_act(v, v.node("relu").input[0], "c1", a["c1"], target) / 2
    return e_r, float(np.abs(w2).reshape(w2.shape[0], -1).sum(1).max()) * e_r


def _planned(target: str, precision: str):
    """The two-Conv graph quantized with ``conv2`` planned *precision*: (report, view, float
    tensors, output, Conv2's input r and weights' error bounds)."""
    m, (w1, w2) = _two_convs()
    q, v, ref, y = _quantize(m, _input(3), target, plan=PrecisionPlan(layers={"conv2": precision}))
    r = q.quant_report
    assert getattr(r, f"{precision}_nodes") == ["conv2"] and r.int8_nodes == ["conv1"]
    assert v.op_of("r") == "Relu"                         # Conv2's input: the float Relu output
    return r, v, ref, y, w2, _plan_err(v, ref, target, w1, w2)


@pytest.mark.parametrize("target", TARGETS)
def test_fp16_node_is_wrapped_in_casts_without_qdq(target):
    _, v, ref, y, w2, (e_r, e_y) = _planned(target, "fp16")
    conv2 = v.node("conv2")
    # TensorRT: the Conv computes in float16. ONNX Runtime has no float16 Conv kernel on the CPU:
    # the Conv stays float32 between Casts to float16 and back (its rounding kept, not dropped)
    chain = [TensorProto.FLOAT16] if target == "tensorrt" else [F, TensorProto.FLOAT16]
    for t, src in zip(conv2.input, ["r", "w2", "b2"], strict=True):
        for to in chain:
            cast = v.prod[t]
            assert cast.op_type == "Cast" and helper.get_attribute_value(cast.attribute[0]) == to
            t = cast.input[0]
        assert t == src                                   # the float tensor itself, no DQ in between
    out = conv2.output[0]
    for to in chain[1:] + [F]:
        (after,) = v.cons[out]
        assert after.op_type == "Cast" and helper.get_attribute_value(after.attribute[0]) == to
        out = after.output[0]
    assert out == "y"
    if target == "onnxruntime":                           # the output is float16-rounded
        np.testing.assert_array_equal(y, y.astype(np.float16).astype(np.float32))
    # float16: inputs, weights, each of the products' partial sums and the output round by <= 2**-11 relative
    a = _amax(ref)
    taps = w2[0].size
    fp16 = (taps + 3) * 2.0 ** -11 * float(np.abs(w2).reshape(w2.shape[0], -1).sum(1).max()) * (a["r"] + e_r)
    _close(y, ref["y"], e_y + fp16 + 2.0 ** -11 * a["y"])


@pytest.mark.parametrize("target", TARGETS)
def test_fp32_node_gets_no_qdq_and_keeps_float_weights(target):
    r, v, ref, y, w2, (_, e_y) = _planned(target, "fp32")
    assert list(v.node("conv2").input) == ["r", "w2", "b2"]
    np.testing.assert_array_equal(v.inits["w2"], w2)
    assert r.folded == []                                  # no Relu fold into an fp32 consumer's input
    _close(y, ref["y"], e_y)


# --------------------------------------------------------------------------- folds
EPS = 1e-3


def _conv_bn():
    """x -> Conv -> c -> BatchNormalization -> b -> Relu -> y."""
    w, b, gamma, beta, mean = _weights(5, (4, 3, 3, 3), (4,), (4,), (4,), (4,))
    var = np.abs(_weights(6, (4,))[0]) + 0.5
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["bn_out"], name="bn",
                              epsilon=EPS),
             helper.make_node("Relu", ["bn_out"], ["y"], name="relu")]
    m = _model(nodes, {"w": w, "b": b, "gamma": gamma, "beta": beta, "mean": mean, "var": var})
    k = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + float(np.float32(EPS)))   # a float attribute
    wf = (w.astype(np.float64) * k[:, None, None, None]).astype(np.float32)
    bf = ((b.astype(np.float64) - mean) * k + beta).astype(np.float32)
    return m, wf, bf


def test_batchnorm_after_conv_is_folded_into_its_weights():
    m, wf, bf = _conv_bn()
    p = prepare(m)
    assert p.preparation.folded == ("bn",)
    (conv,) = p.proto.graph.node[:1]
    assert [n.op_type for n in p.proto.graph.node] == ["Conv", "Relu"] and list(conv.output) == ["bn_out"]
    np.testing.assert_array_equal(p.initializer(conv.input[1]), wf)
    np.testing.assert_array_equal(p.initializer(conv.input[2]), bf)
    for target in TARGETS:
        x = _input(4)
        q, v, ref, y = _quantize(m, x, target)
        a = _amax(ref)
        conv = v.node("conv")
        assert not v.ops("BatchNormalization") and q.quant_report.folded[0] == "bn"
        assert v.prod[conv.input[1]].input[0] == "w_bnfolded_quantized"
        s_x = _assert_act(v, conv.input[0], "x", a["x"], target)
        sw = _assert_weight(v, conv.input[1], wf, 0)
        err = _linear_err(wf, 0, sw, s_x / 2, a["x"])
        if target == "onnxruntime":
            err += s_x * sw.max() + _assert_act(v, v.node("relu").input[0], "bn_out", a["bn_out"], target) / 2
        _close(y, ref["y"], err)


def _pad_conv(value: float = 0.0, pads_from_subgraph: bool = False):
    """x -> Pad(constant *value*, H 1|2, W 2|1) -> p -> Conv(pads 1) -> c -> Relu -> y."""
    (w,) = _weights(7, (4, 3, 3, 3))
    pads = np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)
    inits = {"w": w, "value": np.float32(value)}
    nodes = []
    if pads_from_subgraph:     # as PyTorch exports them: computed from constants
        inits.update(pads_lo=pads[:4], pads_hi=pads[4:])
        nodes.append(helper.make_node("Concat", ["pads_lo", "pads_hi"], ["pads"], name="pads_concat", axis=0))
    else:
        inits["pads"] = pads
    nodes += [helper.make_node("Pad", ["x", "pads", "value"], ["p"], name="pad", mode="constant"),
              helper.make_node("Conv", ["p", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["c"], ["y"], name="relu")]
    return _model(nodes, inits), w


@pytest.mark.parametrize("subgraph", [False, True])
def test_zero_pad_is_folded_into_the_conv_pads(subgraph):
    m, w = _pad_conv(pads_from_subgraph=subgraph)
    p = prepare(m)
    assert p.preparation.folded == ("pad",)
    assert [n.op_type for n in p.proto.graph.node] == ["Conv", "Relu"]
    conv = p.proto.graph.node[0]
    assert conv.input[0] == "x" and graph.attr(conv, "pads") == [2, 3, 3, 2]
    x = _input(5)
    for target in TARGETS:
        q, v, ref, y = _quantize(m, x, target)
        a = _amax(ref)
        assert not v.ops("Pad") and q.quant_report.folded[0] == "pad"
        s_x = _assert_act(v, v.node("conv").input[0], "x", a["x"], target)
        sw = _assert_weight(v, v.node("conv").input[1], w, 0)
        err = _linear_err(w, 0, sw, s_x / 2, a["x"])
        if target == "onnxruntime":
            err += _assert_act(v, v.node("relu").input[0], "c", a["c"], target) / 2
        _close(y, ref["y"], err)


@pytest.mark.parametrize("named", [True, False])
def test_plan_entries_of_folded_nodes_follow_their_conv(named):
    """A plan naming every node of a Conv + BatchNorm + Relu (as a group plan does) keeps the Conv
    float; the BatchNorm folded into it follows it and is not an unmatched entry. Unnamed nodes
    too, where the Conv's key changes with the fold (node_of_c -> node_of_bn_out)."""
    m, _, _ = _conv_bn()
    if not named:
        for n in m.proto.graph.node:
            n.ClearField("name")
    keys = ["conv", "bn", "relu"] if named else ["node_of_c", "node_of_bn_out", "node_of_y"]
    p = prepare(m).preparation
    assert p.follows == {keys[1]: keys[0]}
    assert p.renamed == ({} if named else {"node_of_c": "node_of_bn_out"})
    x = _input(4)
    for target in TARGETS:
        q, v, _, _ = _quantize(m, x, target, plan=PrecisionPlan(dict.fromkeys(keys, "fp32") | {"gone": "fp16"}))
        r = q.quant_report
        assert r.unmatched_plan_entries == ["gone"] and r.folded_plan_entries == {keys[1]: keys[0]}
        assert not v.ops("QuantizeLinear") and not v.ops("DequantizeLinear")
        assert r.fp32_nodes == [keys[1] if not named else "conv"]   # the Conv, under its prepared key
        # the BatchNorm's entry alone does not make the Conv float
        q, v, _, _ = _quantize(m, x, target, plan=PrecisionPlan({keys[1]: "fp32"}))
        assert q.quant_report.folded_plan_entries == {keys[1]: keys[0]} and v.ops("QuantizeLinear")


def test_nonzero_pad_is_not_folded():
    m, _ = _pad_conv(value=0.5)
    p = prepare(m)
    assert p.preparation.folded == () and [n.op_type for n in p.proto.graph.node] == ["Pad", "Conv", "Relu"]


# --------------------------------------------------------------------------- the rule tables
def test_onnxruntime_rule_table_covers_its_op_lists():
    assert set(ORT_RULES) == set(ORT_INT8_OPS) | set(DATA_MOVEMENT_OPS)


# --------------------------------------------------------------------------- calib.graph
def _graph(nodes, inits=(), opset=13, outputs=("y",)):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [2, 3])],
                          [helper.make_tensor_value_info(o, F, None) for o in outputs],
                          initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits])
    return graph.Graph(helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8))


def test_const_eval_evaluates_constant_subgraphs_only():
    G = _graph([
        helper.make_node("Constant", [], ["k"], value_ints=[1, 2]),             # not a `value` tensor
        helper.make_node("Concat", ["k", "i"], ["ki"], axis=0),
        helper.make_node("Shape", ["i"], ["si"]),
        helper.make_node("Mul", ["ki", "si"], ["prod"]),
        helper.make_node("Shape", ["x"], ["sx"]),                                # depends on the input
        helper.make_node("Add", ["x", "f"], ["y"]),
        helper.make_node("Foo", ["f"], ["custom"], domain="com.acme"),           # not the standard domain
    ], [("i", np.array([3, 4, 5], np.int64)), ("f", np.float32(2.0))])
    consts = graph.ConstEval(G)
    assert G.const("k") is None and consts.value("k").tolist() == [1, 2]
    assert consts.value("ki").tolist() == [1, 2, 3, 4, 5]
    assert consts.value("prod").tolist() == [3, 6, 9, 12, 15]                # Shape(i) = [3]
    assert consts.value("f") is G.const("f")                                 # an initializer: decoded once
    for t in ("sx", "y", "custom", "x", "nothing"):
        assert consts.value(t) is None, t
    assert consts.value("prod") is consts.value("prod")                      # evaluated once
    assert graph.ConstEval(G, limit=2).value("prod") is None                 # 3 nodes needed


def test_clip_bounds_of_relu_and_clip():
    G = _graph([
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Clip", ["x", "zero", "six"], ["r6"]),
        helper.make_node("Clip", ["x", "", "six"], ["hi_only"]),
        helper.make_node("Clip", ["x", "lo"], ["lo_sub"]),
        helper.make_node("Neg", ["six"], ["lo"]),                                 # a constant subgraph
        helper.make_node("Clip", ["x", "x_min"], ["dynamic"]),
        helper.make_node("ReduceMin", ["x"], ["x_min"], keepdims=0),
        helper.make_node("Sigmoid", ["x"], ["y"]),
    ], [("zero", np.float32(0.0)), ("six", np.float32(6.0))])
    consts = graph.ConstEval(G)
    got = {n.output[0]: graph.clip_bounds(n, consts) for n in G.g.node}
    assert got == {"r": (0.0, math.inf), "r6": (0.0, 6.0), "hi_only": (-math.inf, 6.0), "lo_sub": (-6.0, math.inf),
                   "lo": None, "dynamic": None, "x_min": None, "y": None}
    old = _graph([helper.make_node("Clip", ["x"], ["y"], min=-1.0, max=2.5)], opset=10)
    assert graph.clip_bounds(old.g.node[0], graph.ConstEval(old)) == (-1.0, 2.5)


def test_toposort_is_stable_and_orders_producers_first():
    a = helper.make_node("Relu", ["x"], ["a"], name="a")
    b = helper.make_node("Neg", ["a"], ["b"], name="b")
    c = helper.make_node("Abs", ["x"], ["c"], name="c")
    d = helper.make_node("Add", ["b", "c"], ["d"], name="d")
    names = lambda nodes: [n.name for n in nodes]  # noqa: E731
    assert names(graph.toposort([a, b, c, d], {"x"})) == ["a", "b", "c", "d"]
    assert names(graph.toposort([d, c, b, a], {"x"})) == ["c", "a", "b", "d"]
    assert names(graph.toposort([b, a, c, d], {"x"})) == ["a", "c", "b", "d"]
    loop = [helper.make_node("Neg", ["q"], ["p"], name="p"), helper.make_node("Neg", ["p"], ["q"], name="q")]
    assert names(graph.toposort(loop + [c], {"x"})) == ["c", "p", "q"]          # a circle: no endless loop


def test_unique_name_takes_the_first_free_suffix():
    taken = {"t", "t_1", "t_3"}
    assert graph.unique_name("t", taken) == "t_2" and graph.unique_name("t", taken) == "t_4"
    assert graph.unique_name("u", taken) == "u" and {"t_2", "t_4", "u"} <= taken


def test_remove_identities_keeps_graph_outputs_and_training_dropouts():
    G = _graph([
        helper.make_node("Identity", ["x"], ["i"], name="id"),
        helper.make_node("Dropout", ["i"], ["d"], name="drop"),
        helper.make_node("Dropout", ["d", "ratio", "train"], ["t"], name="train_drop"),
        helper.make_node("Relu", ["t"], ["r"], name="relu"),
        helper.make_node("Identity", ["r"], ["y"], name="out_id"),
    ], [("ratio", np.float32(0.5)), ("train", np.array(True))])
    assert graph.remove_identities(G) == ["id", "drop"]
    assert [n.name for n in G.g.node] == ["train_drop", "relu", "out_id"] and G.g.node[0].input[0] == "x"
