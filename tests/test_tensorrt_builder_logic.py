"""Builder/runner logic that needs no TensorRT: shapes, profiles, engine sidecars, parser errors."""
from __future__ import annotations

import pytest

from calib.backends.tensorrt.builder import (
    check_engine_sidecar,
    choose_mode,
    parse_shapes,
    parser_errors,
    resolve_profile,
)
from calib.backends.tensorrt.runner import percentiles
from calib.backends.tensorrt.versions import Capabilities, TrtVersion
from calib.errors import CalibError, EngineMismatchError, InputMismatchError, TensorRTUnavailableError
from calib.model import Model
from conftest import SHARED


def _m(name):
    p = SHARED / "models" / name
    if not p.exists():
        pytest.skip("shared models not present")
    return Model.load(p)


def test_parse_shapes():
    assert parse_shapes("x:1x3x224x224, y:4x16") == {"x": (1, 3, 224, 224), "y": (4, 16)}
    assert parse_shapes("a:b:1x2") == {"a:b": (1, 2)}     # names may hold colons
    for bad in ("x", "x:1x", "x:axb", ":1x2"):
        with pytest.raises(CalibError, match="NAME:DxD"):
            parse_shapes(bad, "--min")


def test_profile_for_dynamic_detector():
    m = _m("ppocrv4_det.onnx")
    name = m.inputs[0].name
    with pytest.raises(InputMismatchError, match="dynamic shape"):
        resolve_profile(m, {}, {}, {})
    p = resolve_profile(m, {name: (1, 3, 320, 320)}, {name: (4, 3, 736, 736)}, {name: (8, 3, 960, 960)})
    assert p[name] == ((1, 3, 320, 320), (4, 3, 736, 736), (8, 3, 960, 960))
    # from data: min batch 1, opt = max = the data's shape
    p = resolve_profile(m, {}, {}, {}, {name: (16, 3, 736, 736)})
    assert p[name] == ((1, 3, 736, 736), (16, 3, 736, 736), (16, 3, 736, 736))
    with pytest.raises(InputMismatchError, match="min <= opt <= max"):
        resolve_profile(m, {name: (8, 3, 64, 64)}, {name: (4, 3, 64, 64)}, {name: (8, 3, 64, 64)})
    with pytest.raises(InputMismatchError, match="fixed at 3"):
        resolve_profile(m, {}, {name: (1, 4, 64, 64)}, {})
    with pytest.raises(InputMismatchError, match="unknown input"):
        resolve_profile(m, {"nope": (1,)}, {}, {})


def test_profile_for_fixed_model():
    m = _m("squeezenet1_1_fp32.onnx")
    p = resolve_profile(m, {}, {}, {})
    assert p["data_0"] == ((1, 3, 224, 224),) * 3
    with pytest.raises(InputMismatchError, match="contradicts"):
        resolve_profile(m, {}, {"data_0": (8, 3, 224, 224)}, {})


GPU = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


def test_engine_sidecar_checks():
    side = {"format": "calib-tensorrt-engine", "tensorrt": "10.16.1.11", "gpu": GPU}
    check_engine_sidecar(side, "m.plan", "10.16.1.11", GPU)
    with pytest.raises(EngineMismatchError, match=r"built with TensorRT 10.16.1.11 but TensorRT 11.4.0.106"):
        check_engine_sidecar(side, "m.plan", "11.4.0.106", GPU)
    with pytest.raises(EngineMismatchError, match=r"built for NVIDIA H100.*this GPU is NVIDIA A10"):
        check_engine_sidecar(side, "m.plan", "10.16.1.11", {"name": "NVIDIA A10", "compute_capability": "8.6"})


def test_read_engine_sidecar(tmp_path):
    from calib.backends.tensorrt.builder import read_engine_sidecar
    eng = tmp_path / "m.plan"
    assert read_engine_sidecar(eng) is None
    (tmp_path / "m.plan.json").write_text('{"format": "something-else"}')
    with pytest.raises(EngineMismatchError, match="not a calib engine sidecar"):
        read_engine_sidecar(eng)


class _FakeError:   # stand-in for tensorrt.ParserError (shape of its methods only)
    def __init__(self, idx, name="", op=""):
        self._i, self._n, self._o = idx, name, op

    def node(self): return self._i
    def node_name(self): return self._n
    def node_operator(self): return self._o
    def desc(self): return "unsupported attribute"
    def code(self): return "UNSUPPORTED_NODE"


class _FakeParser:
    def __init__(self, errs): self._e = errs
    @property
    def num_errors(self): return len(self._e)
    def get_error(self, i): return self._e[i]


def test_parser_errors_name_node_and_op_on_every_version():
    m = _m("mnist_cntk.onnx")
    node = m.nodes[3]
    # 8.6: only the node index; the name and operator come from the model
    lines = parser_errors(_FakeParser([_FakeError(3)]), m, Capabilities(TrtVersion(8, 6, 1)))
    assert lines == [f"node '{node.name}' ({node.op_type}): unsupported attribute [UNSUPPORTED_NODE]"]
    # 10+: the parser names them
    lines = parser_errors(_FakeParser([_FakeError(-1, "MyConv", "Conv")]), m, Capabilities(TrtVersion(10, 16)))
    assert lines == ["node 'MyConv' (Conv): unsupported attribute [UNSUPPORTED_NODE]"]


def test_choose_mode():
    fp32 = _m("mnist_cntk.onnx")
    q = _m("mobilenetv2_12_int8_zoo.onnx")
    assert choose_mode(Capabilities(TrtVersion(10, 16)), None, fp32) == "implicit"
    assert choose_mode(Capabilities(TrtVersion(11, 4)), None, fp32) == "explicit"
    assert choose_mode(Capabilities(TrtVersion(10, 16)), None, q) == "explicit"
    with pytest.raises(TensorRTUnavailableError):
        choose_mode(Capabilities(TrtVersion(8, 6, 1)), None, q)
    with pytest.raises(TensorRTUnavailableError):
        choose_mode(Capabilities(TrtVersion(11, 0)), "implicit", fp32)


def test_percentiles():
    r = percentiles(list(range(1, 101)))
    assert r["median_ms"] == 50.5 and r["p90_ms"] == pytest.approx(90.1) and r["n"] == 100
    assert percentiles([])["median_ms"] is None
