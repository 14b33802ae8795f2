"""Latency models on EfficientNet-Lite0's quantization groups.

ONNX Runtime: measured here (no wall-clock thresholds: positive times per group, every profiled
node attributed, and their sum a part of the measured run). Roofline: figures computed by hand
from the datasheet numbers. TensorRT: the profiler path against the MOCK ``tensorrt`` module
(``tests/fake_tensorrt.py``), since TensorRT cannot be installed here.
"""
from __future__ import annotations

import pytest

import fake_tensorrt
from calib.algorithms import compute_amax
from calib.backends.tensorrt.profiling import collect_layer_times
from calib.collect import collect_statistics
from calib.datasets import open_dataset
from calib.errors import CalibError, TensorRTUnavailableError
from calib.qdq import prepare, quantize_model, required_tensors
from calib.tuning import QuantGroup
from calib.tuning.latency import GPUS, RooflineLatency, TensorRTLatency, latency_model


@pytest.fixture(scope="module")
def by_id(efficientnet_groups):
    return {g.id: g for g in efficientnet_groups}


@pytest.fixture(scope="module")
def ort_int8(efficientnet, imagenet_dir):
    """EfficientNet-Lite0 as --target onnxruntime writes it, max ranges over 8 photographs."""
    p = prepare(efficientnet)
    ds = open_dataset(imagenet_dir, p, "efficientnet-lite", limit=8)
    obs = collect_statistics(p, ds.batches(batch_size=8), required_tensors(p, "onnxruntime"), progress=False,
                             histogram=False)
    return quantize_model(p, {t: compute_amax(o, "max") for t, o in obs.items()}, target="onnxruntime")


# --------------------------------------------------------------------------- ONNX Runtime
def test_onnxruntime_times_per_group(efficientnet, efficientnet_groups, ort_int8):
    lat = latency_model("onnxruntime", efficientnet, efficientnet_groups, int8_model=ort_int8, runs=5, warmup=2,
                        threads=1)
    assert lat.name == "onnxruntime" and lat.description.startswith("measured: ONNX Runtime")
    assert "fp16 not measured" in lat.description
    for p in ("fp32", "int8"):
        # every quantizable group ran something, and every profiled node found its group
        assert all(lat.times[p].get(g.id, 0.0) > 0 for g in efficientnet_groups if g.quantizable), p
        assert lat.unattributed[p] == 0.0
        total = sum(lat.times[p].values())
        # per-node medians are parts of a run: at most the median run, and not a small part of it
        # (a loaded machine preempts some node in most runs, which the medians leave out)
        assert 0.2 * lat.whole[p] < total <= 1.05 * lat.whole[p], (p, total, lat.whole[p])
    all8 = lat.predict(efficientnet_groups, {})
    assert all8 == pytest.approx(sum(lat.times["int8"].values()))
    all32 = lat.predict(efficientnet_groups, {g.id: "fp32" for g in efficientnet_groups})
    assert all32 == pytest.approx(sum(lat.times["fp32"].values()))
    g = efficientnet_groups[5]
    assert lat.group_latency(g, "fp16") == lat.group_latency(g, "fp32")      # not measured: FP32 time
    with pytest.raises(CalibError, match="unknown precision"):
        lat.group_latency(g, "int4")


def test_onnxruntime_needs_the_int8_model(efficientnet, efficientnet_groups):
    with pytest.raises(CalibError, match="needs int8_model"):
        latency_model("onnxruntime", efficientnet, efficientnet_groups)
    with pytest.raises(CalibError, match="has no Q/DQ nodes"):
        latency_model("onnxruntime", efficientnet, efficientnet_groups, int8_model=efficientnet)


# --------------------------------------------------------------------------- roofline
def test_roofline_by_hand(efficientnet, efficientnet_groups, by_id):
    proj = by_id["/_blocks.0/_project_conv/Conv"]
    assert (proj.macs, proj.activation_bytes, proj.weight_count) == (16 * 112 * 112 * 32, 48 * 112 * 112 * 4, 528)
    t4 = latency_model("roofline:t4", efficientnet, efficientnet_groups)
    assert t4.name == "roofline:t4" and "not measured" in t4.description
    # T4 INT8: 130 TOPS, 320 GB/s, 2 us launch; 1-byte activations and weights: memory bound
    compute = 2 * 16 * 112 * 112 * 32 / 130e12
    memory = (48 * 112 * 112 + 528) / 320e9
    assert memory > compute
    assert t4.group_latency(proj, "int8") == pytest.approx(memory + 2e-6)
    # FP32 on the T4 (no TF32): 4-byte activations and weights
    assert t4.group_latency(proj, "fp32") == pytest.approx((48 * 112 * 112 * 4 + 528 * 4) / 320e9 + 2e-6)
    # a compute-bound group on the H100: 1e9 MACs over 4 kB
    big = QuantGroup("g", "conv", ("g",), "g", True, 10 ** 9, 4096, 0, 0)
    h100 = RooflineLatency(GPUS["h100"])
    assert h100.group_latency(big, "fp16") == pytest.approx(2e9 / 989.5e12 + 2e-6)
    assert h100.group_latency(big, "fp32") == pytest.approx(2e9 / 494.5e12 + 2e-6)          # TF32 tensor cores
    # a group that is never INT8 costs its FP32 time under an int8 plan
    other = next(g for g in efficientnet_groups if not g.quantizable and g.activation_bytes)
    assert h100.group_latency(other, "int8") == h100.group_latency(other, "fp32")
    # whole model: INT8 < FP16 < FP32 on every GPU
    for gpu in GPUS:
        m = latency_model(f"roofline:{gpu}", efficientnet, efficientnet_groups)
        p8, p16, p32 = (m.predict(efficientnet_groups, dict.fromkeys(by_id, p)) for p in ("int8", "fp16", "fp32"))
        assert 0 < p8 < p16 < p32, gpu


def test_unknown_specs(efficientnet, efficientnet_groups):
    with pytest.raises(CalibError, match="unknown GPU 'v100'.*h100, a100, l4, t4, orin"):
        latency_model("roofline:v100", efficientnet, efficientnet_groups)
    with pytest.raises(CalibError, match="unknown latency model 'cpu'"):
        latency_model("cpu", efficientnet, efficientnet_groups)


# --------------------------------------------------------------------------- TensorRT (MOCK)
LAYERS = [  # (layer name as TensorRT reports it, ms)
    ("input_QuantizeLinear", 0.01),
    ("/_conv_stem/Conv + /_swish/Clip", 0.05),
    ("Reformatting CopyNode for Input Tensor 0 to /_blocks.1/_depthwise_conv/Conv", 0.02),
    ("/_blocks.1/_depthwise_conv/Conv + PWN(/_blocks.1/_swish_1/Clip)", 0.03),
    ("/_blocks.2/_project_conv/Conv + /_blocks.2/Add", 0.04),
    ("{ForeignNode[/_avg_pooling/GlobalAveragePool.../_fc/Gemm]}", 0.09),
    ("myelin_graph_7", 0.5),
]


def _profiled(scale: float = 1.0):
    """Layer times as TensorRT's profiler reports them, through the MOCK module and context."""
    trt = fake_tensorrt.make("10.16.1.11")
    ctx = fake_tensorrt.FakeExecutionContext([(n, ms * scale) for n, ms in LAYERS])
    times = collect_layer_times(trt, ctx, ctx.execute, iterations=3, warmup=2)
    assert ctx.runs == 5 and ctx.profiler.base_init_called
    assert all(len(v) == 3 for v in times.values())         # warm-up runs are not recorded
    return times


def test_tensorrt_layer_times_to_groups(efficientnet, efficientnet_groups, by_id):
    lat = latency_model("tensorrt", efficientnet, efficientnet_groups,
                        layer_times={"int8": _profiled(), "fp16": _profiled(2.0)})
    assert isinstance(lat, TensorRTLatency) and lat.description.startswith("measured: TensorRT")
    stem, dw = by_id["/_conv_stem/Conv"], by_id["/_blocks.1/_depthwise_conv/Conv"]
    assert lat.group_latency(stem, "int8") == pytest.approx((0.01 + 0.05) * 1e-3)      # its input's Q too
    assert lat.group_latency(dw, "int8") == pytest.approx((0.02 + 0.03) * 1e-3)
    assert lat.group_latency(by_id["/_blocks.2/_project_conv/Conv"], "fp16") == pytest.approx(0.08e-3)
    # a Myelin region spanning several efficientnet_groups is split evenly among them
    pool, fc = by_id["/_avg_pooling/GlobalAveragePool"], by_id["/_fc/Gemm"]
    share = lat.group_latency(pool, "int8")
    assert share > 0 and lat.group_latency(fc, "int8") == pytest.approx(share)
    spanned = [g for g in efficientnet_groups if lat.times["int8"].get(g.id) == pytest.approx(share)]
    assert share * len(spanned) == pytest.approx(0.09e-3)
    assert lat.unattributed["int8"] == ["myelin_graph_7"]
    assert lat.predict(efficientnet_groups, {}) == pytest.approx((sum(ms for _, ms in LAYERS) - 0.5) * 1e-3)
    with pytest.raises(CalibError, match="no fp32 engine profiled"):
        lat.group_latency(stem, "fp32")


def test_tensorrt_without_tensorrt(efficientnet, efficientnet_groups, tmp_path):
    with pytest.raises(CalibError, match="needs engines"):
        latency_model("tensorrt", efficientnet, efficientnet_groups)
    engine = tmp_path / "m.plan"
    engine.write_bytes(b"not an engine")
    with pytest.raises(TensorRTUnavailableError, match="needs TensorRT"):
        latency_model("tensorrt", efficientnet, efficientnet_groups, engines={"int8": engine})
