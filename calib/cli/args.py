"""Argument groups that the commands compose, so that a flag means the same in every command.

Modelled on Polygraphy's ``polygraphy/tools/args``: a group is a class whose docstring starts with
``Title: what the flags are about`` (the section of ``--help``); ``add_to(parser)`` adds its flags
and ``parse(args, ...)`` turns the parsed namespace into a value or an object. A command lists the
groups it needs (:func:`add_command`) and adds only its own flags itself.

- :class:`ModelArgs`: ``--model`` -> :class:`calib.model.Model` (None when optional and absent);
- :class:`DataArgs`: ``--data`` / ``--data-loader-script``, preprocessing, ``--batch-size``,
  ``--limit``, ``--seed``, labels -> :class:`calib.datasets.Dataset`;
- :class:`SplitArgs`: ``--split calib|eval|all`` -> the part of the data, as calibrate splits it;
- :class:`RuntimeArgs`: ``--threads`` -> ONNX Runtime intra-op threads (None: all cores);
- :class:`TaskArgs`: ``--task``, ``--text-labels`` -> the harness task and CTC text labels;
- :class:`ShapesArgs`: ``--shapes`` -> concrete input shapes for the groups' costs;
- :class:`OutputArgs`: ``--out DIR`` (always a folder) and ``--force`` -> :class:`Output`;
- :class:`JsonArgs`: ``--json`` (JSON on stdout, nothing else there) -> bool; :func:`print_json`;
- :class:`CalibrationArgs`: ``--algorithm``, ``--samples``, ``--smooth``, ...
  -> :class:`calib.pipeline.CalibrationConfig`;
- :class:`RayArgs`: ``--ray ADDRESS|auto`` -> the Ray cluster to run on (None: this process).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..datasets import DEFAULT_BATCH_SIZE, PRESETS, SPLITS, Preprocess, open_dataset, parse_floats
from ..datasets.preprocess import INTERPOLATIONS
from ..errors import CalibError, ConfigError, DataError, EmptyDatasetError
from ..utils import atomic_write_text, check_output_dir, check_outputs


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


class ArgGroup:
    """Base: flags added to a parser together, and what they mean once parsed."""

    def add_to(self, parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
        """Add this group's flags to *parser*, in an argument group titled from the docstring."""
        title, _, desc = (self.__doc__ or "").strip().splitlines()[0].partition(":")
        group = parser.add_argument_group(title.strip(), desc.strip().rstrip(".") or None)
        self._add(group)
        return group

    def _add(self, group: argparse._ArgumentGroup) -> None:
        raise NotImplementedError


def add_command(sub, name: str, *, help: str, description: str, groups: Sequence[ArgGroup],
                func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    """A subcommand parser with *groups*' flags; the command adds its own flags to the result."""
    p = sub.add_parser(name, help=help, description=description)
    for g in groups:
        g.add_to(p)
    p.set_defaults(func=func)
    return p


class ModelArgs(ArgGroup):
    """Model: the ONNX model."""

    def __init__(self, required: bool = True, help: str = "the FP32 ONNX model"):
        self.required, self.help = required, help

    def _add(self, g) -> None:
        g.add_argument("--model", metavar="MODEL.onnx", required=self.required, help=self.help)

    @staticmethod
    def parse(args):
        """The loaded :class:`calib.model.Model`, or None when ``--model`` was not given."""
        from ..model import Model

        return Model.load(args.model) if args.model else None


class DataArgs(ArgGroup):
    """Data: the samples, and how they are read, labelled and preprocessed."""

    def __init__(self, required: bool = False, batch_size: int = DEFAULT_BATCH_SIZE):
        self.required, self.batch_size = required, batch_size

    def _add(self, g) -> None:
        need = " (this or --data-loader-script is required)" if self.required else ""
        g.add_argument("--data", metavar="PATH",
                       help="folder of images (recursive; JPEG/PNG/BMP/WebP/TIFF), .h5/.hdf5, .npy/.npz, "
                            "or a folder of .npy/.npz files; a FILE.py[:FUNC] is imported and run as Python code, "
                            "as --data-loader-script" + need)
        g.add_argument("--data-loader-script", metavar="FILE.py:FUNC",
                       help="Python file whose FUNC() (default load_data) returns an iterable of {input_name: array} "
                            "feed dicts (Polygraphy convention); the file is executed: run only code you trust; "
                            "instead of --data")
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
        g.add_argument("--batch-size", type=positive_int, default=self.batch_size, metavar="N",
                       help=f"samples per batch (default {self.batch_size})")
        g.add_argument("--limit", type=positive_int, metavar="N",
                       help="use at most N samples, chosen by a seeded hash of their ids (stable across runs; "
                            "before --split)")
        g.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the --limit sample choice (default 0)")
        g.add_argument("--classes", metavar="FILE",
                       help="class ids in model output order (one per line, or TSV index<TAB>id); maps sub-folder "
                            "names or file-name prefixes (n01440764_tench.JPEG -> n01440764) to label indices")
        g.add_argument("--labels", metavar="FILE", help="CSV/TSV of file name -> label index (or class id)")
        g.add_argument("--strict", action="store_true",
                       help="stop on the first corrupt image instead of skipping it")
        g.add_argument("--input-map", "--hdf5-map", dest="input_map", metavar="INPUT=KEY,...",
                       help="which HDF5 dataset or .npz array feeds which model input (default: the same name); "
                            "labels=KEY names the labels (--hdf5-map is its old name)")
        g.add_argument("--batch-axis", action="append", metavar="INPUT=AXIS",
                       help="the axis of INPUT that holds the samples, for inputs not batched on axis 0 (a "
                            "recurrent state [2, N, 128]: state=1), or 'none' for an input that takes one value "
                            "for every sample; repeatable")
        g.add_argument("--constant", action="append", metavar="INPUT=VALUE",
                       help="feed INPUT the same value in every batch (a number, or comma-separated numbers): "
                            "inputs that are not per sample, such as a sample rate sr=16000; repeatable")
        g.add_argument("--allow-external-data", action="store_true",
                       help="let an HDF5 file's external links, external storage or virtual datasets make calib "
                            "read the other files they name (refused by default)")

    @staticmethod
    def given(args) -> bool:
        """Whether ``--data`` or ``--data-loader-script`` was passed."""
        return bool(args.data or args.data_loader_script)

    @staticmethod
    def preprocess(args) -> Preprocess | None:
        """The :class:`Preprocess` the flags describe (preset plus overrides), or None if none given."""
        over = {}
        for name in ("resize", "crop", "scale"):
            if getattr(args, name) is not None:
                over[name] = getattr(args, name)
        for name in ("interp", "layout"):
            if getattr(args, name):
                over[name] = getattr(args, name)
        for name in ("mean", "std"):
            if getattr(args, name) is not None:
                over[name] = parse_floats(getattr(args, name), f"--{name}")
        if args.bgr:
            over["bgr"] = True
        if args.preset:
            return Preprocess.preset(args.preset, **over)
        if not over or set(over) <= {"layout"}:
            return None
        return Preprocess(**over)

    def parse(self, args, model, *, split: str | None = None):
        """The dataset the flags describe, for *model*, narrowed to *split* (``calib``/``eval``) after
        ``--limit`` as :func:`calib.calibrate` narrows it; None when no data was given to a command
        where it is optional. Raises :class:`calib.errors.DataError` subclasses."""
        if args.data and args.data_loader_script:
            raise DataError("give --data or --data-loader-script, not both")
        if not self.given(args):
            if self.required:
                raise DataError("no data: pass --data PATH (or --data-loader-script FILE.py:FUNC)")
            return None
        ds = open_dataset(args.data or args.data_loader_script, model, self.preprocess(args), limit=args.limit,
                          seed=args.seed, classes=args.classes, labels=args.labels, strict=args.strict,
                          input_map=args.input_map, batch_axes=args.batch_axis, constants=args.constant,
                          allow_external_data=args.allow_external_data)
        if split is None:
            return ds
        part = ds.split(split)
        if not ds.source.streaming and not part.longer_than(0):
            raise EmptyDatasetError(f"none of the {len(ds)} samples falls in the '{split}' split; use more data "
                                    f"or --split all")
        return part


class SplitArgs(ArgGroup):
    """Split: which part of the data, by calibrate's stable split."""

    CHOICES = (*SPLITS, "all")

    def _add(self, g) -> None:
        g.add_argument("--split", choices=self.CHOICES, default="all",
                       help="use only the 'calib' or the 'eval' part of the data, split as calibrate splits it "
                            "(a sample's part follows from a hash of its id; applied after --limit): 'eval' holds "
                            "no sample calibrate calibrated on (default: all)")

    @staticmethod
    def parse(args) -> str | None:
        """``"calib"``, ``"eval"``, or None for all of the data."""
        return None if args.split == "all" else args.split


class RuntimeArgs(ArgGroup):
    """Runtime: how ONNX Runtime runs."""

    def _add(self, g) -> None:
        g.add_argument("--threads", type=positive_int, default=None, metavar="N",
                       help="ONNX Runtime intra-op threads (default: all cores)")

    @staticmethod
    def parse(args) -> int | None:
        return args.threads


class TaskArgs(ArgGroup):
    """Task: what the model's outputs are and how they are scored against FP32 and the labels."""

    def _add(self, g) -> None:
        from ..harness.metrics import TASKS

        g.add_argument("--task", choices=["auto", *TASKS], default="auto",
                       help="which metrics to compute (default: guessed from the outputs, labels and model metadata)")
        g.add_argument("--text-labels", metavar="TSV",
                       help="text labels 'file<TAB>text' per line (OCR / CTC), matched to samples by file name")

    @staticmethod
    def parse(args) -> tuple[str, str | None]:
        """``(task, text labels path or None)``."""
        return args.task, args.text_labels


class ShapesArgs(ArgGroup):
    """Shapes: concrete input shapes where the model's are dynamic (for the groups' costs)."""

    def _add(self, g) -> None:
        g.add_argument("--shapes", metavar="NAME:DxD,...",
                       help="concrete input shapes for the quantization groups' costs, e.g. x:1x3x48x320 (needed "
                            "for inputs with dynamic dimensions other than the batch; the batch counts as 1)")

    @staticmethod
    def parse(args) -> dict[str, tuple[int, ...]]:
        """``{input: shape}`` (empty when not given)."""
        from ..backends.tensorrt.builder import parse_shapes

        return parse_shapes(args.shapes, "--shapes")


@dataclass(frozen=True)
class Output:
    """The output folder (None: the command's default place) and whether existing files are replaced."""

    dir: Path | None
    force: bool = False

    def path(self, name: str) -> Path:
        if self.dir is None:
            raise CalibError(f"no output folder: pass --out DIR to write {name}")
        return self.dir / name

    def check(self, *names: str) -> list[Path]:
        """The paths of *names* in the folder, each refused if it exists without ``--force``
        (call before the work, so that nothing runs for output that cannot be written)."""
        return check_outputs([self.path(n) for n in names], self.force)

    def write_json(self, name: str, obj) -> Path:
        """Write *obj* as ``<dir>/<name>`` (indented JSON), atomically."""
        return atomic_write_text(self.path(name), json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n",
                                 overwrite=self.force)


class OutputArgs(ArgGroup):
    """Output: where files are written."""

    def __init__(self, required: bool = False, writes: str = "the outputs", default: str | None = None,
                 not_suffixes: Sequence[str] = ()):
        self.required, self.writes, self.default, self.not_suffixes = required, writes, default, tuple(not_suffixes)

    def _add(self, g) -> None:
        g.add_argument("--out", metavar="DIR", required=self.required,
                       help=f"folder to write {self.writes} into (created if missing)"
                            + (f"; default: {self.default}" if self.default else ""))
        g.add_argument("--force", action="store_true", help="overwrite existing output files")

    def parse(self, args) -> Output:
        """:class:`Output`; ``--out`` naming an existing file, or a name ending like one of the files
        the command writes (``m.plan``), is refused: it is always a folder. So is a folder that
        cannot be written (read-only, under a file, no permission): checked here, before any work
        (:func:`calib.utils.check_output_dir`; a missing folder is created when the outputs are
        written)."""
        if args.out is None:
            return Output(None, args.force)
        d = Path(args.out)
        if d.exists() and not d.is_dir():
            raise CalibError(f"--out is a folder, but {d} is a file")
        if not d.exists() and d.suffix.lower() in self.not_suffixes:
            raise CalibError(f"--out is a folder that {self.writes} go into, not a file name: got {d}")
        check_output_dir(d)
        return Output(d, args.force)


class JsonArgs(ArgGroup):
    """JSON: machine-readable output."""

    def _add(self, g) -> None:
        g.add_argument("--json", action="store_true",
                       help="print the result as JSON on stdout, and nothing else there (messages go to stderr)")

    @staticmethod
    def parse(args) -> bool:
        return bool(args.json)


def print_json(obj, *, sort_keys: bool = False) -> None:
    """*obj* (or JSON text already made) as indented JSON on stdout, one document."""
    text = obj if isinstance(obj, str) else json.dumps(obj, indent=2, sort_keys=sort_keys, default=str)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


class CalibrationArgs(ArgGroup):
    """Calibration: how activation ranges are chosen and the Q/DQ model is made.

    A command whose own ``--algorithm`` means something else (``calib search``: the search
    strategy) takes the calibration algorithm as ``--calib-algorithm`` (*algorithm_flag*);
    *plan* and *evaluate* False leave out ``--plan`` and ``--no-eval`` where the command decides
    those itself."""

    ALGORITHM_DEST = "calibration_algorithm"    # dest of the calibration algorithm under another flag

    def __init__(self, algorithm_flag: str = "--algorithm", plan: bool = True, evaluate: bool = True):
        self.algorithm_flag, self.plan, self.evaluate = algorithm_flag, plan, evaluate

    def _add(self, g) -> None:
        from ..pipeline import ALGORITHMS, BIAS_PROBE_SAMPLES, TARGETS, CalibrationConfig

        d = CalibrationConfig()
        dest = {} if self.algorithm_flag == "--algorithm" else {"dest": self.ALGORITHM_DEST}
        g.add_argument(self.algorithm_flag, choices=ALGORITHMS, default=d.algorithm, **dest,
                       help=f"how activation ranges are chosen (default: {d.algorithm}, as TensorRT's "
                            "EntropyCalibration2); auto scores every algorithm's INT8 model against FP32 on "
                            "calibration samples and keeps the best")
        g.add_argument("--percentile", type=float, default=d.percentile,
                       help=f"with {self.algorithm_flag} percentile: the percentile of |x| kept "
                            f"(default {d.percentile:g})")
        g.add_argument("--samples", type=int, default=d.samples, metavar="N",
                       help=f"calibration samples drawn from the calibration split (default {d.samples}, "
                            "or all if fewer)")
        g.add_argument("--target", choices=TARGETS, default=d.target,
                       help="Q/DQ placement: as TensorRT fuses it (default), or for ONNX Runtime's integer CPU kernels")
        if self.plan:
            g.add_argument("--plan", default=None, metavar="PLAN.json",
                           help="precision plan: nodes it marks fp32/fp16 stay out of INT8 in the Q/DQ model")
        sm = g.add_mutually_exclusive_group()
        sm.add_argument("--smooth", type=float, default=d.smooth, metavar="ALPHA",
                        help=f"channel smoothing of the Q/DQ model (SmoothQuant's alpha in [0, 1], default "
                             f"{d.smooth:g}): evens out the channels of tensors an affine op (Mul/Add, "
                             "BatchNorm) produces, exactly")
        sm.add_argument("--no-smooth", dest="smooth", action="store_const", const=None,
                        help="no channel smoothing: the Q/DQ model keeps the model's own constants")
        g.add_argument("--no-bias-correction", dest="bias_correction", action="store_false",
                       help="keep the model's biases in the Q/DQ model (default: each INT8 Conv/Gemm's mean INT8 "
                            f"error per channel, measured layer by layer on up to {BIAS_PROBE_SAMPLES} calibration "
                            "samples, is subtracted from its bias; the cache is the same either way)")
        g.add_argument("--trt-version", type=int, default=d.trt_version, metavar="N",
                       help="version field of the cache header, e.g. 100900 for TensorRT 10.9")
        if self.evaluate:
            g.add_argument("--no-eval", dest="evaluate", action="store_false",
                           help="skip the held-out INT8 vs FP32 comparison")
        g.add_argument("--eval-samples", type=int, default=d.eval_samples, metavar="N",
                       help=f"held-out samples compared, from the eval split (default {d.eval_samples}, "
                            "or all if fewer)")

    @staticmethod
    def parse(args):
        """The :class:`calib.pipeline.CalibrationConfig` of the flags (with ``--batch-size``,
        ``--seed`` and ``--threads`` from the data and runtime groups); validated there."""
        from ..pipeline import CalibrationConfig

        values = {k: getattr(args, k) for k in CalibrationConfig.names() if hasattr(args, k)}
        renamed = hasattr(args, CalibrationArgs.ALGORITHM_DEST)
        if renamed:
            values["algorithm"] = getattr(args, CalibrationArgs.ALGORITHM_DEST)
        try:
            return CalibrationConfig().replace(**values)
        except ConfigError as exc:   # name the flag: --smooth, not smooth
            flag = "--calib-algorithm" if renamed and exc.option == "algorithm" else "--" + exc.option.replace("_", "-")
            raise ConfigError(flag, exc.problem) from None


class RayArgs(ArgGroup):
    """Ray: scale out over a Ray cluster (pip install 'calib[ray]')."""

    def __init__(self, what: str = "the statistics pass runs as Ray tasks over shards of the samples"):
        self.what = what

    def _add(self, g) -> None:
        g.add_argument("--ray", metavar="ADDRESS|auto", default=None,
                       help=f"{self.what}; auto joins the cluster RAY_ADDRESS or `ray start` names, else starts a "
                            "local one; host:port joins that cluster. Workers read the data from the same path")

    @staticmethod
    def parse(args) -> str | None:
        """The cluster address, ``"auto"``, or None (no Ray); an empty address is an error."""
        if args.ray is None:
            return None
        if not args.ray.strip():
            raise ConfigError("--ray", "expected auto or a cluster address host:port, got an empty string")
        return args.ray.strip()


__all__ = ["ArgGroup", "add_command", "positive_int", "ModelArgs", "DataArgs", "SplitArgs", "RuntimeArgs",
           "TaskArgs", "ShapesArgs", "Output", "OutputArgs", "JsonArgs", "print_json", "CalibrationArgs", "RayArgs"]
