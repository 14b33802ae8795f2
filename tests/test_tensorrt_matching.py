"""Precision plan -> TensorRT layer names, on real models' ONNX node names (no TensorRT)."""
from __future__ import annotations

import onnx
import pytest

from calib.backends.tensorrt.matching import (
    assign_plan,
    assign_precisions,
    builder_precisions,
    layer_origin,
    onnx_layer_basename,
)
from calib.model import Model
from calib.plan import PrecisionPlan
from conftest import SHARED

MODELS = SHARED / "models"


def _model(name):
    p = MODELS / name
    if not p.exists():
        pytest.skip(f"shared model {p} not present")
    return Model.load(p)


def _trt_like_layer_names(model):
    """Layer names as TensorRT's ONNX parser makes them: one per node, an extra ``<name>_<n>``
    for nodes it lowers to several layers (global counter), its own ``ONNXTRT_*`` helpers and
    TensorRT's unnamed layers."""
    names, counter = [], 0
    for n in model.nodes:
        if n.op_type == "Constant":
            continue
        base = onnx_layer_basename(n)
        names.append(base)
        if n.op_type in ("Conv", "Gemm", "Resize"):
            counter += 1
            names.append(f"{base}_{counter}")
    return names + ["ONNXTRT_resizeShapeTensor_prod", "(Unnamed Layer* 7) [Shuffle]"]


def test_efficientnet_plan_matches_layers_and_reports_typos():
    m = _model("efficientnet_lite0.onnx")
    convs = [n.name for n in m.nodes if n.op_type == "Conv"]
    gemm = [n.name for n in m.nodes if n.op_type == "Gemm"][0]
    plan = PrecisionPlan(layers={convs[0]: "fp16", gemm: "fp32", "/no/such/Conv": "fp32"}, default="int8")
    layers = _trt_like_layer_names(m)
    a = assign_plan(plan, layers, m)
    assert a.precisions[convs[0]] == "fp16"
    aux = [ln for ln in layers if ln.startswith(convs[0] + "_")]
    assert aux and all(a.precisions[x] == "fp16" for x in aux)      # the node's extra layer follows it
    assert a.precisions[gemm] == "fp32"
    assert a.precisions[convs[1]] == "int8"                          # default
    assert a.precisions["(Unnamed Layer* 7) [Shuffle]"] == "int8"
    assert a.origin["ONNXTRT_resizeShapeTensor_prod"] is None
    assert a.unmatched_entries == ["/no/such/Conv"]
    assert set(a.matched_entries) == {convs[0], gemm}
    # agrees with the plan's own node-level matching
    _, unmatched = plan.match([n.name for n in m.nodes])
    assert unmatched == a.unmatched_entries
    lines = a.report_lines()
    assert "matched no layer: /no/such/Conv" in lines[-1]
    assert builder_precisions(a) == {"int8", "fp16"}


def test_no_plan_means_all_int8():
    m = _model("mnist_cntk.onnx")
    layers = _trt_like_layer_names(m)
    a = assign_plan(None, layers, m)
    assert set(a.precisions.values()) == {"int8"} and a.unmatched_entries == []


def test_unnamed_nodes_use_node_of_first_output():
    node = onnx.helper.make_node("Relu", ["a"], ["relu_out"])
    assert onnx_layer_basename(node) == "node_of_relu_out"
    named = onnx.helper.make_node("Relu", ["a"], ["b"], name="act")
    assert onnx_layer_basename(named) == "act"
    a = assign_precisions(["node_of_relu_out", "node_of_relu_out_3"], ["node_of_relu_out"],
                          {"node_of_relu_out": "fp32"}, "int8")
    assert a.precisions == {"node_of_relu_out": "fp32", "node_of_relu_out_3": "fp32"}


def test_exact_node_name_wins_over_suffix_rule():
    # a real node literally named "conv_1" is not an extra layer of "conv"
    assert layer_origin("conv_1", {"conv", "conv_1"}) == "conv_1"
    assert layer_origin("conv_12", {"conv", "conv_1"}) == "conv"
    assert layer_origin("conv_1_4", {"conv", "conv_1"}) == "conv_1"
    assert layer_origin("other", {"conv"}) is None


def test_ocr_recognizer_plan_on_attention_nodes():
    m = _model("ppocrv4_rec.onnx")
    matmuls = [n.name for n in m.nodes if n.op_type == "MatMul"][:3]
    plan = PrecisionPlan(layers=dict.fromkeys(matmuls, "fp16"), default="fp32")
    a = assign_plan(plan, _trt_like_layer_names(m), m)
    assert all(a.precisions[k] == "fp16" for k in matmuls)
    assert a.counts()["fp32"] > 100 and not a.unmatched_entries
    assert builder_precisions(a) == {"fp16"}
