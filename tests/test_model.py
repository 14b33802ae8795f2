"""Model layer and ONNX Runtime engine on the real shared models, and bad model files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from onnx import TensorProto

from calib.backends.onnxruntime import OrtEngine
from calib.cli import main
from calib.errors import CustomOpError, InputMismatchError, ModelLoadError
from calib.model import Model


def test_describe_efficientnet(models_dir):
    m = Model.load(models_dir / "efficientnet_lite0.onnx")
    (inp,) = m.inputs
    assert inp.name == "input" and inp.shape[1:] == (3, 224, 224) and isinstance(inp.shape[0], str)
    assert inp.dtype == np.float32 and inp.fixed_batch is None
    assert [o.name for o in m.outputs] == ["logits"]
    assert m.opset == 17
    assert m.op_counts()["Conv"] == 49
    assert not m.is_quantized and not m.is_fp16
    acts = m.activation_tensors()
    assert "logits" in acts and len(acts) == len(set(acts))
    # topological: every node's inputs are produced earlier (or are inputs/constants)
    known = {t.name for t in m.inputs} | m.constant_tensors()
    for n in m.nodes:
        assert all(i == "" or i in known for i in n.input), n.name
        known.update(n.output)


def test_hash_is_content_based(models_dir, tmp_path):
    src = models_dir / "mnist_cntk.onnx"
    copy = tmp_path / "renamed.onnx"
    copy.write_bytes(src.read_bytes())
    a, b = Model.load(src), Model.load(copy)
    assert a.sha256 == b.sha256
    b.proto.graph.node[0].name = "changed"
    b._bytes = None
    assert b.sha256 != a.sha256


def test_quantized_and_fp16_detection(models_dir):
    assert Model.load(models_dir / "mobilenetv2_12_int8_zoo.onnx").is_quantized
    fp16 = Model.load(models_dir / "squeezenet1_1_fp16.onnx")
    assert fp16.is_fp16 and fp16.inputs[0].dtype == np.float16
    assert not Model.load(models_dir / "squeezenet1_1_fp32.onnx").is_fp16


def test_engine_fixed_batch_splitting_matches_single_runs(models_dir):
    eng = OrtEngine(models_dir / "squeezenet1_1_fp32.onnx", threads=1)
    rng = np.random.default_rng(0)
    x = rng.normal(0, 50, size=(3, 3, 224, 224)).astype(np.float32)
    batched = eng.run({"data_0": x})["softmaxout_1"]
    assert batched.shape == (3, 1000, 1, 1)
    for i in range(3):
        single = eng.run({"data_0": x[i:i + 1]})["softmaxout_1"]
        np.testing.assert_allclose(batched[i:i + 1], single, rtol=1e-5, atol=1e-7)
    # softmax output: rows sum to one
    np.testing.assert_allclose(batched.reshape(3, -1).sum(1), 1.0, rtol=1e-4)


def test_engine_capture_returns_intermediates_that_match(models_dir):
    m = Model.load(models_dir / "mnist_cntk.onnx")
    acts = [t for t in m.activation_tensors() if t not in {o.name for o in m.outputs}]
    eng = OrtEngine(m, capture=acts, threads=1)
    x = np.random.default_rng(1).uniform(0, 1, (1, 1, 28, 28)).astype(np.float32)
    out = eng.run({"Input3": x})
    assert set(acts) <= set(out)
    plain = OrtEngine(m, threads=1).run({"Input3": x})
    np.testing.assert_allclose(out["Plus214_Output_0"], plain["Plus214_Output_0"], rtol=1e-5, atol=1e-5)
    # a ReLU output is non-negative: the capture really is that tensor
    relu_out = next(n.output[0] for n in m.nodes if n.op_type == "Relu")
    assert out[relu_out].min() >= 0 and out[relu_out].max() > 0


def test_capture_ring_reuses_buffers_and_gives_the_plain_values(models_dir):
    """reuse=2: from the second run with the same input shapes, captured tensors land in two
    preallocated buffer sets used in turn; every run's values equal a plain session's."""
    m = Model.load(models_dir / "squeezenet1_1_fp32.onnx")
    acts = m.activation_tensors()[:12]
    assert len(acts) == 12
    ring = OrtEngine(m, capture=acts, threads=1, reuse=2)
    plain = OrtEngine(m, capture=acts, threads=1)
    rng = np.random.default_rng(3)
    xs = [rng.normal(0, 40, (1, 3, 224, 224)).astype(np.float32) for _ in range(5)]
    outs = []
    for x in xs:
        got = ring.run({"data_0": x})
        want = plain.run({"data_0": x})
        for k in acts + ["softmaxout_1"]:
            assert np.array_equal(got[k], want[k]), k
        outs.append({k: (got[k], got[k].copy()) for k in acts})
    k = acts[0]
    assert not np.shares_memory(outs[0][k][0], outs[1][k][0])    # run 1 allocated, run 2 the ring
    assert np.shares_memory(outs[1][k][0], outs[3][k][0])        # slots alternate: 2 and 4 share
    assert np.shares_memory(outs[2][k][0], outs[4][k][0])
    assert not np.shares_memory(outs[1][k][0], outs[2][k][0])
    assert np.array_equal(outs[3][k][0], outs[3][k][1])          # still valid one run later
    assert not np.array_equal(outs[2][k][0], outs[2][k][1])      # overwritten two runs later
    assert np.array_equal(outs[0][k][0], outs[0][k][1])          # the plain run's arrays are its own
    # a batch of 3 for this batch-1 model runs as 3 parts, concatenated: plain runs, not the
    # ring (two slots would hold only two of the parts)
    x = rng.normal(0, 40, (3, 3, 224, 224)).astype(np.float32)
    for _ in range(2):
        got = ring.run({"data_0": x})
        for k in acts:
            assert np.array_equal(got[k], plain.run({"data_0": x})[k]), k


def test_capture_ring_falls_back_when_shapes_follow_the_values(tmp_path):
    """NonZero's output shape depends on the values: the bound run fails and the engine goes on
    without reuse, with the right results."""
    g = oh.make_graph([oh.make_node("Relu", ["x"], ["r"]), oh.make_node("NonZero", ["r"], ["nz"]),
                       oh.make_node("Cast", ["nz"], ["f"], to=TensorProto.FLOAT),
                       oh.make_node("ReduceSum", ["f"], ["y"], keepdims=0)], "g",
                      [oh.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, [])])
    onnx.save(oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)], ir_version=8), tmp_path / "nz.onnx")
    eng = OrtEngine(tmp_path / "nz.onnx", capture=["r", "f"], threads=1, reuse=2)
    for x in ([1, -1, 2, -3], [1, 2, -1, -1], [1, 2, 3, -1], [-1, -1, -1, 5]):
        out = eng.run({"x": np.array(x, np.float32)})
        nz = np.flatnonzero(np.maximum(x, 0))
        assert out["f"].shape == (1, len(nz)) and np.array_equal(out["f"][0], nz)
        assert out["y"] == nz.sum()
    assert eng.reuse == 0


def test_engine_rejects_mismatched_inputs(models_dir):
    eng = OrtEngine(models_dir / "efficientnet_lite0.onnx", threads=1)
    with pytest.raises(InputMismatchError, match=r"\(2, 3, 200, 200\).*224"):
        eng.run({"input": np.zeros((2, 3, 200, 200), np.float32)})
    with pytest.raises(InputMismatchError, match="int64"):
        eng.run({"input": np.zeros((1, 3, 224, 224), np.int64)})
    with pytest.raises(InputMismatchError, match="lacks model input 'input'"):
        eng.run({"x": np.zeros((1, 3, 224, 224), np.float32)})


def _custom_op_model(path: Path) -> Path:
    g = oh.make_graph([oh.make_node("FancyOp", ["x"], ["y"], domain="com.acme")], "g",
                      [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid("com.acme", 1)], ir_version=9)
    onnx.save(m, str(path))
    return path


def test_bad_model_files_raise_specific_errors(models_dir, tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        Model.load(tmp_path / "missing.onnx")
    trunc = tmp_path / "trunc.onnx"
    trunc.write_bytes((models_dir / "mnist_cntk.onnx").read_bytes()[:5000])
    with pytest.raises(ModelLoadError, match="trunc.onnx"):
        Model.load(trunc)
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n" * 10)
    with pytest.raises(ModelLoadError, match="notes.onnx"):
        Model.load(text)
    with pytest.raises(CustomOpError, match="com.acme:FancyOp"):
        OrtEngine(_custom_op_model(tmp_path / "custom.onnx"))


@pytest.mark.parametrize("kind", ["missing", "truncated", "text", "custom"])
def test_cli_bad_model_one_line_and_nonzero(models_dir, kind, tmp_path, capsys):
    path = tmp_path / f"{kind}.onnx"
    if kind == "truncated":
        path.write_bytes((models_dir / "mnist_cntk.onnx").read_bytes()[:3000])
    elif kind == "text":
        path.write_text("garbage")
    elif kind == "custom":
        _custom_op_model(path)
    before = sorted(p.name for p in tmp_path.iterdir())
    argv = ["inspect", "--model", str(path)]
    if kind == "custom":
        argv += ["--data", str(tmp_path / "feeds.npz")]
        np.savez(tmp_path / "feeds.npz", x=np.ones((2, 1, 3), np.float32))
        before = sorted(p.name for p in tmp_path.iterdir())
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc != 0
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_inspect_json_reports_quantized(models_dir, capsys):
    import json

    rc = main(["inspect", "--model", str(models_dir / "mobilenetv2_12_int8_zoo.onnx"), "--json"])
    assert rc == 0
    info = json.loads(capsys.readouterr().out)
    assert info["quantized"] is True and info["op_counts"]["QLinearConv"] == 52
    assert info["inputs"][0]["name"] == "input"


def test_cli_warnings_are_one_plain_line(bundled_dir, tmp_path):
    """A skipped corrupt image is reported on stderr as one 'warning:' line, without Python's
    source path and code line; the run still succeeds (only --strict makes it an error)."""
    import shutil
    import subprocess
    import sys

    imgs = sorted((bundled_dir / "imagenet-mini").glob("*.JPEG"))[:3]
    for p in imgs:
        shutil.copy(p, tmp_path / p.name)
    (tmp_path / "n09999999_broken.JPEG").write_bytes(imgs[0].read_bytes()[:2000])
    proc = subprocess.run([sys.executable, "-m", "calib", "inspect", "--model",
                           str(bundled_dir / "models" / "squeezenet1_1_fp32.onnx"), "--data", str(tmp_path),
                           "--preset", "caffe"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    warn = [ln for ln in proc.stderr.splitlines() if "could not be used" in ln]
    assert len(warn) == 1 and warn[0].startswith("warning: skipped 1 of 4 images"), proc.stderr
    assert "n09999999_broken.JPEG" in warn[0] and ".py:" not in proc.stderr
