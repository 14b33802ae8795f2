"""The artifacts ``calibrate`` writes are pinned by sha256 on the shared models.

Refactoring must not change a byte of a cache or a Q/DQ model. Each case runs the command as a
user would (``calib calibrate ... --no-eval``) on a fixed, seeded subset of the shared data and
compares the sha256 of ``<stem>.cache`` and ``<stem>.int8.onnx`` with the values recorded before
the refactoring. A change that moves them on purpose (a better algorithm, a new placement) must
update the pins in the same commit and say why.

The numbers come from ONNX Runtime's CPU kernels (statistics and the bias-correction probe run in
it), so they hold for the ONNX Runtime version and CPU family of this project's machines; on a
mismatch the message names the artifact and both digests.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from calib.cli import main

FIXTURES = Path(__file__).parent / "fixtures"

# (model, data folder under shared/data, data flags)
DATA = {
    "efficientnet_lite0": ("imagenet-sample", ["--preset", "efficientnet-lite", "--limit", "48"]),
    "squeezenet1_1_fp32": ("imagenet-sample", ["--preset", "caffe", "--limit", "48"]),
    "ppocrv4_rec": ("ocr-lines", ["--preset", "paddleocr-rec", "--limit", "40", "--batch-size", "8"]),
}

# case id -> (model, extra flags, {artifact suffix: sha256})
PINS = {
    "effnet-trt": ("efficientnet_lite0", [], {
        ".cache": "c8554b0a503ae86291a991f6c0e21576c52b505991cba7146fe926aab6bb60f5",
        ".int8.onnx": "6d2d4c38a2e12ead18e2430f52a2e62180354ab9f7990f30b2d15aefa2d862b0"}),
    "effnet-ort": ("efficientnet_lite0", ['--target', 'onnxruntime'], {
        ".cache": "c8554b0a503ae86291a991f6c0e21576c52b505991cba7146fe926aab6bb60f5",
        ".int8.onnx": "3f9f4fbd40863433f0acd4da8ac97318d2e0c742827578cc82c488ce2599d07a"}),
    "effnet-trt-plan": ("efficientnet_lite0", ['--plan', 'pin_plan_effnet.json'], {
        ".cache": "c8554b0a503ae86291a991f6c0e21576c52b505991cba7146fe926aab6bb60f5",
        ".int8.onnx": "01ca273bd28e8b4e2fa3c2fd7030fe15e90f864d4bcfe42c60ee124679945736"}),
    "effnet-ort-plan": ("efficientnet_lite0", ['--target', 'onnxruntime', '--plan', 'pin_plan_effnet.json'], {
        ".cache": "c8554b0a503ae86291a991f6c0e21576c52b505991cba7146fe926aab6bb60f5",
        ".int8.onnx": "4e640e288c3b3e810f9a5000254087e5d1e0344aa72d4513287fe2184a2cfff9"}),
    "effnet-max": ("efficientnet_lite0", ['--algorithm', 'max', '--no-bias-correction'], {
        ".cache": "b0d113821018281b7c7f0de0f5e875e35e26dcd5642609000b2ed2c8d190f614",
        ".int8.onnx": "06dabae17257bc8f9c09135de83d5322fad4105202c2fac8a1b90d9c58813e82"}),
    "squeezenet-trt": ("squeezenet1_1_fp32", [], {
        ".cache": "8204f5eabcb97445e54703ac7256d1e8b1a94de1d801ee49f566c6b48d5dc925",
        ".int8.onnx": "76441677773f7f0dd4398d0102ed2f85db45982e0953620f9376f4eeae72495b"}),
    "squeezenet-ort": ("squeezenet1_1_fp32", ['--target', 'onnxruntime'], {
        ".cache": "8204f5eabcb97445e54703ac7256d1e8b1a94de1d801ee49f566c6b48d5dc925",
        ".int8.onnx": "3cd5f88dbedfde08aa4c1f5681639d31d30d96e8c4cd4146b617e7fc7ebe2207"}),
    "rec-trt": ("ppocrv4_rec", [], {
        ".cache": "0866671f0e344fe8dfe2329d4c20b23b3440052ab630ec89b563d7269ca30973",
        ".int8.onnx": "ccfe1884fd674456bd7d862584adec3244548da5585c3fdd25c543527d9dd84d"}),
    "rec-ort": ("ppocrv4_rec", ['--target', 'onnxruntime'], {
        ".cache": "0866671f0e344fe8dfe2329d4c20b23b3440052ab630ec89b563d7269ca30973",
        ".int8.onnx": "1b5477db3754bf79d1b68ce7f6020c86adb9d6cbe8804e9430df641d8826ef6e"}),
    "rec-trt-max": ("ppocrv4_rec", ['--algorithm', 'max'], {
        ".cache": "8ae306314e9e3cc8af81f5a68b970463cd63a1b9d87efdbadc459ba57b4e56f5",
        ".int8.onnx": "a66351980b290d74ca9c465d0957a662bb25a53772951112686c8363ba254589"}),
    "rec-trt-plan": ("ppocrv4_rec", ['--plan', 'pin_plan_rec.json'], {
        ".cache": "0866671f0e344fe8dfe2329d4c20b23b3440052ab630ec89b563d7269ca30973",
        ".int8.onnx": "d535674dd89c2a5ea29ab738cae2f02fba190d671907e9f3eea235c9fe1fd2e9"}),
    "rec-ort-nosmooth": ("ppocrv4_rec", ['--target', 'onnxruntime', '--no-smooth'], {
        ".cache": "0866671f0e344fe8dfe2329d4c20b23b3440052ab630ec89b563d7269ca30973",
        ".int8.onnx": "c4f4d535b89118db9d41aa92791adb859c324d8215fdb8901e96717e2723b442"}),
}


@pytest.mark.parametrize("case", sorted(PINS))
def test_artifacts_are_byte_identical_to_the_pins(case, shared_dir, tmp_path):
    model, extra, pins = PINS[case]
    folder, flags = DATA[model]
    extra = [str(FIXTURES / a) if a.endswith(".json") else a for a in extra]
    rc = main(["calibrate", "--model", str(shared_dir / "models" / f"{model}.onnx"),
               "--data", str(shared_dir / "data" / folder), *flags, *extra, "--no-eval", "--out", str(tmp_path)])
    assert rc == 0
    got = {suffix: hashlib.sha256((tmp_path / f"{model}{suffix}").read_bytes()).hexdigest() for suffix in pins}
    assert got == pins, f"{case}: artifacts changed"
