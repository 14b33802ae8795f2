"""API conformance: every TensorRT name the backend uses exists in the real bindings of every
release that claims the feature using it.

1. Offline: the backend's source (``calib/backends/tensorrt/*.py``) is parsed with ``ast``;
   every attribute taken from ``trt`` or from a variable holding a TensorRT object
   (``versions.HANDLE_TYPES``) must be declared in ``versions.API_MANIFEST``.
2. Registry: the real Python binding wheels listed in ``tests/trt_api/wheels.json`` (8.6.1,
   10.0.1, 10.16.1.11, 11.0.0.114, 11.4.0.106) are downloaded from PyPI with pip (cached under
   ``$CALIB_TRT_WHEEL_CACHE`` or pytest's cache dir), the names compiled into ``tensorrt.so`` are
   read (see ``tests/trt_api/apinames.py``), and each feature a version claims must find all its
   names there. Features a version does not claim must lack at least one name (the table is not
   too timid), except deprecated-but-present flags listed below.
3. The checker is shown to fail: a bogus name is reported, and 11.x lacks the calibrators.
Skipped (with the reason) only when pip cannot reach the registry.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from calib.backends.tensorrt import versions as V
from trt_api import apinames as A

ROOT = Path(__file__).resolve().parents[1]
BACKEND = ROOT / "calib" / "backends" / "tensorrt"
CFG = json.loads((Path(__file__).parent / "trt_api" / "wheels.json").read_text())
WHEELS = [(w["package"], w["version"]) for w in CFG["wheels"]]
# feature -> versions where it is not claimed but its names still exist (deprecated, kept for compatibility)
STILL_PRESENT_WHEN_UNCLAIMED = {"explicit_batch_flag": "EXPLICIT_BATCH is deprecated and ignored in 10.x; "
                                                       "calib does not pass it there"}


# ----------------------------------------------------------------------------- offline
def test_source_uses_only_declared_names():
    used = A.used_names(A.backend_sources(BACKEND), V.HANDLE_TYPES)
    assert used, "the scanner found no TensorRT use at all; HANDLE_TYPES is out of date"
    assert "IBuilderConfig.set_flag" in used and "BuilderFlag.INT8" in used and "IInt8EntropyCalibrator2" in used
    assert A.undeclared(used, V.all_declared_names()) == {}


def test_scanner_reports_an_undeclared_name():
    src = {"x.py": "def f(trt, config, context):\n"
                   "    config.set_flag(trt.BuilderFlag.INT9)\n"
                   "    context.execute_async_v4(0)\n"
                   "    self_like = trt.IInt8EntropyCalibrator3\n"}
    bad = A.undeclared(A.used_names(src, V.HANDLE_TYPES), V.all_declared_names())
    assert set(bad) == {"BuilderFlag.INT9", "IExecutionContext.execute_async_v4", "IInt8EntropyCalibrator3"}
    assert bad["BuilderFlag.INT9"] == ["x.py:2"]


# ----------------------------------------------------------------------------- registry
@pytest.fixture(scope="session")
def wheel_cache(request):
    return A.default_cache_dir(Path(request.config.cache.mkdir("trt-wheels")))


def _names(package, version, cache) -> A.NameSet:
    try:
        return A.load_names(package, version, cache)
    except A.RegistryUnreachable as exc:
        pytest.skip(str(exc))


@pytest.mark.network
@pytest.mark.parametrize("package,version", WHEELS, ids=[v for _, v in WHEELS])
def test_declared_names_exist_in_real_wheel(package, version, wheel_cache):
    ns = _names(package, version, wheel_cache)
    v = V.TrtVersion.parse(version)
    assert V.supported(v)
    assert ns.missing(V.names_for(v)) == {}, f"{ns.wheel}: names calib uses for {version} are missing"
    # the feature table is not too timid either: an unclaimed feature's names are really gone
    for feature in set(V.FEATURES) - V.features_for(v):
        if feature in STILL_PRESENT_WHEN_UNCLAIMED and v.major == 10:
            continue
        assert ns.missing({feature: V.API_MANIFEST[feature]}), \
            f"TensorRT {version} has every name of '{feature}' but versions.FEATURES says it lacks it"


@pytest.mark.network
@pytest.mark.parametrize("package,version", WHEELS, ids=[v for _, v in WHEELS])
def test_extractor_reads_known_facts(package, version, wheel_cache):
    ns = _names(package, version, wheel_cache)
    for n in CFG["facts"]["present"].get(version, []):
        assert ns.has(n), f"{n} should be in {ns.wheel}"
    for n in CFG["facts"]["absent"].get(version, []):
        assert not ns.has(n), f"{n} should not be in {ns.wheel}"


@pytest.mark.network
def test_checker_fails_on_a_wrong_name(wheel_cache):
    ns = _names("tensorrt-cu12-bindings", "10.16.1.11", wheel_cache)
    bogus = {"implicit_quantization": ("IInt8EntropyCalibrator2", "IInt8EntropyCalibrator3",
                                       "IBuilderConfig.set_flagz", "BuilderFlag.INT8")}
    assert ns.missing(bogus) == {"implicit_quantization": ["IInt8EntropyCalibrator3", "IBuilderConfig.set_flagz"]}


@pytest.mark.network
def test_11x_removed_implicit_quantization(wheel_cache):
    for version in ("11.0.0.114", "11.4.0.106"):
        ns = _names("tensorrt-cu12-bindings", version, wheel_cache)
        assert not ns.has("IInt8EntropyCalibrator2") and not ns.has("IInt8MinMaxCalibrator")
        assert ns.has("STRONGLY_TYPED")
        # if the table wrongly claimed implicit quantization for 11.x, the check would fail:
        missing = ns.missing({"implicit_quantization": V.API_MANIFEST["implicit_quantization"]})
        assert "IInt8EntropyCalibrator2" in missing["implicit_quantization"]
        assert "IBuilderConfig.int8_calibrator" in missing["implicit_quantization"]
        assert not V.has("implicit_quantization", V.TrtVersion.parse(version))
