"""TensorRT calibration cache: exact format, tolerant parsing, fuzzing, sidecar provenance, CLI."""
from __future__ import annotations

import json
import struct

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, numpy_helper

from calib.cache import (
    CalibrationCache,
    amax_from_cache,
    check_provenance,
    format_cache,
    make_sidecar,
    parse_cache,
    read_cache,
    read_sidecar,
    write_cache,
    write_sidecar,
)
from calib.cli import main
from calib.errors import CacheError, CacheMismatchError, OutputExistsError
from calib.model import Model

TRT_STYLE = (b"TRT-8601-EntropyCalibration2\r\n"
             b"input: 3c010a14\r\n"
             b"(Unnamed Layer* 64) [Shuffle]_output: 3c010a14\r\n"
             b"conv 1/out:put: 3d1e2a6b\r\n"
             b"zero: 0\r\n"
             b"short: 3f8\r\n"
             b"UPPER: 3F800000\r\n"
             b"\r\n\r\n")


def test_format_is_exact():
    c = CalibrationCache.from_amax({"b": 127.0, "a": 1.0, "z z": 0.0}, "EntropyCalibration2", 100900)
    assert format_cache(c) == (b"TRT-100900-EntropyCalibration2\n"
                               b"a: 3c010204\n"          # float32(1/127) = 0x3c010204
                               b"b: 3f800000\n"
                               b"z z: 00000000\n")
    assert struct.unpack(">f", bytes.fromhex("3c010204"))[0] == np.float32(1 / 127)


def test_round_trip_bit_identical(tmp_path):
    rng = np.random.default_rng(0)
    amax = {f"/blocks.{i}/Conv_output_0": float(v) for i, v in enumerate(rng.exponential(3.0, 300))}
    amax["(Unnamed Layer* 64) [Shuffle]_output"] = 0.5
    c = CalibrationCache.from_amax(amax, "MinMaxCalibration", 101300)
    p = write_cache(tmp_path / "m.cache", c)
    data = p.read_bytes()
    back = read_cache(p)
    assert back.version == 101300 and back.algorithm == "MinMaxCalibration"
    assert format_cache(back) == data
    for k, s in c.scales.items():
        assert np.float32(back.scales[k]).tobytes() == np.float32(s).tobytes()
    # determinism: insertion order does not matter
    shuffled = CalibrationCache(dict(reversed(list(c.scales.items()))), c.algorithm, c.version)
    assert format_cache(shuffled) == data
    a = amax_from_cache(p)
    assert all(abs(a[k] - amax[k]) <= 1e-6 * max(1.0, amax[k]) for k in amax)


def test_write_refuses_to_overwrite(tmp_path):
    c = CalibrationCache({"x": 0.1})
    write_cache(tmp_path / "a.cache", c)
    with pytest.raises(OutputExistsError):
        write_cache(tmp_path / "a.cache", c)
    write_cache(tmp_path / "a.cache", CalibrationCache({"x": 0.2}), overwrite=True)
    assert read_cache(tmp_path / "a.cache").scales["x"] == pytest.approx(0.2)


def test_write_rejects_bad_scales():
    for bad in ({"x": float("nan")}, {"x": -1.0}, {"x": 1e300}, {"a\nb": 1.0}, {"": 1.0}):
        with pytest.raises(CacheError):
            format_cache(CalibrationCache(bad))


def test_tensorrt_written_cache_parses():
    c = parse_cache(TRT_STYLE)
    assert c.version == 8601 and c.algorithm == "EntropyCalibration2"
    assert list(c.scales) == ["input", "(Unnamed Layer* 64) [Shuffle]_output", "conv 1/out:put", "zero",
                              "short", "UPPER"]
    assert c.scales["(Unnamed Layer* 64) [Shuffle]_output"] == struct.unpack(">f", bytes.fromhex("3c010a14"))[0]
    assert c.scales["zero"] == 0.0
    assert c.scales["short"] == struct.unpack(">f", bytes.fromhex("000003f8"))[0]
    assert c.scales["UPPER"] == 1.0
    assert parse_cache(TRT_STYLE.decode()).scales == c.scales
    # unknown algorithms and old versions are fine
    assert parse_cache("TRT-7000-SomeFutureCalibrator\nx: 3c010a14").algorithm == "SomeFutureCalibrator"
    # a name containing ': ' is split at the last one
    assert parse_cache("TRT-1-X\na: b: 3f800000\n").scales == {"a: b": 1.0}


@pytest.mark.parametrize("text,line", [
    ("", None), ("\n\n", None), ("hello\n", 1), ("TRT-abc-Entropy\n", 1), ("TRT-100900-\n", 1),
    ("TRT-1-X\nno separator\n", 2), ("TRT-1-X\nx: 3c01zz14\n", 2), ("TRT-1-X\nx: 123456789\n", 2),
    ("TRT-1-X\nx: \n", 2), ("TRT-1-X\n: 3c010a14\n", 2), ("TRT-1-X\na: 1\n\na: 2\n", 4),
    ("TRT-1-X\na: 7fc00000\n", 2), ("TRT-1-X\na: bf800000\n", 2), ("TRT-1-X\na: 7f800000\n", 2),
])
def test_malformed_cache_names_the_line(text, line):
    with pytest.raises(CacheError) as ei:
        parse_cache(text)
    if line is not None:
        assert f"line {line}:" in str(ei.value)


def test_not_utf8_and_missing_files(tmp_path):
    with pytest.raises(CacheError, match="line 2"):
        parse_cache(b"TRT-1-X\n\xff\xfe: 0\n")
    with pytest.raises(CacheError, match="not found"):
        read_cache(tmp_path / "nope.cache")
    with pytest.raises(CacheError, match="folder"):
        read_cache(tmp_path)


_cache_line = st.one_of(
    st.text(max_size=30),
    st.builds(lambda n, h: f"{n}: {h}", st.text(max_size=20), st.text("0123456789abcdefABCDEFxz", max_size=10)),
    st.builds(lambda v, a: f"TRT-{v}-{a}", st.integers(-5, 10**20), st.text(max_size=10)),
)


# no time limits: a loaded machine must not fail the fuzzing (HealthCheck.too_slow is one)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_cache_line, max_size=8), st.sampled_from(["\n", "\r\n", "\r"]))
def test_fuzz_text_never_raises_anything_but_cache_error(lines, sep):
    try:
        c = parse_cache(sep.join(lines))
    except CacheError:
        return
    assert isinstance(c, CalibrationCache)
    assert all(isinstance(v, float) and v >= 0 for v in c.scales.values())
    # whatever parsed also writes and parses back to the same scales (when writable)
    try:
        data = format_cache(c)
    except CacheError:
        return
    assert parse_cache(data).scales == c.scales


# no time limits: a loaded machine must not fail the fuzzing (HealthCheck.too_slow is one)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_fuzz_bytes_never_raises_anything_but_cache_error(data):
    try:
        parse_cache(b"TRT-100900-EntropyCalibration2\n" + data)
        parse_cache(data)
    except CacheError:
        pass


# --- sidecar / provenance --------------------------------------------------------
def _tiny_model(path, weight=1.0, out_name="y"):
    w = numpy_helper.from_array(np.full((2, 2), weight, np.float32), "w")
    g = oh.make_graph([oh.make_node("MatMul", ["x", "w"], ["h"]), oh.make_node("Relu", ["h"], [out_name])],
                      "g", [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
                      [oh.make_tensor_value_info(out_name, TensorProto.FLOAT, ["N", 2])], [w])
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)
    onnx.save(m, path)
    return Model.load(path)


def test_sidecar_round_trip_and_provenance(tmp_path):
    model = _tiny_model(tmp_path / "m.onnx")
    cache = CalibrationCache.from_amax({"x": 1.0, "h": 2.0, "y": 2.0})
    sc = make_sidecar(model=model, cache=cache, data={"source": "imgs/", "count": 8},
                      preprocess={"resize": 256, "crop": 224}, algorithm="entropy", params={}, samples=8, seed=0)
    write_cache(tmp_path / "m.cache", cache)
    write_sidecar(tmp_path / "m.cache", sc)
    rec = read_sidecar(tmp_path / "m.cache")
    assert rec["model"]["sha256"] == model.sha256 and rec["model"]["tensors"] == ["x", "h", "y"]
    assert rec["calib_version"] and rec["created"] and rec["samples"] == 8 and rec["seed"] == 0
    assert len(rec["preprocess"]["digest"]) == 64 and rec["cache"]["tensors"] == ["h", "x", "y"]
    check_provenance(rec, model, cache=cache)                       # same model: fine
    check_provenance(tmp_path / "m.cache", tmp_path / "m.onnx")     # paths work too
    # only 'created' differs between two identical runs
    again = make_sidecar(model=model, cache=cache, data={"source": "imgs/", "count": 8},
                         preprocess={"resize": 256, "crop": 224}, algorithm="entropy", params={}, samples=8, seed=0)
    diff = {k for k in sc if sc[k] != again[k]}
    assert diff <= {"created"}

    other_weights = _tiny_model(tmp_path / "m2.onnx", weight=2.0)
    with pytest.raises(CacheMismatchError, match="model hash differs") as ei:
        check_provenance(rec, other_weights)
    assert "tensor" not in str(ei.value)
    renamed = _tiny_model(tmp_path / "m3.onnx", out_name="relu_out")
    with pytest.raises(CacheMismatchError,
                       match="missing from this model: 'y'.*unknown to the cache's model: 'relu_out'"):
        check_provenance(rec, renamed)
    with pytest.raises(CacheMismatchError, match="cache tensors differ"):
        check_provenance(rec, model, cache=CalibrationCache.from_amax({"x": 1.0}))


def test_bad_sidecars(tmp_path):
    (tmp_path / "a.cache.json").write_text("{not json")
    with pytest.raises(CacheError):
        read_sidecar(tmp_path / "a.cache")
    (tmp_path / "b.cache.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(CacheError, match="not a calib cache sidecar"):
        read_sidecar(tmp_path / "b.cache")
    with pytest.raises(CacheError, match="not found"):
        read_sidecar(tmp_path / "c.cache")


# --- CLI ----------------------------------------------------------------------------
def test_cli_show_and_diff(tmp_path, capsys):
    a = tmp_path / "a.cache"
    b = tmp_path / "b.cache"
    write_cache(a, CalibrationCache.from_amax({"x": 1.0, "y": 2.0, "gone": 3.0}))
    b.write_bytes(b"TRT-8601-EntropyCalibration2\r\nx: " + struct.pack(">f", 1.5 / 127).hex().encode()
                  + b"\r\ny: " + struct.pack(">f", 2.02 / 127).hex().encode() + b"\r\nnew: 0\r\n")
    assert main(["cache", "show", str(a)]) == 0
    out = capsys.readouterr().out
    assert "3 tensors" in out and "gone" in out
    assert main(["cache", "show", str(a), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["tensors"]
    assert {r["tensor"]: round(r["amax"], 5) for r in rows} == {"gone": 3.0, "x": 1.0, "y": 2.0}
    assert main(["cache", "diff", str(a), str(b), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["only_a"] == ["gone"] and d["only_b"] == ["new"]
    assert [m["tensor"] for m in d["moved"]] == ["x", "y"]            # largest relative change first
    assert main(["cache", "diff", str(a), str(b), "--threshold", "0.05", "--json"]) == 0
    assert [m["tensor"] for m in json.loads(capsys.readouterr().out)["moved"]] == ["x"]
    assert main(["cache", "diff", str(a), str(b)]) == 0
    assert "only in A: 1" in capsys.readouterr().out


def test_cli_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.cache"
    bad.write_text("TRT-1-X\nbroken line\n")
    assert main(["cache", "show", str(bad)]) != 0
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "line 2" in err and err.count("\n") == 1
    assert main(["cache", "show", str(tmp_path / "missing.cache")]) != 0
    assert "not found" in capsys.readouterr().err
    assert main(["cache", "diff", str(bad), str(bad), "--threshold", "-1"]) != 0


def test_cli_escapes_control_characters_in_tensor_names(tmp_path, capsys):
    """A cache can name a tensor with ESC sequences (clear the screen, recolour), a
    backspace or a right-to-left override: the tables show them escaped, JSON keeps them."""
    evil = {"clear\x1b[2J\x1b[31mred": 1.0, "back\bspace": 2.0, "\u202eevil.onnx": 3.0, "ok ünïcode (1)": 4.0}
    a, b = tmp_path / "a.cache", tmp_path / "b.cache"
    write_cache(a, CalibrationCache.from_amax(evil))
    write_cache(b, CalibrationCache.from_amax({k: v * 2 for k, v in evil.items()} | {"only\x07b": 1.0}))
    assert main(["cache", "show", str(a)]) == 0
    shown = capsys.readouterr().out
    assert main(["cache", "diff", str(a), str(b)]) == 0
    diffed = capsys.readouterr().out
    for out in (shown, diffed):
        assert not any(c in out for c in "\x1b\b\x07\u202e"), repr(out)
        assert "clear\\x1b[2J\\x1b[31mred" in out and "back\\x08space" in out and "\\u202eevil.onnx" in out
        assert "ok ünïcode (1)" in out        # printable text is left alone
    assert "only\\x07b" in diffed
    assert main(["cache", "show", str(a), "--json"]) == 0
    assert {r["tensor"] for r in json.loads(capsys.readouterr().out)["tensors"]} == set(evil)


def test_cli_output_into_a_closed_pipe_ends_quietly(tmp_path):
    """`calib cache diff a b | head -1`: the reader is gone (here before calib writes at all, so
    that the outcome does not depend on the pipe's size); calib stops without a BrokenPipeError
    traceback, nor the interpreter's complaint at exit, with SIGPIPE's status 141, as Unix tools do."""
    import os
    import subprocess
    import sys

    names = [f"/model/block_{i}/conv_{i % 7}/Relu_output_0" for i in range(2000)]
    a, b = tmp_path / "a.cache", tmp_path / "b.cache"
    write_cache(a, CalibrationCache.from_amax({n: 1.0 + i for i, n in enumerate(names)}))
    write_cache(b, CalibrationCache.from_amax({n: 2.0 + i for i, n in enumerate(names)}))
    for argv in (["cache", "diff", str(a), str(b)], ["cache", "show", str(a), "--json"]):
        r, w = os.pipe()
        os.close(r)                            # as head does once it has its line
        try:
            p = subprocess.run([sys.executable, "-m", "calib", *argv], stdout=w, stderr=subprocess.PIPE,
                               timeout=120, check=False)
        finally:
            os.close(w)
        assert p.stderr.decode() == "" and p.returncode == 141, (argv, p.returncode, p.stderr.decode())
