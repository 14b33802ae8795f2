"""Hostile and unlucky inputs on the reading side (issue 19, items 1-3 and 6-8), from the outside.

Each case runs the CLI as a user does (``calib.cli.main`` in-process, or ``python -m calib`` in a
subprocess where memory, hangs or the printed warnings are the point) and checks the exit code,
the one ``error:``/``warning:`` line, that no traceback is printed and that nothing is left behind.
Memory bounds are enforced with ``RLIMIT_AS`` in the child, not measured in time.

Data: the bundled photographs and SqueezeNet (datasets/), small models built here with
``onnx.helper`` (a stand-in with Silero VAD's interface, an If model, a mask model), and the real
Silero VAD models from the PyPI wheel ``silero-vad`` (downloaded like the TensorRT wheels of
``test_tensorrt_conformance``; those tests are skipped when the registry cannot be reached).
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from calib.cache import read_cache
from calib.cli import main
from calib.datasets import open_dataset, selection, split_of
from calib.datasets.sources import list_files
from calib.model import Model
from test_calibrate_cli import CLASSES, IMAGES, MODEL, STEM, _one_error_line
from test_datasets import _documented_selection

REPO = Path(__file__).resolve().parents[1]
GiB = 1 << 30
pytestmark = pytest.mark.skipif(not (IMAGES.is_dir() and MODEL.is_file()), reason="bundled datasets/ missing")



def _summary_file(folder):
    """The one ``<stem>.summary.json`` calibrate wrote into *folder*."""
    (path,) = Path(folder).glob("*.summary.json")
    return path

def _photos(d: Path, n: int) -> list[str]:
    d.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in IMAGES.iterdir())[:n]
    for name in names:
        shutil.copy(IMAGES / name, d / name)
    return names


def _cli(capsys, *args) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err
    return rc, cap.out, cap.err


def _run(*args, limit: int | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m calib ARGS`` in a child whose address space is capped at *limit* bytes. The cap
    counts reserved address space, which grows with the thread count: a capped child runs 2 ONNX
    Runtime threads, 2 decode threads and 2 malloc arenas, whatever the machine's core count."""
    def cap():
        if limit:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    env = dict(os.environ)
    if limit:
        env.update(MALLOC_ARENA_MAX="2", CALIB_DATA_WORKERS="2")
        args = (*args, "--threads", "2")
    proc = subprocess.run([sys.executable, "-m", "calib", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, preexec_fn=cap, env=env)
    assert "Traceback" not in proc.stderr and "MemoryError" not in proc.stderr, proc.stderr[-3000:]
    return proc


def _script(path: Path, *lines: str) -> Path:
    """A loader script: ``import numpy as np`` and *lines*."""
    path.write_text("\n".join(["import numpy as np", *lines]) + "\n")
    return path


def _save(model: onnx.ModelProto, path: Path) -> Path:
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _const(name, value, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def tiny_model(path: Path, shape=("N", 4)) -> Path:
    """x [N, 4] -> MatMul -> Relu."""
    w = _const("W", np.random.default_rng(0).standard_normal((shape[-1], 3)))
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"]), helper.make_node("Relu", ["y"], ["z"])],
                          "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, [shape[0], 3])], [w])
    return _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)


def vad_standin(path: Path, head: str = "plain") -> Path:
    """A stand-in with Silero VAD's interface: ``input`` [N, 512], ``state`` [2, N, 128] (the batch
    on axis 1), ``sr`` an int64 scalar -> ``output`` [N, 1], ``stateN`` [2, N, 128]; a recurrent
    cell of MatMuls. *head* ``"if"`` computes the output inside an If on sr, as Silero's exports do."""
    rng = np.random.default_rng(0)
    init = [_const("W1", rng.standard_normal((512, 128)) / 22), _const("W2", rng.standard_normal((128, 128)) / 11),
            _const("W3", rng.standard_normal((128, 1)) / 11), _const("k16", 16000.0), _const("half", 0.5),
            _const("i0", 0, np.int64), _const("i1", 1, np.int64), _const("ax0", [0], np.int64),
            _const("k8", 8000, np.int64)]
    n = helper.make_node
    nodes = [n("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT), n("Div", ["srf", "k16"], ["scale"]),
             n("Mul", ["input", "scale"], ["xs"]), n("MatMul", ["xs", "W1"], ["x1"]), n("Relu", ["x1"], ["x2"]),
             n("Gather", ["state", "i0"], ["h"], axis=0), n("Gather", ["state", "i1"], ["c"], axis=0),
             n("MatMul", ["h", "W2"], ["hh"]), n("Add", ["x2", "hh"], ["z"]), n("Tanh", ["z"], ["hn"]),
             n("Add", ["c", "hn"], ["c2"]), n("Mul", ["c2", "half"], ["cn"]),
             n("Unsqueeze", ["hn", "ax0"], ["hn1"]), n("Unsqueeze", ["cn", "ax0"], ["cn1"]),
             n("Concat", ["hn1", "cn1"], ["stateN"], axis=0)]
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 1])
    if head == "plain":
        nodes += [n("MatMul", ["hn", "W3"], ["logit"]), n("Sigmoid", ["logit"], ["output"])]
    else:
        nodes += [n("MatMul", ["hn", "W3"], ["logit"]), n("Greater", ["sr", "k8"], ["wide"])]
        then = helper.make_graph([n("Sigmoid", ["logit"], ["p_then"])], "then", [], [
            helper.make_tensor_value_info("p_then", TensorProto.FLOAT, ["N", 1])])
        other = helper.make_graph([n("Neg", ["logit"], ["neg"]), n("Sigmoid", ["neg"], ["p_else"])], "else", [], [
            helper.make_tensor_value_info("p_else", TensorProto.FLOAT, ["N", 1])])
        nodes.append(n("If", ["wide"], ["output"], name="head_if", then_branch=then, else_branch=other))
    g = helper.make_graph(nodes, "vad_standin", [
        helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 512]),
        helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "N", 128]),
        helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [out, helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, "N", 128])], init)
    return _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)


def vad_data(n: int = 40, width: int = 512, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"input": (rng.standard_normal((n, width)) * 0.3).astype(np.float32),
            "state": (rng.standard_normal((2, n, 128)) * 0.3).astype(np.float32)}


# --------------------------------------------------------------------------- 1. resize amplification
def test_images_that_resizing_would_blow_up_are_skipped_in_bounded_memory(tmp_path):
    """A 100000x1 and a 1x30000 PNG (a few hundred bytes each) would become 25.6M x 256 and
    256 x 7.68M pixels: each is a corrupt sample, skipped and counted once, under 1 GiB."""
    data = tmp_path / "imgs"
    names = _photos(data, 12)
    Image.new("RGB", (100000, 1), (10, 20, 30)).save(data / "zz_wide.png")
    Image.new("RGB", (1, 30000), (10, 20, 30)).save(data / "zz_tall.png")
    assert (data / "zz_wide.png").stat().st_size < 1000
    out = tmp_path / "out"
    proc = _run("calibrate", "--model", MODEL, "--data", data, "--preset", "caffe", "--out", out, "--no-eval",
                limit=GiB)
    assert proc.returncode == 0, proc.stderr
    warns = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warns) == 1 and "more than the 16777216" in warns[0] and "zz_" in warns[0], proc.stderr
    side = json.loads((out / f"{STEM}.cache.json").read_text())
    used = [i for i in open_dataset(data, Model.load(MODEL), "caffe").split("calib").ids if not i.startswith("zz_")]
    assert side["data"]["ids"] == used and side["samples"] == len(used) and set(used) <= set(names)
    # --strict: an error naming the image, nothing written
    out2 = tmp_path / "strict"
    proc = _run("calibrate", "--model", MODEL, "--data", data, "--preset", "caffe", "--out", out2, "--strict",
                limit=GiB)
    assert proc.returncode == 2 and "would become" in _one_error_line(proc.stderr) and not out2.exists()


def test_absurd_sizes_from_flags_or_the_model_fail_before_any_work(tmp_path, capsys):
    data = tmp_path / "imgs"
    _photos(data, 2)
    for flag in ("99999999999", "99999999999x99999999999"):
        rc, _, err = _cli(capsys, "inspect", "--model", MODEL, "--data", data, "--preset", "caffe", "--resize", flag)
        assert rc == 2 and "more than the 16777216 pixels" in _one_error_line(err)
    # a model whose fixed input is 100000 x 100000: refused before an image is read
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "huge",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 100000, 100000])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 100000, 100000])])
    huge = _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "huge.onnx")
    out = tmp_path / "out"
    rc, _, err = _cli(capsys, "calibrate", "--model", huge, "--data", data, "--preset", "raw", "--out", out)
    line = _one_error_line(err)
    assert rc == 2 and "100000x100000" in line and "more than" in line and not out.exists()


# --------------------------------------------------------------------------- 2. links, loops, FIFOs
def test_link_loops_duplicates_and_fifos_in_a_data_folder(tmp_path):
    data = tmp_path / "imgs"
    names = _photos(data, 4)
    (data / "sub").mkdir()
    shutil.copy(IMAGES / names[0], data / "sub" / "copy.jpeg")       # another file (a copy): counted
    os.symlink(".", data / "self")                                    # a loop
    os.symlink("..", data / "sub" / "up")                             # another loop
    os.symlink("sub", data / "again")                                 # a real folder reached twice
    os.symlink(names[1], data / "alias.jpeg")                         # one file under two names
    os.link(data / names[2], data / "hard.jpeg")                      # the same file, hard-linked
    os.mkfifo(data / "pipe.jpeg")                                     # would block if opened
    os.symlink("nowhere.jpeg", data / "broken.jpeg")
    outside = tmp_path / "outside"
    _photos(outside, 1)
    os.symlink(outside, data / "ext")                                 # a folder outside: followed once
    images, arrays, others = list_files(data)
    # the hard link and its original are one file: the first name in sorted order stands for it
    assert images == sorted([*names[:2], "hard.jpeg", names[3], "sub/copy.jpeg", f"ext/{names[0]}"])
    assert not arrays and not others
    # through the CLI, in a child that would hang on the FIFO or loop forever on the links
    proc = _run("inspect", "--model", MODEL, "--data", data, "--preset", "caffe", "--json", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["fp32_run"]["samples"] == 6
    # a FIFO given as the data path is refused, not opened
    proc = _run("inspect", "--model", MODEL, "--data", data / "pipe.jpeg", "--preset", "caffe", timeout=60)
    assert proc.returncode == 2 and "not a regular file" in _one_error_line(proc.stderr)


# --------------------------------------------------------------------------- 3. claimed sample counts
def test_a_billion_claimed_hdf5_rows_cost_what_the_samples_used_cost(tmp_path):
    model = tiny_model(tmp_path / "tiny.onnx")
    with h5py.File(tmp_path / "huge.h5", "w") as f:      # 1.4 KB on disk: chunks never written
        f.create_dataset("x", shape=(10 ** 9, 4), dtype="f4", chunks=(1024, 4), fillvalue=0.5)
    assert (tmp_path / "huge.h5").stat().st_size < 10_000
    out = tmp_path / "out"
    proc = _run("calibrate", "--model", model, "--data", tmp_path / "huge.h5", "--samples", "16",
                "--eval-samples", "16", "--out", out, limit=GiB)
    assert proc.returncode == 0, proc.stderr
    s = json.loads(_summary_file(out).read_text())
    assert s["calibration_samples"] == 16 and s["held_out"]["samples"] == 16
    ids = json.loads((out / "tiny.cache.json").read_text())["data"]["ids"]
    assert len(set(ids)) == 16 and all(split_of(i) == "calib" and 0 <= int(i) < 10 ** 9 for i in ids)
    # --limit on such a file, and an .npz whose header claims a billion rows
    proc = _run("inspect", "--model", model, "--data", tmp_path / "huge.h5", "--limit", "20", "--split", "eval",
                "--json", limit=GiB)
    assert proc.returncode == 0 and 0 < json.loads(proc.stdout)["fp32_run"]["samples"] <= 20
    import io
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "<f4", "fortran_order": False, "shape": (10 ** 9, 4)})
    with zipfile.ZipFile(tmp_path / "lie.npz", "w") as z:
        z.writestr("x.npy", head.getvalue() + bytes(64))
    proc = _run("inspect", "--model", model, "--data", tmp_path / "lie.npz", limit=GiB)
    assert proc.returncode == 2 and "claims shape (1000000000, 4)" in _one_error_line(proc.stderr)


def test_large_sources_select_by_a_seeded_permutation(tmp_path, monkeypatch):
    """Above ``EXACT_MAX`` rows a limit takes the first rows of a seeded permutation that pass the
    split (lowered here to 1000 rows so that the rule can be checked against an independent
    reading of it); nothing walks every row."""
    import calib.datasets.dataset as dsmod

    n = 5000
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["x"] = np.arange(n * 4, dtype=np.float32).reshape(n, 4)
    model = tiny_model(tmp_path / "tiny.onnx")
    monkeypatch.setattr(dsmod, "EXACT_MAX", 1000)
    perm = selection.Permutation(n, 7)
    order = perm(np.arange(n))
    assert sorted(order.tolist()) == list(range(n))                    # a bijection of the rows
    assert order.tolist() != selection.Permutation(n, 8)(np.arange(n)).tolist()
    ds = open_dataset(tmp_path / "d.h5", model).split("calib")
    sub = ds.subset(30, 7)
    want = [int(r) for r in order if split_of(str(int(r))) == "calib"][:30]
    assert sub.ids == [str(r) for r in sorted(want)]
    rest = ds.rest(30, 7)
    assert len(rest) + len(sub) == len(ds) == sum(split_of(str(r)) == "calib" for r in range(n))
    assert set(rest.ids).isdisjoint(sub.ids)
    b = next(sub.batches(batch_size=30))
    assert b.ids == sub.ids and np.array_equal(b.feed["x"][:, 0], np.array(sorted(want)) * 4.0)
    # a slice of the lazy selection: positions in reading order, across the selection's chunks
    calib_rows = [str(r) for r in range(n) if split_of(str(r)) == "calib"]
    monkeypatch.setattr(selection, "CHUNK", 512)
    assert ds.slice(500, 1100).ids == calib_rows[500:1100]
    assert ds.slice(len(calib_rows) - 3, len(calib_rows) + 10).ids == calib_rows[-3:]
    assert ds.slice(len(calib_rows) + 1, len(calib_rows) + 5).ids == []
    # below the threshold the documented smallest-digest rule holds exactly (HDF5 ids as in test_datasets)
    monkeypatch.setattr(dsmod, "EXACT_MAX", 1 << 22)
    base = open_dataset(tmp_path / "d.h5", model)
    for steps in ([("split", "calib", 0.5), ("limit", 40, 3)], [("limit", 300, 1), ("split", "eval", 0.3)]):
        got = base
        for kind, a, b_ in steps:
            got = got.split(a, b_) if kind == "split" else got.subset(a, b_)
        assert got.ids == [str(i) for i in sorted(map(int, _documented_selection(base.ids, steps)))]


def test_large_npz_members_are_read_by_rows(tmp_path, monkeypatch):
    import calib.datasets.sources as src

    x = np.arange(600 * 4, dtype=np.float32).reshape(600, 4)
    np.savez(tmp_path / "s.npz", x=x)
    np.savez_compressed(tmp_path / "c.npz", x=x)
    monkeypatch.setattr(src, "NPZ_LOAD_MAX", 1000)       # both members count as large: read by rows
    model = tiny_model(tmp_path / "tiny.onnx")
    for name in ("s.npz", "c.npz"):
        ds = open_dataset(tmp_path / name, model, limit=50, seed=2)
        rows = np.array([int(i) for i in ds.ids])
        got = np.concatenate([b.feed["x"] for b in ds.batches(batch_size=16)])
        assert np.array_equal(got, x[rows])


# --------------------------------------------------------------------------- 6. file names that are not UTF-8
def test_file_names_that_are_not_utf8(tmp_path):
    data = os.fsencode(tmp_path / "imgs")
    os.mkdir(data)
    names = sorted(p.name for p in IMAGES.iterdir())[:12]
    raw = []
    for k, name in enumerate(names):
        b = name.encode() if k % 3 else name[:-5].encode() + b"_\xe9\xff.JPEG"    # Latin-1 bytes
        shutil.copy(IMAGES / name, os.path.join(data, b))
        raw.append(b)
    data = os.fsdecode(data)
    out = tmp_path / "out"
    proc = _run("calibrate", "--model", MODEL, "--data", data, "--preset", "caffe", "--classes", CLASSES,
                "--out", out)
    assert proc.returncode == 0, proc.stderr
    side = json.loads((out / f"{STEM}.cache.json").read_text())
    ids = {os.fsencode(i) for i in side["data"]["ids"]}     # the names on disk, byte for byte
    assert ids <= set(raw) and any(b"\xff" in i for i in ids)
    json.loads(_summary_file(out).read_text())
    proc = _run("inspect", "--model", MODEL, "--data", data, "--preset", "caffe", "--classes", CLASSES, "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["fp32_run"]["samples"] == 12
    rep = tmp_path / "report"
    proc = _run("evaluate", "--model", MODEL, "--candidate", out / f"{STEM}.int8.onnx", "--data", data,
                "--preset", "caffe", "--classes", CLASSES, "--out", rep, "--no-plots")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((rep / "report.json").read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- 7. batch axes, constants, control flow
def test_stateful_model_with_batch_axis_and_constant(tmp_path, capsys):
    model = vad_standin(tmp_path / "vad.onnx")
    np.savez(tmp_path / "vad.npz", **vad_data())
    # without the flags: one line saying what is assumed and which flag changes it
    rc, _, err = _cli(capsys, "calibrate", "--model", model, "--data", tmp_path / "vad.npz", "--out", tmp_path / "no")
    line = _one_error_line(err)
    assert rc == 2 and "axis 0 holds the samples unless --batch-axis" in line and not (tmp_path / "no").exists()
    out = tmp_path / "out"
    rc, so, err = _cli(capsys, "calibrate", "--model", model, "--data", tmp_path / "vad.npz", "--batch-axis",
                       "state=1", "--constant", "sr=16000", "--out", out)
    assert rc == 0, err
    scales = read_cache(out / "vad.cache").scales
    assert {"x2", "hn", "cn", "stateN", "output"} <= set(scales)
    side = json.loads((out / "vad.cache.json").read_text())
    assert side["data"]["batch_axes"] == {"state": 1} and side["data"]["constants"] == {"sr": 16000}
    # the same ranges through the Python API, and through a loader script that yields sr in every item
    import calib

    res = calib.calibrate(str(model), vad_data(), batch_axes={"state": 1}, constants={"sr": 16000}, write=False,
                          progress=False)
    assert res.scales == pytest.approx(scales, rel=1e-6)
    script = _script(tmp_path / "loader.py", f"D = dict(np.load({str(tmp_path / 'vad.npz')!r}))",
                     "def load_data(sr=16000):",
                     "    for k in range(0, 40, 8):",
                     "        yield {'input': D['input'][k:k + 8], 'state': D['state'][:, k:k + 8], 'sr': sr}",
                     "def changing():",
                     "    yield from load_data(16000)",
                     "    yield from load_data(8000)")
    out2 = tmp_path / "out2"
    rc, _, err = _cli(capsys, "calibrate", "--model", model, "--data-loader-script", f"{script}:load_data",
                      "--batch-axis", "state=1", "--out", out2)
    assert rc == 0, err
    assert read_cache(out2 / "vad.cache").scales == pytest.approx(scales, rel=1e-6)
    rc, _, err = _cli(capsys, "calibrate", "--model", model, "--data-loader-script", f"{script}:changing",
                      "--batch-axis", "state=1", "--out", tmp_path / "out3")
    assert rc == 2 and "'sr' takes one value for every sample" in _one_error_line(err)
    assert not (tmp_path / "out3").exists()


def test_control_flow_that_computes_is_refused_by_name(tmp_path, capsys):
    np.savez(tmp_path / "vad.npz", **vad_data())
    flags = ["--data", tmp_path / "vad.npz", "--batch-axis", "state=1", "--constant", "sr=16000"]
    model = vad_standin(tmp_path / "vad_if.onnx", head="if")
    rc, _, err = _cli(capsys, "calibrate", "--model", model, *flags, "--out", tmp_path / "out")
    line = _one_error_line(err)
    assert rc == 2 and "'head_if' (If)" in line and "Neg, Sigmoid" in line and not (tmp_path / "out").exists()
    # inspect runs any of them in FP32
    rc, so, err = _cli(capsys, "inspect", "--model", model, *flags, "--json")
    assert rc == 0 and json.loads(so)["fp32_run"]["samples"] == 40


@pytest.fixture(scope="module")
def silero(request):
    """The ONNX files of the real Silero VAD (PyPI wheel silero-vad 6.2.3, MIT), or skip."""
    from trt_api import apinames as A

    cache = A.default_cache_dir(Path(request.config.cache.mkdir("silero-vad")))
    try:
        wheel = A.fetch_wheel("silero-vad", "6.2.3", cache)
    except A.RegistryUnreachable as exc:
        pytest.skip(str(exc))
    d = Path(request.config.cache.mkdir("silero-vad-onnx"))
    with zipfile.ZipFile(wheel) as z:
        for name in ("silero_vad.onnx", "silero_vad_openvino_16k.onnx"):
            (d / name).write_bytes(z.read(f"silero_vad/data/{name}"))
    return d


@pytest.mark.network
def test_real_silero_vad(silero, tmp_path, capsys):
    np.savez(tmp_path / "vad.npz", **vad_data())
    m = silero / "silero_vad.onnx"
    assert [t.shape for t in Model.load(m).inputs] == [("?", "?"), (2, "?", 128), ()]
    rc, _, err = _cli(capsys, "inspect", "--model", m, "--data", tmp_path / "vad.npz")
    assert rc == 2 and "--batch-axis" in _one_error_line(err)
    flags = ["--data", tmp_path / "vad.npz", "--batch-axis", "state=1", "--constant", "sr=16000"]
    rc, so, err = _cli(capsys, "inspect", "--model", m, *flags, "--json")
    assert rc == 0 and json.loads(so)["fp32_run"]["samples"] == 40
    # all of it sits in one If on sr: refused by name, before any work
    rc, _, err = _cli(capsys, "calibrate", "--model", m, *flags, "--out", tmp_path / "out")
    assert rc == 2 and "'If_0' (If)" in _one_error_line(err) and not (tmp_path / "out").exists()
    # the export without control flow (batch fixed to 1, state [2, 1, 128]) calibrates
    np.savez(tmp_path / "vad576.npz", **vad_data(width=576))
    out = tmp_path / "ov"
    rc, so, err = _cli(capsys, "calibrate", "--model", silero / "silero_vad_openvino_16k.onnx", "--data",
                       tmp_path / "vad576.npz", "--batch-axis", "state=1", "--batch-size", "1", "--out", out)
    assert rc == 0, err
    s = json.loads(_summary_file(out).read_text())
    assert s["tensors"] > 50 and s["calibration_samples"] + s["held_out"]["samples"] == 40


# --------------------------------------------------------------------------- 8. smaller items
def test_float64_beyond_float32_is_caught_after_the_cast(tmp_path, capsys):
    model = tiny_model(tmp_path / "tiny.onnx")
    x = np.ones((20, 4))
    x[5, 2] = 1e300                                    # finite in float64, inf in float32
    np.savez(tmp_path / "big.npz", x=x)
    rc, _, err = _cli(capsys, "inspect", "--model", model, "--data", tmp_path / "big.npz")
    line = _one_error_line(err)
    assert rc == 2 and "sample 5" in line and "Inf after the cast from float64 to float32" in line


def test_hdf5_links_and_external_storage_need_a_flag(tmp_path, capsys):
    model = tiny_model(tmp_path / "tiny.onnx")
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(40, dtype=np.float32).tobytes())
    with h5py.File(tmp_path / "target.h5", "w") as f:
        f["x"] = np.ones((10, 4), np.float32)
    with h5py.File(tmp_path / "link.h5", "w") as f:
        f["x"] = h5py.ExternalLink(str(tmp_path / "target.h5"), "/x")
    with h5py.File(tmp_path / "ext.h5", "w") as f:
        f.create_dataset("x", shape=(10, 4), dtype="f4", external=[(str(secret), 0, 160)])
    with h5py.File(tmp_path / "vds.h5", "w") as f:
        layout = h5py.VirtualLayout(shape=(10, 4), dtype="f4")
        layout[:] = h5py.VirtualSource(str(tmp_path / "target.h5"), "x", shape=(10, 4))
        f.create_virtual_dataset("x", layout)
    for name, what in (("link.h5", "external link"), ("ext.h5", "external files"), ("vds.h5", "virtual dataset")):
        rc, _, err = _cli(capsys, "inspect", "--model", model, "--data", tmp_path / name)
        line = _one_error_line(err)
        assert rc == 2 and what in line and "--allow-external-data" in line, line
        rc, so, err = _cli(capsys, "inspect", "--model", model, "--data", tmp_path / name, "--allow-external-data",
                           "--json")
        assert rc == 0 and json.loads(so)["fp32_run"]["samples"] == 10, err
    labels = tmp_path / "labels.h5"
    with h5py.File(labels, "w") as f:
        f["x"] = np.ones((10, 4), np.float32)
        f["labels"] = h5py.ExternalLink(str(tmp_path / "target.h5"), "/x")
    rc, _, err = _cli(capsys, "inspect", "--model", model, "--data", labels)
    assert rc == 2 and "external link" in _one_error_line(err)


def test_labels_beyond_int64_or_the_class_count(tmp_path, capsys):
    data = tmp_path / "imgs"
    names = _photos(data, 4)
    base = ["inspect", "--model", MODEL, "--data", data, "--preset", "caffe"]
    lab = tmp_path / "labels.csv"
    lab.write_text(f"{names[0]},99999999999999999999\n" + "".join(f"{n},1\n" for n in names[1:]))
    rc, _, err = _cli(capsys, *base, "--labels", lab)
    assert rc == 2 and "beyond int64" in _one_error_line(err)
    lab.write_text("".join(f"{n},{k * 1000}\n" for k, n in enumerate(names)))   # SqueezeNet has 1000 classes
    rc, _, err = _cli(capsys, *base, "--labels", lab)
    assert rc == 2 and "label 3000 is beyond the model's 1000 classes" in _one_error_line(err)
    model = tiny_model(tmp_path / "tiny.onnx")
    np.savez(tmp_path / "u.npz", x=np.ones((6, 4), np.float32), labels=np.array([0, 1, 2, 2 ** 63 + 5, 0, 1],
                                                                                   dtype=np.uint64))
    rc, _, err = _cli(capsys, "inspect", "--model", model, "--data", tmp_path / "u.npz")
    assert rc == 2 and "9223372036854775813 is beyond int64" in _one_error_line(err)


def test_data_flags_loader_script_and_input_map(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["calibrate", "--help"])
    assert "imported and run as Python code" in " ".join(capsys.readouterr().out.split())
    model = tiny_model(tmp_path / "tiny.onnx")
    script = _script(tmp_path / "feeds.py", "def load_data():", "    rng = np.random.default_rng(0)",
                     "    for _ in range(5):", "        yield {'x': rng.standard_normal((4, 4)).astype(np.float32)}")
    out = tmp_path / "out"
    rc, _, err = _cli(capsys, "calibrate", "--model", model, "--data-loader-script", f"{script}:load_data",
                      "--out", out)
    assert rc == 0, err
    assert json.loads(_summary_file(out).read_text())["calibration_samples"] > 0
    # --input-map (old name --hdf5-map) maps .npz keys; a missing key suggests it
    np.savez(tmp_path / "k.npz", feats=np.ones((6, 4), np.float32), other=np.ones((6, 2), np.float32))
    rc, _, err = _cli(capsys, "inspect", "--model", model, "--data", tmp_path / "k.npz")
    assert rc == 2 and "--input-map x=ARRAY" in _one_error_line(err)
    for flag in ("--input-map", "--hdf5-map"):
        rc, so, err = _cli(capsys, "inspect", "--model", model, "--data", tmp_path / "k.npz", flag, "x=feats",
                           "--json")
        assert rc == 0 and json.loads(so)["fp32_run"]["samples"] == 6, err


def test_skipped_images_are_reported_once_and_not_counted_as_used(tmp_path):
    data = tmp_path / "imgs"
    names = _photos(data, 20)
    calib_ids = open_dataset(IMAGES, Model.load(MODEL), "caffe").split("calib").ids
    victim = next(n for n in names if n in calib_ids)
    (data / victim).write_bytes(b"not a JPEG")
    out = tmp_path / "out"
    proc = _run("calibrate", "--model", MODEL, "--data", data, "--preset", "caffe", "--out", out)
    assert proc.returncode == 0, proc.stderr
    warns = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warns) == 1 and victim in warns[0], proc.stderr
    used = sorted(set(calib_ids) & set(names) - {victim})
    side = json.loads((out / f"{STEM}.cache.json").read_text())
    s = json.loads(_summary_file(out).read_text())
    assert side["samples"] == s["calibration_samples"] == len(used) and side["data"]["ids"] == used
    assert f"on {len(used)} samples" in proc.stdout.splitlines()[0]
    assert f"measured on {len(used)} calibration samples" in proc.stdout


def test_mask_tensors_are_not_called_all_zeros(tmp_path, capsys):
    """A tensor of 0 and -inf (an attention mask) has no finite range: the summary says what it is."""
    n = helper.make_node
    g = helper.make_graph(
        [n("Greater", ["x", "zero"], ["pos"]), n("Where", ["pos", "zero", "minf"], ["mask"]),
         n("Add", ["x", "mask"], ["masked"]), n("Softmax", ["masked"], ["p"], axis=-1),
         n("Mul", ["x", "zero"], ["zeros"]), n("Add", ["p", "zeros"], ["y"])], "mask",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        [_const("zero", 0.0), _const("minf", -np.inf)])
    model = _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "mask.onnx")
    x = np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32)
    x[:, 0] = 1.0                                       # every row keeps one position
    np.savez(tmp_path / "x.npz", x=x)
    rc, so, err = _cli(capsys, "calibrate", "--model", model, "--data", tmp_path / "x.npz", "--out", tmp_path / "o",
                       "--no-eval")
    assert rc == 0, err
    lines = [ln for ln in so.splitlines() if ln.startswith("left out of the cache")]
    assert any("all zeros" in ln and "zeros" in ln.split(":")[-1] for ln in lines), so
    assert any("infinities" in ln and "mask" in ln.split(":")[-1] for ln in lines), so
    assert not any("all zeros" in ln and "mask" in ln.split(":")[-1].replace(",", " ").split() for ln in lines)
    s = json.loads(_summary_file(tmp_path / "o").read_text())
    assert "mask" in s["unranged_with_inf"] and "zeros" not in s["unranged_with_inf"]
