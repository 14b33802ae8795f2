"""Quantization groups on the real models, and plans written per group applied to them.

Grouping: EfficientNet-Lite0 (its BatchNorms are folded in the export: a Conv + Clip (ReLU6) is
one group, with the zero Pad before it) and the PP-OCRv4 recogniser (Conv + BatchNorm, hard-swish
and swish decompositions, attention's MatMul / Softmax / MatMul, LayerNorm as a fixed group).
Plans: an fp32 group has no Q/DQ around it, an fp16 group's nodes compute on float16-rounded
values in ONNX Runtime (checked against a NumPy emulation on the tensors captured in the same
run), and the nodes preparation folds away are not unmatched plan entries.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from calib.algorithms import compute_amax
from calib.backends.onnxruntime import OrtEngine
from calib.collect import collect_statistics
from calib.datasets import open_dataset
from calib.errors import InputMismatchError, PlanError
from calib.model import Model
from calib.qdq import prepare, quantize_model, required_tensors
from calib.tuning import QuantGroup, find_groups, group_plan

REC_SHAPES = {"x": (1, 3, 48, 320)}


@pytest.fixture(scope="module")
def rec(shared_model):
    return Model.load(shared_model("ppocrv4_rec"))


@pytest.fixture(scope="module")
def rec_groups(rec):
    return find_groups(rec, REC_SHAPES)


def _by_node(groups: list[QuantGroup]) -> dict[str, QuantGroup]:
    return {k: g for g in groups for k in g.nodes}


def _check_partition(model: Model, groups: list[QuantGroup]) -> None:
    keys = [k for g in groups for k in g.nodes]
    counts = Counter(keys)
    assert not [k for k, c in counts.items() if c > 1], "a node is in two groups"
    from calib.plan import node_key
    assert set(keys) == {node_key(n) for n in model.nodes} and len(keys) == len(model.nodes)
    assert [g.order for g in groups] == list(range(len(groups)))
    assert len({g.id for g in groups}) == len(groups)
    for g in groups:
        assert g.anchor in g.nodes and g.quantizable == (g.kind != "other")


# --------------------------------------------------------------------------- EfficientNet-Lite0
def test_effnet_every_node_in_exactly_one_group(efficientnet, efficientnet_groups):
    _check_partition(efficientnet, efficientnet_groups)
    kinds = Counter(g.kind for g in efficientnet_groups)
    # 49 convolutions: 40 plain, 9 closing a residual block (MBConv with a skip), one Gemm head
    assert kinds["conv"] + kinds["residual"] == 49 and kinds["residual"] == 9 and kinds["gemm"] == 1
    assert find_groups(efficientnet) == efficientnet_groups                     # deterministic


def test_effnet_conv_clip_and_zero_pad_are_one_group(efficientnet_groups):
    by = _by_node(efficientnet_groups)
    g = by["/_blocks.1/_expand_conv/Conv"]
    assert g.kind == "conv" and g.id == "/_blocks.1/_expand_conv/Conv"
    assert "/_blocks.1/_swish/Clip" in g.nodes                       # Conv + ReLU6 (BN folded in the export)
    dw = by["/_blocks.1/_depthwise_conv/Conv"]
    # the zero Pad (and the constants computing its pads) joins the Conv it is folded into
    assert {"/_blocks.1/_depthwise_conv/static_padding/Pad", "/_blocks.1/_swish_1/Clip"} <= set(dw.nodes)
    assert by["/_blocks.1/_depthwise_conv/static_padding/ConstantOfShape"] is dw
    res = by["/_blocks.2/Add"]
    assert res.kind == "residual" and res.anchor == "/_blocks.2/_project_conv/Conv"
    assert by["/_avg_pooling/GlobalAveragePool"].kind == "pool"


def test_effnet_costs_by_hand(efficientnet, efficientnet_groups):
    by = {g.id: g for g in efficientnet_groups}
    stem = by["/_conv_stem/Conv"]
    w = efficientnet.initializer("onnx::Conv_911")                        # the stem Conv's weight
    assert w.shape == (32, 3, 3, 3)
    # stride 2 on 224 x 224 (padded): 112 x 112 outputs, each 3 x 3 x 3 multiply-accumulates
    assert stem.macs == 32 * 112 * 112 * 3 * 3 * 3
    assert stem.weight_count == w.size + 32                        # weight + bias
    # depthwise 3 x 3 on 32 channels at 112 x 112: one input channel per group
    assert by["/_blocks.0/_depthwise_conv/Conv"].macs == 32 * 112 * 112 * 9
    # block 0's projection: reads [32, 112, 112], writes [16, 112, 112] (float32)
    proj = by["/_blocks.0/_project_conv/Conv"]
    assert proj.macs == 16 * 112 * 112 * 32
    assert proj.activation_bytes == (32 + 16) * 112 * 112 * 4
    assert by["/_fc/Gemm"].macs == 1280 * 1000


# --------------------------------------------------------------------------- PP-OCRv4 recogniser
def test_rec_every_node_in_exactly_one_group(rec, rec_groups):
    _check_partition(rec, rec_groups)
    # the same per-sample costs from a batch of 8 and another width given as shapes of a batch
    again = find_groups(rec, {"x": (8, 3, 48, 320)})
    assert [(g.id, g.macs, g.activation_bytes) for g in again] == [(g.id, g.macs, g.activation_bytes)
                                                                   for g in rec_groups]


def test_rec_attention_is_one_group(rec_groups):
    by = _by_node(rec_groups)
    att = by["p2o.MatMul.2"]
    assert att.kind == "attention" and att.anchor == "p2o.MatMul.2"
    ops = [k for k in att.nodes if not k.startswith("node_of_")]   # the rest: the scale's Constant
    assert ops == ["p2o.Mul.180", "p2o.MatMul.2", "p2o.Softmax.0", "p2o.MatMul.4"] and len(att.nodes) == 5
    assert sum(g.kind == "attention" for g in rec_groups) == 2
    # 8 heads of 15 channels over T = 320 / 8 = 40 steps: Q K^T and (.)V, 40 x 40 x 15 each
    assert att.macs == 2 * 8 * 40 * 40 * 15


def test_rec_conv_batchnorm_and_decomposed_activations(rec_groups):
    by = _by_node(rec_groups)
    assert by["p2o.BatchNormalization.0"] is by["p2o.Conv.0"]       # Conv + BN
    # Conv + BN + swish x * sigmoid(1.0 * x) as Mul / Sigmoid / Mul
    g = by["p2o.Conv.33"]
    assert {"p2o.BatchNormalization.1", "p2o.Mul.172", "p2o.Sigmoid.0", "p2o.Mul.174"} <= set(g.nodes)
    # Conv, its affine Mul / Add, hard-swish x * clip(x + 3, 0, 6) / 6 and the affine after it
    g = by["p2o.Conv.1"]
    assert {"p2o.Mul.0", "p2o.Add.2", "p2o.Add.4", "p2o.Clip.0", "p2o.Mul.2", "p2o.Div.0", "p2o.Mul.4",
            "p2o.Add.6"} <= set(g.nodes) and "p2o.Conv.2" not in g.nodes
    # MatMul + bias + residual Add; the LayerNorm after it is a fixed group of its own
    res = by["p2o.Add.240"]
    assert res.kind == "residual" and res.anchor == "p2o.MatMul.6"
    ln = by["p2o.ReduceMean.4"]
    assert ln.kind == "other" and not ln.quantizable and {"p2o.Sqrt.2", "p2o.Div.30"} <= set(ln.nodes)


def test_rec_needs_concrete_shapes(rec):
    with pytest.raises(InputMismatchError, match="input 'x' has dynamic dimensions"):
        find_groups(rec)
    with pytest.raises(InputMismatchError, match="does not fit"):
        find_groups(rec, {"x": (1, 4, 48, 320)})
    with pytest.raises(InputMismatchError, match="unknown input"):
        find_groups(rec, {"y": (1, 3, 48, 320)})


# --------------------------------------------------------------------------- plans per group
def test_group_plan_writes_every_node_of_a_group(efficientnet_groups):
    by = {g.id: g for g in efficientnet_groups}
    plan = group_plan(efficientnet_groups, {"/_conv_stem/Conv": "fp32", "/_fc/Gemm": "FP16",
                                      "/_blocks.0/_project_conv/Conv": "int8"}, comment="test")
    assert plan.default == "int8" and plan.comment == "test"
    assert set(plan.layers) == set(by["/_conv_stem/Conv"].nodes) | set(by["/_fc/Gemm"].nodes)
    assert {plan.precision_for(k) for k in by["/_fc/Gemm"].nodes} == {"fp16"}
    with pytest.raises(PlanError, match="unknown group"):
        group_plan(efficientnet_groups, {"/no/such": "fp32"})
    with pytest.raises(PlanError, match="unknown precision 'int4'"):
        group_plan(efficientnet_groups, {"/_fc/Gemm": "int4"})


@pytest.fixture(scope="module")
def effnet_amax(efficientnet, imagenet_dir):
    """Max ranges of the tensors both targets need, over 16 real photographs."""
    p = prepare(efficientnet)
    ds = open_dataset(imagenet_dir, p, "efficientnet-lite", limit=16)
    tensors = sorted(set(required_tensors(p, "tensorrt")) | set(required_tensors(p, "onnxruntime")))
    obs = collect_statistics(p, ds.batches(batch_size=8), tensors, progress=False, histogram=False)
    return p, {t: compute_amax(o, "max") for t, o in obs.items()}, next(iter(ds.batches(batch_size=4))).feed


def _r16(a):
    return np.asarray(a, np.float32).astype(np.float16).astype(np.float32)


@pytest.mark.parametrize("target", ["tensorrt", "onnxruntime"])
def test_group_plan_applied_fp32_and_fp16(efficientnet, efficientnet_groups, effnet_amax, target):
    prepared, amax, feed = effnet_amax
    by = {g.id: g for g in efficientnet_groups}
    stem, expand, fc = by["/_conv_stem/Conv"], by["/_blocks.1/_expand_conv/Conv"], by["/_fc/Gemm"]
    plan = group_plan(efficientnet_groups, {stem.id: "fp32", expand.id: "fp16", fc.id: "fp16"})
    q = quantize_model(efficientnet, amax, target=target, plan=plan, fp16_fallback=True)
    r = q.quant_report
    # the folded Pad and its constants are plan entries too, but not unmatched: they follow the Conv
    assert r.unmatched_plan_entries == []
    assert r.folded_plan_entries["/_conv_stem/static_padding/Pad"] == "/_conv_stem/Conv"
    assert set(r.fp16_nodes) == {expand.id, "/_blocks.1/_swish/Clip", fc.id}
    # Conv and Gemm have no float16 kernel in ONNX Runtime's CPU provider; Clip has
    assert set(r.fp16_rounded) == {expand.id, fc.id}
    g = q.proto.graph
    prod = {o: n for n in g.node for o in n.output}
    conv = next(n for n in g.node if n.name == "/_conv_stem/Conv")
    assert all(prod[i].op_type != "DequantizeLinear" for i in conv.input if i in prod)   # fp32: no Q/DQ
    assert {i.name for i in g.initializer} >= set(conv.input[1:])                         # float weights

    # fp16: ONNX Runtime computes both on float16-rounded inputs, weights and outputs
    x_in, y_out = "/_blocks.0/_project_conv/Conv_output_0", "/_blocks.1/_swish/Clip_output_0"
    f_in, f_out = "/Reshape_output_0", q.outputs[0].name
    got = OrtEngine(q, capture=[x_in, y_out, f_in], threads=1).run(feed)
    conv = next(n for n in efficientnet.nodes if n.name == expand.id)
    w, b = efficientnet.initializer(conv.input[1])[:, :, 0, 0], efficientnet.initializer(conv.input[2])
    x = got[x_in]
    emu = np.clip(_r16(np.einsum("oc,nchw->nohw", _r16(w).astype(np.float64), _r16(x).astype(np.float64))
                       + _r16(b)[None, :, None, None]), 0, 6)
    y = got[y_out]
    np.testing.assert_array_equal(y, _r16(y))                     # float16 values
    # one float16 step of the output, plus float32 summation error over the 16 products
    terms = np.einsum("oc,nchw->nohw", np.abs(_r16(w)), np.abs(_r16(x))) + np.abs(b)[None, :, None, None]
    tol = 2.0 ** -10 * np.abs(emu) + 2.0 ** -20 * terms
    assert (np.abs(y - emu) <= tol).all()
    # without the rounding (float32 throughout) the values differ by more than that somewhere
    conv = np.einsum("oc,nchw->nohw", w.astype(np.float64), x.astype(np.float64))
    plain = np.clip(conv + b[None, :, None, None], 0, 6)
    assert (np.abs(plain - emu) > tol).any()

    wf, bf = efficientnet.initializer("_fc.weight"), efficientnet.initializer("_fc.bias")
    logits = got[f_out]
    emu = _r16(_r16(got[f_in]).astype(np.float64) @ _r16(wf).T.astype(np.float64) + _r16(bf))
    np.testing.assert_array_equal(logits, _r16(logits))
    terms = np.abs(_r16(got[f_in])) @ np.abs(_r16(wf)).T + np.abs(bf)
    assert (np.abs(logits - emu) <= 2.0 ** -10 * np.abs(emu) + 2.0 ** -13 * terms).all()   # 1280 products
