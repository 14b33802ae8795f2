"""Version -> feature mapping of the TensorRT backend (no TensorRT needed)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from calib.backends.tensorrt.versions import (
    API_MANIFEST,
    FEATURES,
    Capabilities,
    TrtVersion,
    check_supported,
    features_for,
    has,
    support_table,
    supported,
)
from calib.errors import TensorRTUnavailableError

V = TrtVersion.parse


@pytest.mark.parametrize("text,expected", [
    ("8.6.1", (8, 6, 1, 0)), ("8.6.1.post1", (8, 6, 1, 0)), ("10.16.1.11", (10, 16, 1, 11)),
    ("11.0.0.114", (11, 0, 0, 114)), ("10.0", (10, 0, 0, 0)),
])
def test_parse(text, expected):
    assert tuple(V(text).__dict__.values()) == expected


def test_parse_rejects_garbage():
    with pytest.raises(TensorRTUnavailableError):
        V("unknown")


def test_cache_header_version_numbers():
    # NV_TENSORRT_VERSION: 8601 for 8.6.1, 100900 for 10.9.0 (what calib.cache defaults to)
    assert V("8.6.1").cache_version == 8601
    assert V("10.9.0.34").cache_version == 100900
    from calib.cache import DEFAULT_TRT_VERSION
    assert V("10.9.0").cache_version == DEFAULT_TRT_VERSION


@pytest.mark.parametrize("version,implicit,explicit,eb_flag,node_names", [
    ("8.6.1", True, False, True, False),
    ("10.0.1", True, True, False, True),
    ("10.16.1.11", True, True, False, True),
    ("11.0.0.114", False, True, False, True),
    ("11.4.0.106", False, True, False, True),
])
def test_capabilities(version, implicit, explicit, eb_flag, node_names):
    c = Capabilities(V(version))
    assert (c.implicit, c.explicit, c.needs_explicit_batch_flag, c.parser_error_names) == \
        (implicit, explicit, eb_flag, node_names)
    assert c.default_mode() == ("implicit" if implicit else "explicit")


@pytest.mark.parametrize("version", ["8.5.3", "9.2.0", "12.0.0", "7.2.3"])
def test_unsupported_versions_refused(version):
    assert not supported(V(version))
    with pytest.raises(TensorRTUnavailableError, match="not supported"):
        check_supported(V(version))


def test_modes_refused_where_missing():
    with pytest.raises(TensorRTUnavailableError, match="removed in 11.0"):
        Capabilities(V("11.0.0")).check_mode("implicit")
    with pytest.raises(TensorRTUnavailableError, match=">= 10.0"):
        Capabilities(V("8.6.1")).check_mode("explicit")


def test_every_feature_has_a_manifest():
    assert set(FEATURES) == set(API_MANIFEST)
    assert "core" in features_for(V("8.6.1")) and "core" in features_for(V("11.4"))
    assert not has("implicit_quantization", V("11.0")) and has("implicit_quantization", V("10.99"))


def test_support_table_rows():
    rows = {r["tensorrt"]: r for r in support_table()}
    assert rows["11.x"]["implicit (cache/calibrator)"] is False
    assert rows["8.6"]["explicit (Q/DQ, strongly typed)"] is False


def test_import_calib_does_not_import_tensorrt():
    code = ("import sys, calib, calib.backends.tensorrt, calib.backends.tensorrt.versions, "
            "calib.backends.tensorrt.matching, calib.backends.tensorrt.cache_serving, calib.cli.tensorrt; "
            "assert 'tensorrt' not in sys.modules; assert 'cuda' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
