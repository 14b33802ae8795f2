"""The shared argument groups (calib.cli.args): one meaning per flag in every command, --json is
JSON on stdout, --out is a folder, and `--split` scores the samples calibrate held out.

The end-to-end cases run on the bundled data (datasets/: 48 ImageNet photographs and SqueezeNet 1.1).
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from calib.cli import _build_parser, main
from calib.cli.args import DataArgs, JsonArgs, Output, OutputArgs, RuntimeArgs, SplitArgs
from calib.datasets import split_of
from calib.errors import CalibError, DataError, PreprocessError
from calib.model import TensorInfo
from test_calibrate_cli import CLASSES, IMAGES, MODEL, STEM  # the bundled SqueezeNet and photos

DATA_FLAGS = ["--data", str(IMAGES), "--preset", "caffe", "--classes", str(CLASSES)]

# the shared flags each command (leaf parser) has; a command that loses or gains one fails here
SHARED = ("--model", "--data", "--split", "--threads", "--out", "--force", "--json")
EXPECTED = {
    "inspect": {"--model", "--data", "--split", "--threads", "--json"},
    "calibrate": {"--model", "--data", "--threads", "--out", "--force", "--json"},
    "cache show": {"--json"},
    "cache diff": {"--json"},
    "evaluate": {"--model", "--data", "--split", "--threads", "--out", "--force", "--json"},
    "search": {"--model", "--data", "--threads", "--out", "--force", "--json"},
    "build": {"--model", "--data", "--threads", "--out", "--force"},
    "run": {"--model", "--data", "--out", "--force", "--json"},
    "sweep": {"--model", "--data", "--threads", "--out", "--force", "--json"},
}
# the least each command parses
MINIMAL = {
    "inspect": ["--model", "m.onnx"],
    "calibrate": ["--model", "m.onnx"],
    "cache show": ["a.cache"],
    "cache diff": ["a.cache", "b.cache"],
    "evaluate": ["--model", "m.onnx", "--candidate", "c.onnx", "--out", "d"],
    "search": ["--model", "m.onnx"],
    "build": ["--model", "m.onnx", "--out", "d"],
    "run": ["--engine", "e.plan"],
    "sweep": ["--model", "m.onnx"],
}


def _subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            return dict(a.choices)
    return {}


def leaf_parsers() -> dict[str, argparse.ArgumentParser]:
    """Every command's parser, by its command line ("cache show")."""
    out = {}
    for name, p in _subparsers(_build_parser()).items():
        inner = _subparsers(p)
        out.update({f"{name} {k}": q for k, q in inner.items()} if inner else {name: p})
    return out


def _action(p: argparse.ArgumentParser, flag: str) -> argparse.Action | None:
    return next((a for a in p._actions if flag in a.option_strings), None)


def _meaning(a: argparse.Action) -> tuple:
    """What a flag does once parsed (its help and whether it is required may differ by command)."""
    return (type(a).__name__, tuple(a.option_strings), a.dest, a.nargs, a.const, a.default, a.type, a.choices)


def _parse(command: str, *extra: str) -> argparse.Namespace:
    return _build_parser().parse_args([*command.split(), *MINIMAL[command], *extra])


def test_every_command_has_its_shared_flags_with_one_meaning():
    parsers = leaf_parsers()
    assert set(parsers) == set(EXPECTED)
    meanings: dict[str, set] = {}
    for command, p in parsers.items():
        have = {f for f in SHARED if _action(p, f) is not None}
        assert have == EXPECTED[command], command
        for f in have:
            meanings.setdefault(f, set()).add(_meaning(_action(p, f)))
    assert {f: len(m) for f, m in meanings.items()} == dict.fromkeys(SHARED, 1), meanings
    # no command declares the flags of a group under another name or a second time
    for command, p in parsers.items():
        options = [s for a in p._actions for s in a.option_strings]
        assert len(options) == len(set(options)), command


@pytest.mark.parametrize("command", sorted(EXPECTED))
def test_shared_flags_parse_to_the_same_values(command, tmp_path):
    flags = EXPECTED[command]
    extra = (["--out", str(tmp_path / "o")] if "--out" in flags else []) + \
            (["--force"] if "--force" in flags else []) + (["--json"] if "--json" in flags else []) + \
            (["--threads", "3"] if "--threads" in flags else []) + (["--split", "eval"] if "--split" in flags else [])
    args = _parse(command, *extra)
    if "--out" in flags:
        assert OutputArgs().parse(args) == Output(tmp_path / "o", True)
    if "--json" in flags:
        assert JsonArgs.parse(args) is True
        assert JsonArgs.parse(_parse(command)) is False
    if "--threads" in flags:
        assert RuntimeArgs.parse(args) == 3
        assert RuntimeArgs.parse(_parse(command)) is None
        with pytest.raises(SystemExit):
            _parse(command, "--threads", "0")
    if "--split" in flags:
        assert SplitArgs.parse(args) == "eval"
        assert SplitArgs.parse(_parse(command)) is None     # default: all of the data
        with pytest.raises(SystemExit):
            _parse(command, "--split", "train")
    if "--out" in flags and "--out" not in MINIMAL[command]:
        assert OutputArgs().parse(_parse(command)) == Output(None, False)


def test_out_is_always_a_folder(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    ns = argparse.Namespace(out=str(f), force=False)
    with pytest.raises(CalibError, match="--out is a folder"):
        OutputArgs().parse(ns)
    # a name like the file a command writes (calib build --out m.plan of old) is refused, not made a folder
    ns = argparse.Namespace(out=str(tmp_path / "m.plan"), force=True)
    with pytest.raises(CalibError, match="not a file name"):
        OutputArgs(writes="the engine", not_suffixes=(".plan",)).parse(ns)
    assert not (tmp_path / "m.plan").exists()
    out = Output(tmp_path / "new", force=False)
    assert out.write_json("r.json", {"b": 1, "a": [1.5]}) == tmp_path / "new" / "r.json"
    assert json.loads((tmp_path / "new" / "r.json").read_text()) == {"a": [1.5], "b": 1}
    with pytest.raises(CalibError, match="already exists"):
        out.check("r.json")
    assert Output(tmp_path / "new", force=True).check("r.json") == [tmp_path / "new" / "r.json"]


def test_calibrate_refuses_out_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "out.txt"
    f.write_text("keep")
    assert main(["calibrate", "--model", str(MODEL), *DATA_FLAGS, "--out", str(f)]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --out is a folder") and "\n" not in err
    assert f.read_text() == "keep"


# ---------------------------------------------------------------------------
# data flags (moved from calib.datasets into the CLI layer)
# ---------------------------------------------------------------------------
RGB = [TensorInfo("input", ("N", 3, 8, 8), np.dtype(np.float32))]


def _images(root: Path, names) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for n in names:
        Image.new("RGB", (8, 8), (10, 20, 30)).save(root / n)
    return root


def _data_args(argv, required=True):
    p = argparse.ArgumentParser()
    DataArgs(required=required).add_to(p)
    return p.parse_args(argv)


def test_data_flags_build_the_dataset(tmp_path):
    d = _images(tmp_path / "d", ["n01440764_a.png", "n01443537_b.png", "n01484850_c.png"])
    classes = tmp_path / "classes.tsv"
    classes.write_text("0\tn01440764\ttench\n1\tn01443537\tgoldfish\n2\tn01484850\tshark\n")
    args = _data_args(["--data", str(d), "--preset", "caffe", "--resize", "10", "--crop", "8", "--interp", "bicubic",
                       "--mean", "1,2,3", "--classes", str(classes), "--limit", "2", "--seed", "5",
                       "--batch-size", "4"])
    assert args.batch_size == 4
    ds = DataArgs(required=True).parse(args, RGB)
    assert len(ds) == 2 and ds.has_labels
    pre = ds.preprocess
    assert (pre.name, pre.resize, pre.crop, pre.interp, pre.mean, pre.bgr) == ("caffe", 10, 8, "bicubic",
                                                                                (1.0, 2.0, 3.0), True)
    assert _data_args([]).batch_size == 16
    ds = DataArgs().parse(_data_args(["--data", str(d), "--scale", "0.5", "--std", "2"]), RGB)
    x = next(iter(ds.batches(batch_size=1))).feed["input"][0]
    assert np.allclose(x, np.array([10, 20, 30])[:, None, None] * 0.5 / 2)
    # optional data: None when absent; required data: one line
    assert DataArgs().parse(_data_args([]), RGB) is None
    with pytest.raises(DataError, match="no data"):
        DataArgs(required=True).parse(_data_args([]), RGB)


def test_data_flag_errors(tmp_path):
    import h5py

    d = _images(tmp_path / "d", ["a.png"])
    data = DataArgs(required=True)
    with pytest.raises(PreprocessError, match="--mean"):
        data.parse(_data_args(["--data", str(d), "--preset", "caffe", "--mean", "1,2"]), RGB)
    with pytest.raises(PreprocessError, match="unknown preset"):
        data.parse(_data_args(["--data", str(d), "--preset", "nope"]), RGB)
    with pytest.raises(DataError, match="not both"):
        data.parse(_data_args(["--data", "x", "--data-loader-script", "y.py:f"]), RGB)
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["input"] = np.zeros((1, 3, 8, 8), np.float32)
    with pytest.raises(DataError, match="--input-map"):
        data.parse(_data_args(["--data", str(tmp_path / "a.h5"), "--hdf5-map", "oops"]), RGB)
    with pytest.raises(SystemExit):
        _data_args(["--batch-size", "0"])


def test_split_after_limit_as_calibrate_splits(tmp_path):
    names = [f"img{i:02d}.png" for i in range(20)]
    d = _images(tmp_path / "d", names)
    args = _data_args(["--data", str(d), "--preset", "raw", "--limit", "12", "--seed", "3"])
    whole = DataArgs().parse(args, RGB)
    for part in ("calib", "eval"):
        got = DataArgs().parse(args, RGB, split=part)
        assert got.ids == [i for i in whole.ids if split_of(i) == part]
    assert len(whole) == 12
    one = _images(tmp_path / "one", ["a.png"])
    part = "calib" if split_of("a.png") == "eval" else "eval"
    with pytest.raises(DataError, match=f"none of the 1 samples falls in the '{part}' split"):
        DataArgs().parse(_data_args(["--data", str(one), "--preset", "raw"]), RGB, split=part)


# ---------------------------------------------------------------------------
# end to end on the bundled data: --json on stdout, evaluate --split and its warning
# ---------------------------------------------------------------------------
pytestmark_bundled = pytest.mark.skipif(not (IMAGES.is_dir() and MODEL.is_file()), reason="bundled datasets/ missing")
CALIB_SAMPLES = 8


def _run(capsys, argv):
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """One calibration of SqueezeNet on 8 samples of the bundled photos' calibration split."""
    out = tmp_path_factory.mktemp("calibrated")
    assert main(["calibrate", "--model", str(MODEL), *DATA_FLAGS, "--samples", str(CALIB_SAMPLES), "--no-eval",
                 "--out", str(out)]) == 0
    ids = json.loads((out / f"{STEM}.cache.json").read_text())["data"]["ids"]
    return {"out": out, "qdq": out / f"{STEM}.int8.onnx", "cache": out / f"{STEM}.cache", "ids": ids}


def _bundled_ids(part: str | None = None) -> list[str]:
    names = sorted(p.name for p in IMAGES.iterdir() if p.suffix == ".JPEG")
    return [n for n in names if part is None or split_of(n) == part]


@pytestmark_bundled
def test_sidecar_lists_the_calibration_ids(calibrated):
    ids = calibrated["ids"]
    assert len(ids) == len(set(ids)) == CALIB_SAMPLES
    assert set(ids) <= set(_bundled_ids("calib"))
    side = json.loads((calibrated["out"] / f"{STEM}.cache.json").read_text())["data"]
    assert side["ids_sha256"] == hashlib.sha256("\n".join(ids).encode()).hexdigest()


@pytestmark_bundled
@pytest.mark.parametrize("split", ["all", "eval", "calib"])
def test_evaluate_split_scores_that_split_and_warns_on_calibration_samples(calibrated, tmp_path, capsys, split):
    rc, out, err = _run(capsys, ["evaluate", "--model", str(MODEL), "--candidate", str(calibrated["qdq"]),
                                 *DATA_FLAGS, "--split", split, "--out", str(tmp_path / "r"), "--no-plots",
                                 "--resamples", "100", "--json"])
    assert rc == 0, err
    rep = json.loads(out)                               # stdout is the JSON report and nothing else
    assert rep == json.loads((tmp_path / "r" / "report.json").read_text())
    expect = _bundled_ids(None if split == "all" else split)
    assert rep["samples"] == rep["dataset"]["count"] == len(expect)
    assert rep["dataset"]["ids_sha256"] == hashlib.sha256("\n".join(expect).encode()).hexdigest()
    used = len(set(expect) & set(calibrated["ids"]))
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    if split == "eval":
        assert used == 0 and warnings == []
    else:
        assert used == CALIB_SAMPLES
        assert warnings == [(f"warning: {STEM}.int8: {used} of the {len(expect)} scored samples were used to "
                            f"calibrate it; pass --split eval to score only the samples calibration never saw")]


@pytestmark_bundled
def test_inspect_split_and_json(capsys):
    rc, out, err = _run(capsys, ["inspect", "--model", str(MODEL), *DATA_FLAGS, "--split", "eval", "--json",
                                 "--threads", "1"])
    assert rc == 0, err
    run = json.loads(out)["fp32_run"]
    assert run["samples"] == run["data"]["count"] == run["labelled"] == len(_bundled_ids("eval"))
    assert run["data"]["split"] == "eval"


@pytestmark_bundled
def test_json_is_valid_on_stdout_for_every_command(calibrated, tmp_path, capsys):
    docs = {}
    for name, argv in {
        "inspect": ["inspect", "--model", str(MODEL)],
        "calibrate": ["calibrate", "--model", str(MODEL), *DATA_FLAGS, "--limit", "12", "--no-eval",
                      "--out", str(tmp_path / "c")],
        "cache show": ["cache", "show", str(calibrated["cache"])],
        "cache diff": ["cache", "diff", str(calibrated["cache"]), str(calibrated["cache"])],
        "evaluate": ["evaluate", "--model", str(MODEL), "--candidate", str(calibrated["qdq"]), *DATA_FLAGS,
                     "--limit", "8", "--out", str(tmp_path / "e"), "--no-plots", "--resamples", "100"],
    }.items():
        rc, out, err = _run(capsys, [*argv, "--json"])
        assert rc == 0, (name, err)
        docs[name] = json.loads(out)
    assert docs["inspect"]["inputs"][0]["name"] == "data_0"
    assert docs["calibrate"]["schema"] == "calib-calibrate-summary"
    assert docs["calibrate"] == json.loads((tmp_path / "c" / f"{MODEL.stem}.summary.json").read_text())
    assert len(docs["cache show"]["tensors"]) > 0 and docs["cache diff"]["moved"] == []
    assert docs["evaluate"]["schema"] == "calib-report"
