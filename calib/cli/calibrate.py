"""`calibrate` / `calib calibrate`: INT8 scales -> TensorRT cache, sidecar, Q/DQ model, summary
(``<stem>.cache``, ``<stem>.cache.json``, ``<stem>.int8.onnx``, ``<stem>.summary.json``)."""
from __future__ import annotations

from .args import (
    CalibrationArgs,
    DataArgs,
    JsonArgs,
    ModelArgs,
    OutputArgs,
    RayArgs,
    RuntimeArgs,
    add_command,
    print_json,
)

DATA = DataArgs(required=True)
OUTPUT = OutputArgs(writes="<stem>.cache, <stem>.cache.json, <stem>.int8.onnx and <stem>.summary.json",
                    default="the model's folder")


def register(sub) -> None:
    add_command(sub, "calibrate", help="compute INT8 scales; write a TensorRT cache and a Q/DQ model",
                description="Calibrate an ONNX model on representative data without a GPU. Writes "
                            "<stem>.cache (TensorRT's calibration cache format), <stem>.cache.json (provenance), "
                            "<stem>.int8.onnx (explicit Q/DQ model) and <stem>.summary.json, then compares INT8 with "
                            "FP32 on a held-out split of the data.",
                groups=[ModelArgs(), DATA, CalibrationArgs(), RuntimeArgs(), RayArgs(), OUTPUT, JsonArgs()], func=run)


def run(args) -> int:
    from ..pipeline import calibrate

    config = CalibrationArgs.parse(args)      # bad options fail before the model is read
    ray = RayArgs.parse(args)
    out = OUTPUT.parse(args)
    model = ModelArgs.parse(args)
    res = calibrate(model, dataset=DATA.parse(args, model), config=config, out=out.dir, force=out.force,
                    progress=not JsonArgs.parse(args), ray=ray)
    if JsonArgs.parse(args):
        print_json(res.summary, sort_keys=True)
    else:
        for line in res.summary_lines():
            print(line)
    return 0
