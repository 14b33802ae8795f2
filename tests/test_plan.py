"""Precision plan format: round trip, deterministic text, validation errors."""
from __future__ import annotations

import json

import pytest

from calib.errors import OutputExistsError, PlanError
from calib.plan import PrecisionPlan, load_plan


def test_round_trip_and_deterministic_text(tmp_path):
    plan = PrecisionPlan({"b_node": "FP16", "a_node": "fp32"}, default="int8", comment="keep head float")
    p = plan.save(tmp_path / "plan.json")
    text = p.read_text()
    assert text.endswith("}\n")
    d = json.loads(text)
    assert d == {"format": "calib-precision-plan", "version": 1, "default": "int8",
                 "layers": {"a_node": "fp32", "b_node": "fp16"}, "comment": "keep head float"}
    assert list(d) == sorted(d) and list(d["layers"]) == ["a_node", "b_node"]
    assert "\n  \"default\"" in text  # indent 2
    again = PrecisionPlan.load(p)
    assert again == plan and again.dumps() == text
    # same plan built in another order serialises to the same bytes
    assert PrecisionPlan({"a_node": "fp32", "b_node": "fp16"}, comment="keep head float").dumps() == text


def test_save_refuses_to_overwrite(tmp_path):
    plan = PrecisionPlan({"x": "fp16"})
    path = tmp_path / "p.json"
    plan.save(path)
    with pytest.raises(OutputExistsError):
        PrecisionPlan({"x": "fp32"}).save(path)
    assert PrecisionPlan.load(path).layers == {"x": "fp16"}
    PrecisionPlan({"x": "fp32"}).save(path, overwrite=True)
    assert PrecisionPlan.load(path).layers == {"x": "fp32"}
    assert [f.name for f in tmp_path.iterdir()] == ["p.json"]  # no temp files left


def test_precision_for_and_match():
    plan = PrecisionPlan({"conv1": "fp16", "fc": "fp32", "gone": "int8"}, default="int8")
    assert plan.precision_for("conv1") == "fp16"
    assert plan.precision_for("fc") == "fp32"
    assert plan.precision_for("other") == "int8"
    assert PrecisionPlan(default="fp16").precision_for("anything") == "fp16"
    matched, unmatched = plan.match(["conv1", "fc", "conv2"])
    assert matched == {"conv1": "fp16", "fc": "fp32"}
    assert unmatched == ["gone"]


def test_load_plan_accepts_path_dict_and_plan(tmp_path):
    plan = PrecisionPlan({"n": "fp32"})
    plan.save(tmp_path / "p.json")
    assert load_plan(tmp_path / "p.json") == plan
    assert load_plan(str(tmp_path / "p.json")) == plan
    assert load_plan(plan.to_dict()) == plan
    assert load_plan(plan) is plan and load_plan(None) is None


def _write(tmp_path, text):
    p = tmp_path / "plan.json"
    p.write_text(text)
    return p


@pytest.mark.parametrize("text, fragment", [
    ('{"format": "calib-precision-plan",\n "version": 1,\n "layers": {"a": "fp16",}}', "line 3 column"),
    ('{"format": "calib-precision-plan", "version": 1, "layers": {"a": "int4"}}', "unknown precision 'int4'"),
    ('{"format": "calib-precision-plan", "version": 1, "default": "bf16"}', "unknown precision 'bf16'"),
    ('{"format": "calib-precision-plan", "version": 2, "layers": {}}', "unsupported precision plan version 2"),
    ('{"format": "tensorrt-cache", "version": 1}', "not a precision plan"),
    ('{"version": 1, "layers": {}}', "not a precision plan"),
    ('{"format": "calib-precision-plan", "version": 1, "layer": {}}', "unknown plan key(s) 'layer'"),
    ('{"format": "calib-precision-plan", "version": 1, "layers": ["a"]}', "'layers' must be an object"),
    ('[1, 2]', "must be a JSON object"),
    ('{"format": "calib-precision-plan", "version": true}', "unsupported precision plan version"),
])
def test_validation_errors_are_one_line(tmp_path, text, fragment):
    p = _write(tmp_path, text)
    with pytest.raises(PlanError) as ei:
        PrecisionPlan.load(p)
    msg = str(ei.value)
    assert fragment in msg, msg
    assert "\n" not in msg
    assert str(p) in msg


def test_missing_file(tmp_path):
    with pytest.raises(PlanError, match="not found"):
        PrecisionPlan.load(tmp_path / "nope.json")


def test_constructor_validates():
    with pytest.raises(PlanError, match="unknown precision"):
        PrecisionPlan({"a": "int16"})
    with pytest.raises(PlanError, match="non-empty"):
        PrecisionPlan({"": "fp16"})
