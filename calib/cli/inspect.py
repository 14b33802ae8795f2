"""`calib inspect`: describe a model; with data, run FP32 and report throughput and accuracy; with
`--groups`, list its quantization groups (:func:`calib.tuning.find_groups`)."""
from __future__ import annotations

import time

import numpy as np

from ..errors import ConfigError
from .args import DataArgs, JsonArgs, ModelArgs, RuntimeArgs, ShapesArgs, SplitArgs, add_command, print_json

DATA = DataArgs()


def register(sub) -> None:
    p = add_command(sub, "inspect", help="describe a model; with --data, run FP32 over it",
                    description="Print a model's inputs, outputs, opset, node counts and whether it is already "
                                "quantized. With --data, run it in FP32 (ONNX Runtime) and print throughput and, "
                                "for classifiers with labels, top-1/top-5. With --groups, list its quantization "
                                "groups (the node sets TensorRT fuses and quantizes together) with their MACs and "
                                "activation bytes per sample.",
                    groups=[ModelArgs(help="ONNX model file"), DATA, SplitArgs(), RuntimeArgs(), ShapesArgs(),
                            JsonArgs()], func=run)
    g = p.add_argument_group("Groups", "quantization groups (calib.tuning.find_groups)")
    g.add_argument("--groups", action="store_true",
                   help="list the quantization groups: id, kind, nodes, MACs, activation bytes, quantizable")


def _looks_like_classifier(out: np.ndarray) -> bool:
    flat = out.reshape(out.shape[0], -1)
    return out.ndim >= 2 and flat.shape[1] >= 2 and int(np.prod(out.shape[2:], dtype=np.int64) or 1) == 1


def run(args) -> int:
    from ..backends.onnxruntime import OrtEngine
    from ..harness.metrics import TopK

    model = ModelArgs.parse(args)
    info = model.describe()
    ds = DATA.parse(args, model, split=SplitArgs.parse(args))
    if ds is not None:
        engine = OrtEngine(model, threads=RuntimeArgs.parse(args))
        out_name = engine.output_names[0]
        top1, top5 = TopK(1, output=out_name), TopK(5, output=out_name)
        n = 0
        hits1, hits5 = [], []
        infer_s = 0.0
        t0 = time.perf_counter()
        for batch in ds.batches(batch_size=args.batch_size, progress="FP32"):
            t1 = time.perf_counter()
            outs = engine.run(batch.feed)
            infer_s += time.perf_counter() - t1
            y = outs[out_name]
            n += y.shape[0]
            if batch.labels is not None and _looks_like_classifier(y):
                known = batch.labels >= 0
                if known.any():
                    scores, labels = {out_name: y[known]}, batch.labels[known]
                    hits1.append(top1.update(scores, labels))
                    hits5.append(top5.update(scores, labels))
        wall = time.perf_counter() - t0
        run_info = {"samples": n, "wall_s": round(wall, 3), "inference_s": round(infer_s, 3),
                    "samples_per_s": round(n / wall, 2) if wall else None,
                    "inference_samples_per_s": round(n / infer_s, 2) if infer_s else None,
                    "data": ds.describe()}
        if hits1:
            h1 = np.concatenate(hits1)
            h5 = np.concatenate(hits5)
            run_info.update(labelled=int(h1.size), top1=round(float(h1.mean()), 4), top5=round(float(h5.mean()), 4))
        info["fp32_run"] = run_info
    if args.groups:
        from ..tuning import find_groups

        info["groups"] = [g.to_dict() for g in find_groups(model, ShapesArgs.parse(args))]
    elif args.shapes:
        raise ConfigError("--shapes", "is only used with --groups")
    if JsonArgs.parse(args):
        print_json(info)
        return 0
    _print_human(info)
    return 0


def _fmt_shape(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _print_human(info: dict) -> None:
    print(f"model     {info['path'] or info['name']}")
    print(f"sha256    {info['sha256'][:16]}...  opset {info['opset']}  ir {info['ir_version']}  "
          f"producer {info['producer'] or '?'}")
    for t in info["inputs"]:
        print(f"input     {t['name']}  {t['dtype']}  {_fmt_shape(t['shape'])}")
    for t in info["outputs"]:
        print(f"output    {t['name']}  {t['dtype']}  {_fmt_shape(t['shape'])}")
    ops = ", ".join(f"{k} {v}" for k, v in info["op_counts"].items())
    print(f"nodes     {info['nodes']}: {ops}")
    state = "yes: already quantized, do not quantize again" if info["quantized"] else "no"
    print(f"quantized {state}")
    print(f"fp16      {'yes' if info['fp16'] else 'no'}")
    if info["custom_domains"]:
        print(f"custom    op domains {', '.join(info['custom_domains'])}")
    r = info.get("fp32_run")
    if r:
        print(f"fp32 run  {r['samples']} samples in {r['wall_s']:.2f} s: {r['samples_per_s']} samples/s "
              f"end to end, {r['inference_samples_per_s']} samples/s inference only")
        if "top1" in r:
            print(f"accuracy  top-1 {r['top1'] * 100:.1f}%  top-5 {r['top5'] * 100:.1f}%  "
                  f"over {r['labelled']} labelled samples")
    if info.get("groups") is not None:
        print_groups(info["groups"])


def print_groups(groups: list[dict]) -> None:
    """The quantization groups (``QuantGroup.to_dict()`` each) as a table on stdout."""
    if groups:
        q = [g for g in groups if g["quantizable"]]
        macs = sum(g["macs"] for g in groups)
        print(f"groups    {len(groups)}: {len(q)} quantizable, {macs / 1e6:.1f} M MACs per sample")
        width = max(len(g["id"]) for g in groups)
        print(f"  {'#':>4}  {'id':<{width}}  {'kind':<9}  {'nodes':>5}  {'MACs':>13}  {'act bytes':>11}  quantizable")
        for g in groups:
            print(f"  {g['order']:>4}  {g['id']:<{width}}  {g['kind']:<9}  {len(g['nodes']):>5}  {g['macs']:>13,}  "
                  f"{g['activation_bytes']:>11,}  {'yes' if g['quantizable'] else 'no'}")
