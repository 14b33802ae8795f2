"""The data flags every command shares: ``add_data_arguments`` and ``dataset_from_args``."""
from __future__ import annotations

import argparse

from ..errors import DataError
from .dataset import DEFAULT_BATCH_SIZE, Dataset, open_dataset
from .preprocess import INTERPOLATIONS, PRESETS, Preprocess, parse_floats


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def add_data_arguments(parser: argparse.ArgumentParser, *, required: bool = False,
                       batch_size: int = DEFAULT_BATCH_SIZE) -> argparse._ArgumentGroup:
    """Add the shared data flags to *parser* (in an argument group "data")."""
    g = parser.add_argument_group("data")
    g.add_argument("--data", metavar="PATH", required=required,
                   help="folder of images (recursive; JPEG/PNG/BMP/WebP/TIFF), .h5/.hdf5, .npy/.npz, "
                        "or a folder of .npy/.npz files")
    g.add_argument("--data-loader-script", metavar="FILE.py:FUNC",
                   help="Python file whose FUNC() returns an iterable of {input_name: array} feed dicts "
                        "(Polygraphy convention); instead of --data")
    g.add_argument("--preset", metavar="NAME",
                   help="image preprocessing preset: " + "; ".join(f"{k} ({v[0]})" for k, v in PRESETS.items()
                                                                 if not k.startswith("paddleocr-rec")))
    g.add_argument("--resize", metavar="N",
                   help="resize: shorter side N (or HxW for an exact size); overrides the preset")
    g.add_argument("--crop", metavar="N", help="centre crop N (or HxW); overrides the preset")
    g.add_argument("--interp", choices=[i for i in INTERPOLATIONS if i in ("bilinear", "bicubic", "nearest")],
                   help="resize interpolation (overrides the preset)")
    g.add_argument("--mean", metavar="a,b,c", help="per-channel mean in RGB order, after --scale")
    g.add_argument("--std", metavar="a,b,c", help="per-channel std in RGB order, after --scale")
    g.add_argument("--scale", metavar="S", type=float, help="multiply pixels (0..255) by S before mean/std")
    g.add_argument("--bgr", action="store_true", default=None, help="feed channels in BGR order")
    g.add_argument("--layout", choices=("nchw", "nhwc"), help="image layout (default: from the model input)")
    g.add_argument("--batch-size", type=_positive_int, default=batch_size, metavar="N",
                   help=f"samples per batch (default {batch_size})")
    g.add_argument("--limit", type=_positive_int, metavar="N",
                   help="use at most N samples, chosen by a seeded hash of their ids (stable across runs)")
    g.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the --limit sample choice (default 0)")
    g.add_argument("--classes", metavar="FILE",
                   help="class ids in model output order (one per line, or TSV index<TAB>id); maps sub-folder "
                        "names or file-name prefixes (n01440764_tench.JPEG -> n01440764) to label indices")
    g.add_argument("--labels", metavar="FILE", help="CSV/TSV of file name -> label index (or class id)")
    g.add_argument("--strict", action="store_true",
                   help="stop on the first corrupt image instead of skipping it")
    g.add_argument("--hdf5-map", metavar="INPUT=DATASET,...",
                   help="which HDF5 dataset (or .npz array) feeds which model input (default: same name); "
                        "labels=DATASET names the labels")
    return g


def preprocess_from_args(args) -> Preprocess | None:
    """The :class:`Preprocess` the flags describe (preset plus overrides), or None if none given."""
    over = {}
    if getattr(args, "resize", None) is not None:
        over["resize"] = args.resize
    if getattr(args, "crop", None) is not None:
        over["crop"] = args.crop
    if getattr(args, "interp", None):
        over["interp"] = args.interp
    if getattr(args, "mean", None) is not None:
        over["mean"] = parse_floats(args.mean, "--mean")
    if getattr(args, "std", None) is not None:
        over["std"] = parse_floats(args.std, "--std")
    if getattr(args, "scale", None) is not None:
        over["scale"] = args.scale
    if getattr(args, "bgr", None):
        over["bgr"] = True
    if getattr(args, "layout", None):
        over["layout"] = args.layout
    preset = getattr(args, "preset", None)
    if preset:
        return Preprocess.preset(preset, **over)
    if not over or set(over) <= {"layout"}:
        return None
    return Preprocess(**over)


def dataset_from_args(args, model, *, split: str | None = None) -> Dataset:
    """Open the dataset the shared flags describe, for *model*. Raises CalibError subclasses."""
    data = getattr(args, "data", None)
    script = getattr(args, "data_loader_script", None)
    if data and script:
        raise DataError("give --data or --data-loader-script, not both")
    if not data and not script:
        raise DataError("no data: pass --data PATH (or --data-loader-script FILE.py:FUNC)")
    pre = preprocess_from_args(args)
    return open_dataset(data or script, model, pre,
                        limit=getattr(args, "limit", None), seed=getattr(args, "seed", 0) or 0,
                        classes=getattr(args, "classes", None), labels=getattr(args, "labels", None),
                        strict=bool(getattr(args, "strict", False)), split=split,
                        hdf5_map=getattr(args, "hdf5_map", None))


__all__ = ["add_data_arguments", "dataset_from_args", "preprocess_from_args"]
