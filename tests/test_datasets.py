"""Readers (calib.datasets): formats, conversions, labels, sampling, splits, errors.

Uses tiny generated images/arrays; the real-model accuracy checks are in test_datasets_accuracy.py.
"""
from __future__ import annotations

import io
import json
import shutil
import warnings

import numpy as np
import pytest
from PIL import Image

from calib.datasets import Batch, DataWarning, Preprocess, open_dataset, open_spec, parse_floats, preset_names, split_of
from calib.errors import (
    CalibError,
    CorruptSampleError,
    DataError,
    DataNotFoundError,
    EmptyDatasetError,
    InputMismatchError,
    LabelError,
    MissingDatasetKeyError,
    NonFiniteInputError,
    PreprocessError,
)
from calib.model import TensorInfo

F32 = np.dtype(np.float32)


def rgb_model(h=8, w=8, batch="N", layout="nchw", dtype=F32):
    shape = (batch, 3, h, w) if layout == "nchw" else (batch, h, w, 3)
    return [TensorInfo("input", shape, np.dtype(dtype))]


def dyn_model(c=3):
    return [TensorInfo("x", ("N", c, "H", "W"), F32)]


RAW = Preprocess(resize_mode="none")          # pixels as they are, 0..255
RAW_EXACT = Preprocess(resize_mode="exact")   # resize to the model size, 0..255


def save(path, arr_or_img, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    im = arr_or_img if isinstance(arr_or_img, Image.Image) else Image.fromarray(arr_or_img)
    im.save(path, **kw)
    return path


def solid(color, size=(8, 8), mode="RGB"):
    return Image.new(mode, size, color)


def first_sample(ds, name=None):
    b = next(iter(ds.batches(batch_size=1)))
    return b.feed[name or next(iter(b.feed))][0]


def make_folder(root, names, color=(10, 20, 30)):
    for n in names:
        save(root / n, solid(color))
    return root


# ---------------------------------------------------------------------------
# Preprocess: presets, serialisation, digest
# ---------------------------------------------------------------------------
def test_presets_have_the_documented_numbers():
    tv = Preprocess.preset("torchvision")
    assert (tv.resize, tv.crop, tv.interp, tv.bgr) == (256, 224, "bilinear", False)
    assert tv.scale == pytest.approx(1 / 255) and tv.mean == (0.485, 0.456, 0.406) and tv.std == (0.229, 0.224, 0.225)
    caffe = Preprocess.preset("caffe")
    assert caffe.bgr and caffe.scale == 1.0 and caffe.mean == (123.0, 117.0, 104.0) and caffe.std is None
    eff = Preprocess.preset("efficientnet-lite")
    assert (eff.interp, eff.resize, eff.crop, eff.mean, eff.std) == ("bicubic", 256, 224, (127.0,), (128.0,))
    rec = Preprocess.preset("paddleocr")
    assert rec.bgr and rec.resize_mode == "height" and rec.resize == 48
    det = Preprocess.preset("paddleocr-det")
    assert det.resize_mode == "multiple" and det.multiple == 32
    assert Preprocess.preset("yolo").resize_mode == "letterbox"
    assert Preprocess.preset("mnist").channels == 1
    assert {"torchvision", "caffe", "efficientnet-lite", "paddleocr", "yolo", "mnist"} <= set(preset_names())


def test_preset_overrides_and_bad_names():
    p = Preprocess.preset("caffe", resize=300, crop=256)
    assert (p.resize, p.crop, p.bgr) == (300, 256, True)
    with pytest.raises(PreprocessError, match="unknown preset 'cafe'.*caffe"):
        Preprocess.preset("cafe")
    with pytest.raises(PreprocessError, match="unknown preprocessing field.*resise"):
        Preprocess.preset("caffe", resise=3)
    with pytest.raises(PreprocessError, match="resize mode"):
        Preprocess(resize_mode="stretch")
    with pytest.raises(PreprocessError, match="std must not contain 0"):
        Preprocess(std=(1, 0, 1))
    with pytest.raises(PreprocessError, match="interpolation"):
        Preprocess(interp="cubic")


def test_preprocess_roundtrip_and_digest_stability():
    p = Preprocess.preset("efficientnet-lite")
    d = p.to_dict()
    assert json.loads(json.dumps(d)) == d
    q = Preprocess.from_dict(json.loads(json.dumps(d)))
    assert q == p and q.digest() == p.digest()
    # the preset name is provenance, not behaviour: same numbers -> same digest
    assert Preprocess(**{k: v for k, v in d.items() if k not in ("format", "version", "name")}).digest() == p.digest()
    # pinned: a change here means old calibration sidecars no longer match (bump FORMAT_VERSION on purpose)
    assert p.digest() == "6e35f3a6833867b95c6aa819ae1c435668b7f7e9bbdd43039edf3c01aaf2d384"
    assert Preprocess.preset("efficientnet-lite", interp="bilinear").digest() != p.digest()
    assert Preprocess.preset("caffe").digest() != Preprocess.preset("caffe", bgr=False).digest()
    with pytest.raises(PreprocessError, match="unknown preprocessing field"):
        Preprocess.from_dict({**d, "gamma": 2})


def test_parse_floats():
    assert parse_floats("0.485,0.456,0.406") == (0.485, 0.456, 0.406)
    assert parse_floats("127") == (127.0,)
    for bad in ("1,2", "a,b,c", "1;2;3", "nan,1,1", ""):
        with pytest.raises(PreprocessError, match="--mean"):
            parse_floats(bad)


# ---------------------------------------------------------------------------
# image conversions
# ---------------------------------------------------------------------------
def test_every_image_format_is_read(tmp_path):
    arr = np.zeros((6, 6, 3), np.uint8)
    arr[..., 0] = 200
    for ext, kw in [("jpg", {"quality": 95}), ("png", {}), ("bmp", {}), ("webp", {"lossless": True}),
                    ("tiff", {})]:
        save(tmp_path / "imgs" / f"a.{ext}", arr, **kw)
    ds = open_dataset(tmp_path / "imgs", dyn_model(), RAW)
    assert ds.ids == ["a.bmp", "a.jpg", "a.png", "a.tiff", "a.webp"]
    (b,) = list(ds.batches(batch_size=8))
    assert b.feed["x"].shape == (5, 3, 6, 6) and b.feed["x"].dtype == np.float32
    assert np.allclose(b.feed["x"][:, 0], 200, atol=3) and np.allclose(b.feed["x"][:, 1:], 0, atol=3)


def test_exif_orientation_is_honoured(tmp_path):
    # stored landscape 8 wide x 4 high, left half red; EXIF orientation 6 = rotate 90 CW to display
    arr = np.zeros((4, 8, 3), np.uint8)
    arr[:, :4] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    save(tmp_path / "d" / "rot.png", arr, exif=exif.tobytes())
    x = first_sample(open_dataset(tmp_path / "d", dyn_model(), RAW))
    assert x.shape == (3, 8, 4)                 # displayed portrait
    assert x[0, :4].mean() > 250 and x[0, 4:].mean() < 5    # red ends up on top


def test_grayscale_palette_rgba_and_16bit_conversions(tmp_path):
    d = tmp_path / "conv"
    save(d / "gray.png", solid(77, mode="L"))
    pal = solid(0, mode="P")
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.paste(1, (0, 0, 8, 8))
    save(d / "palette.png", pal)
    rgba = Image.new("RGBA", (8, 8), (0, 0, 255, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 8, 4))            # top half fully transparent
    save(d / "rgba.png", rgba)
    g16 = Image.fromarray(np.full((8, 8), 65535, np.uint16))
    g16.paste(32896, (0, 0, 8, 4))
    save(d / "gray16.png", g16)
    ds = open_dataset(d, dyn_model(), RAW)
    (b,) = list(ds.batches(batch_size=4))
    x = dict(zip(b.ids, b.feed["x"]))
    assert np.all(x["gray.png"] == 77)                                   # L -> RGB replicates
    assert np.allclose(x["palette.png"][:, 0, 0], (10, 200, 30))         # palette expanded
    assert np.all(x["rgba.png"][:, :4] == 255)                           # transparent -> white
    assert np.allclose(x["rgba.png"][:, 4:], np.array([0, 0, 255])[:, None, None])
    assert np.all(x["gray16.png"][:, 4:] == 255) and np.all(x["gray16.png"][:, :4] == 128)   # scaled, not clipped


def test_one_channel_model_gets_luminance(tmp_path):
    save(tmp_path / "d" / "red.png", solid((255, 0, 0)))
    model = [TensorInfo("g", (1, 1, 4, 4), F32)]
    x = first_sample(open_dataset(tmp_path / "d", model, "mnist"))
    assert x.shape == (1, 4, 4)
    assert np.allclose(x, 76 / 255, atol=2 / 255)      # ITU-R 601 luma of pure red, /255


def test_bgr_and_mean_std_in_rgb_order(tmp_path):
    save(tmp_path / "d" / "c.png", solid((200, 100, 50)))
    pre = Preprocess(resize_mode="none", bgr=True, mean=(10, 20, 30), std=(1, 2, 4))
    x = first_sample(open_dataset(tmp_path / "d", dyn_model(), pre))
    # output channel 0 is blue: (50 - 30) / 4 ; channel 2 is red: (200 - 10) / 1
    assert np.allclose(x[:, 0, 0], [(50 - 30) / 4, (100 - 20) / 2, (200 - 10) / 1])


def test_nhwc_layout_fixed_size_and_dtype(tmp_path):
    save(tmp_path / "d" / "a.png", np.full((20, 30, 3), 255, np.uint8))
    model = [TensorInfo("in", ("N", 10, 12, 3), F32)]
    x = first_sample(open_dataset(tmp_path / "d", model, RAW))
    assert x.shape == (10, 12, 3)                # fixed spatial size from the model
    model16 = [TensorInfo("in", (1, 3, 4, 4), np.dtype(np.float16))]
    b = next(iter(open_dataset(tmp_path / "d", model16, "raw").batches(batch_size=3)))
    assert b.feed["in"].dtype == np.float16


def test_resize_shorter_then_centre_crop_matches_torchvision_rule(tmp_path):
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, 38:42] = 255                          # a bright vertical bar in the middle
    save(tmp_path / "d" / "wide.png", arr)
    pre = Preprocess(resize=20, crop=16, interp="nearest")
    x = first_sample(open_dataset(tmp_path / "d", dyn_model(), pre))
    assert x.shape == (3, 16, 16)
    assert x[0, :, 7:9].min() == 255 and x[0, :, :5].max() == 0


def test_letterbox_keeps_aspect(tmp_path):
    save(tmp_path / "d" / "wide.png", np.full((10, 40, 3), 255, np.uint8))
    model = [TensorInfo("images", (1, 3, 32, 32), F32)]
    x = first_sample(open_dataset(tmp_path / "d", model, "yolo"))
    assert x.shape == (3, 32, 32)
    assert np.allclose(x[:, 0, 0], 114 / 255) and np.allclose(x[:, 16, 16], 1.0)


def test_dynamic_size_images_are_padded_per_batch(tmp_path):
    save(tmp_path / "d" / "short.png", np.full((20, 40, 3), 255, np.uint8))    # -> 48 x 96
    save(tmp_path / "d" / "long.png", np.full((20, 100, 3), 255, np.uint8))    # -> 48 x 240
    ds = open_dataset(tmp_path / "d", dyn_model(), "paddleocr")
    (b,) = list(ds.batches(batch_size=2))
    x = b.feed["x"]
    assert x.shape == (2, 3, 48, 240)
    i = b.ids.index("short.png")
    assert np.allclose(x[i, :, :, :96], 1.0) and np.all(x[i, :, :, 96:] == 0)   # zero padding on the right
    det = open_dataset(tmp_path / "d", dyn_model(), Preprocess.preset("paddleocr-det", resize=64))
    for b in det.batches(batch_size=1):
        assert b.feed["x"].shape[2] % 32 == 0 and b.feed["x"].shape[3] % 32 == 0
    cls_ = open_dataset(tmp_path / "d", dyn_model(), "paddleocr-cls")
    (b,) = list(cls_.batches(batch_size=2))
    assert b.feed["x"].shape == (2, 3, 48, 192)


def test_fixed_batch_model_still_gets_requested_batch_size(tmp_path):
    make_folder(tmp_path / "d", [f"{i}.png" for i in range(5)])
    ds = open_dataset(tmp_path / "d", rgb_model(batch=1), RAW_EXACT)
    assert [len(b) for b in ds.batches(batch_size=2)] == [2, 2, 1]
    assert [len(b) for b in ds.batches(batch_size=2, drop_last=True)] == [2, 2]


def test_threaded_reading_is_deterministic(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(23):
        save(tmp_path / "d" / f"{i:02d}.png", rng.integers(0, 255, (9 + i, 11, 3), dtype=np.uint8))
    outs = []
    for w in (1, 3):
        ds = open_dataset(tmp_path / "d", rgb_model(), RAW_EXACT, workers=w)
        outs.append([(b.ids, b.feed["input"]) for b in ds.batches(batch_size=4)])
    for (ia, xa), (ib, xb) in zip(*outs):
        assert ia == ib and np.array_equal(xa, xb)
    # stopping early shuts the pool down cleanly
    it = open_dataset(tmp_path / "d", rgb_model(), RAW_EXACT).batches(batch_size=2)
    next(it)
    it.close()


# ---------------------------------------------------------------------------
# labels
# ---------------------------------------------------------------------------
@pytest.fixture
def classes_tsv(tmp_path):
    p = tmp_path / "classes.tsv"
    p.write_text("0\tn01440764\ttench, Tinca tinca\n1\tn01443537\tgoldfish\n2\tn01484850\tgreat white shark\n")
    return p


def test_labels_from_file_name_prefix(tmp_path, classes_tsv):
    make_folder(tmp_path / "d", ["n01484850_great_white_shark.JPEG", "n01440764_tench.JPEG"])
    ds = open_dataset(tmp_path / "d", rgb_model(), RAW_EXACT, classes=classes_tsv)
    assert ds.has_labels
    (b,) = list(ds.batches(batch_size=4))
    assert b.ids == ["n01440764_tench.JPEG", "n01484850_great_white_shark.JPEG"]
    assert b.labels.tolist() == [0, 2] and b.labels.dtype == np.int64


def test_labels_from_subfolders(tmp_path, classes_tsv):
    make_folder(tmp_path / "d", ["zebra/1.png", "ant/2.png", "ant/sub/3.png", "moth/4.png"])
    ds = open_dataset(tmp_path / "d", rgb_model(), RAW_EXACT)
    (b,) = list(ds.batches(batch_size=8))
    assert b.ids == ["ant/2.png", "ant/sub/3.png", "moth/4.png", "zebra/1.png"]
    assert b.labels.tolist() == [0, 0, 1, 2]           # sorted folder names
    make_folder(tmp_path / "s", ["n01443537/a.png", "n01440764/b.png"])
    ds = open_dataset(tmp_path / "s", rgb_model(), RAW_EXACT, classes=classes_tsv)
    assert next(iter(ds.batches(batch_size=8))).labels.tolist() == [0, 1]


def test_plain_class_list_and_labels_file(tmp_path):
    make_folder(tmp_path / "d", ["a.png", "b.png", "sub/c.png"])
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\n")
    labels = tmp_path / "labels.csv"
    labels.write_text("file,label\na.png,1\nsub/c.png,dog\nb.png,0\n")
    ds = open_dataset(tmp_path / "d", rgb_model(), RAW_EXACT, classes=classes, labels=labels)
    assert next(iter(ds.batches(batch_size=8))).labels.tolist() == [1, 0, 1]
    tsv = tmp_path / "labels.tsv"
    tsv.write_text("a.png\t3\nb.png\t4\nc.png\t5\n")       # base names match too
    ds = open_dataset(tmp_path / "d", rgb_model(), RAW_EXACT, labels=tsv)
    assert next(iter(ds.batches(batch_size=8))).labels.tolist() == [3, 4, 5]


def test_missing_labels(tmp_path, classes_tsv):
    make_folder(tmp_path / "d", ["n01440764_a.png", "n99999999_b.png"])
    with pytest.warns(DataWarning, match="1 of 2 images have no label.*n99999999_b.png"):
        ds = open_dataset(tmp_path / "d", rgb_model(), RAW_EXACT, classes=classes_tsv)
    assert next(iter(ds.batches(batch_size=8))).labels.tolist() == [0, -1]
    with pytest.raises(LabelError, match="no label"):
        open_dataset(tmp_path / "d", rgb_model(), RAW_EXACT, classes=classes_tsv, strict=True)
    make_folder(tmp_path / "e", ["x_1.png", "y_2.png"])
    with pytest.raises(LabelError, match="no image got a label"):
        open_dataset(tmp_path / "e", rgb_model(), RAW_EXACT, classes=classes_tsv)
    bad = tmp_path / "bad.csv"
    bad.write_text("a.png,1\nb.png,notaclass\n")
    with pytest.raises(LabelError, match="line 2.*notaclass"):
        open_dataset(tmp_path / "e", rgb_model(), RAW_EXACT, labels=bad)
    with pytest.raises(DataNotFoundError, match="classes file not found"):
        open_dataset(tmp_path / "e", rgb_model(), RAW_EXACT, classes=tmp_path / "nope.tsv")


def test_no_labels_for_flat_folder_without_classes(tmp_path):
    make_folder(tmp_path / "d", ["a.png"])
    ds = open_dataset(tmp_path / "d", rgb_model(), RAW_EXACT)
    assert not ds.has_labels and next(iter(ds.batches())).labels is None


# ---------------------------------------------------------------------------
# corrupt files
# ---------------------------------------------------------------------------
def test_corrupt_images_are_skipped_with_one_warning(tmp_path):
    d = make_folder(tmp_path / "d", [f"ok{i}.png" for i in range(5)])
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (d / "truncated.jpg").write_bytes(buf.getvalue()[:300])
    (d / "notanimage.png").write_bytes(b"this is text, not a PNG")
    ds = open_dataset(d, rgb_model(), RAW_EXACT)
    assert len(ds) == 7
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        batches = list(ds.batches(batch_size=4))
    data_warnings = [w for w in rec if issubclass(w.category, DataWarning)]
    assert len(data_warnings) == 1 and "skipped 2 of 7" in str(data_warnings[0].message)
    assert [len(b) for b in batches] == [4, 1]
    assert sorted(s for s, _ in ds.skipped) == ["notanimage.png", "truncated.jpg"]
    assert ds.describe()["skipped"] == 2
    with pytest.raises(CorruptSampleError, match="notanimage.png"):
        list(open_dataset(d, rgb_model(), RAW_EXACT, strict=True).batches(batch_size=4))


def test_all_images_corrupt(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(EmptyDatasetError, match="none of the 1 images"):
        list(open_dataset(tmp_path / "d", rgb_model(), RAW_EXACT).batches())


# ---------------------------------------------------------------------------
# bad inputs: clear one-line errors, nothing written
# ---------------------------------------------------------------------------
def _bad_cases(tmp_path):
    import h5py

    (tmp_path / "empty").mkdir()
    make_folder(tmp_path / "txt", [])
    (tmp_path / "txt").mkdir(exist_ok=True)
    (tmp_path / "txt" / "notes.txt").write_text("hi")
    np.save(tmp_path / "wrong_shape.npy", np.zeros((4, 3, 5, 5), np.float32))
    np.save(tmp_path / "wrong_rank.npy", np.zeros((4, 5), np.float32))
    np.save(tmp_path / "floats.npy", np.zeros((4, 3), np.float32))
    nan = np.zeros((6, 3, 8, 8), np.float32)
    nan[4, 1, 2, 3] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    inf = np.zeros((3, 3, 8, 8), np.float32)
    inf[1, 0, 0, 0] = np.inf
    np.savez(tmp_path / "inf.npz", input=inf)
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["images"] = np.zeros((2, 3, 8, 8), np.float32)
        f["extra/deep"] = np.zeros(3)
    make_folder(tmp_path / "imgs", ["a.png"])
    (tmp_path / "weird.xyz").write_text("?")
    int_model = [TensorInfo("ids", ("N", 3), np.dtype(np.int64))]
    two_inputs = [TensorInfo("a", ("N", 3, 8, 8), F32), TensorInfo("b", ("N", 4), F32)]
    return [
        (tmp_path / "missing", rgb_model(), {}, DataNotFoundError, "data path not found: .*missing"),
        (tmp_path / "empty", rgb_model(), {}, EmptyDatasetError, "data folder .*empty is empty"),
        (tmp_path / "txt", rgb_model(), {}, EmptyDatasetError, r"no images \(.*\.jpg.*notes.txt"),
        (tmp_path / "wrong_shape.npy", rgb_model(), {}, InputMismatchError,
         r"shape \(3, 5, 5\) do not fit model input 'input' \(N, 3, 8, 8\)"),
        (tmp_path / "wrong_rank.npy", rgb_model(), {}, InputMismatchError, r"\(4, 5\) cannot feed .*\(N, 3, 8, 8\)"),
        (tmp_path / "floats.npy", int_model, {}, InputMismatchError, "dtype float32 cannot feed .*'ids'.*int64"),
        (tmp_path / "nan.npy", rgb_model(), {"iterate": True}, NonFiniteInputError,
         "sample 4: input 'input' contains NaN"),
        (tmp_path / "inf.npz", rgb_model(), {"iterate": True}, NonFiniteInputError, "sample 1: .*Inf"),
        (tmp_path / "objects.npy", rgb_model(), {}, DataError, "pickle"),
        (tmp_path / "other.h5", rgb_model(), {}, MissingDatasetKeyError,
         "no dataset 'input' .*it has: extra/deep, images"),
        (tmp_path / "other.h5", rgb_model(), {"hdf5_map": "input=imgs"}, MissingDatasetKeyError, "'imgs'"),
        (tmp_path / "imgs", rgb_model(h=224, w=224), {"preprocess": Preprocess(resize=256, crop=256)},
         InputMismatchError, "crop 256x256 .*'input' .*needs 224x224"),
        (tmp_path / "imgs", rgb_model(), {"preprocess": None}, PreprocessError, "need preprocessing.*caffe"),
        (tmp_path / "imgs", two_inputs, {}, InputMismatchError, "images feed one input but the model has 2"),
        (tmp_path / "imgs", rgb_model(), {"preprocess": "imagenett"}, PreprocessError, "unknown preset 'imagenett'"),
        (tmp_path / "imgs", rgb_model(), {"split": "test"}, DataError, "split must be 'calib' or 'eval'"),
        (tmp_path / "imgs", rgb_model(), {"limit": 0}, DataError, "limit must be >= 1"),
        (tmp_path / "weird.xyz", rgb_model(), {}, DataError, "unsupported data file"),
    ]


def test_bad_inputs_raise_specific_one_line_errors_and_write_nothing(tmp_path, snapshot):
    cases = _bad_cases(tmp_path)
    before = snapshot(tmp_path)
    for path, model, kw, exc, pattern in cases:
        kw = dict(kw)
        iterate = kw.pop("iterate", False)
        if path.is_dir() or path.suffix == ".png":
            kw.setdefault("preprocess", RAW_EXACT)
        with pytest.raises(exc, match=pattern) as info:
            ds = open_dataset(path, model, **kw)
            if iterate:
                list(ds.batches(batch_size=4))
        msg = str(info.value)
        assert "\n" not in msg and isinstance(info.value, CalibError), (path, msg)
    assert snapshot(tmp_path) == before


def test_split_with_no_samples_left(tmp_path):
    make_folder(tmp_path / "d", ["only.png"])
    part = split_of("only.png")
    other = "calib" if part == "eval" else "eval"
    assert len(open_dataset(tmp_path / "d", rgb_model(), RAW_EXACT, split=part)) == 1
    with pytest.raises(EmptyDatasetError, match=f"'{other}' split"):
        open_dataset(tmp_path / "d", rgb_model(), RAW_EXACT, split=other)


# ---------------------------------------------------------------------------
# sampling and splits
# ---------------------------------------------------------------------------
NAMES = [f"img_{i:03d}.png" for i in range(60)]


def test_split_is_disjoint_complete_and_stable(tmp_path):
    d = make_folder(tmp_path / "d", NAMES)
    ds = open_dataset(d, rgb_model(), RAW_EXACT)
    cal, ev = ds.split("calib"), ds.split("eval")
    assert set(cal.ids).isdisjoint(ev.ids) and sorted(cal.ids + ev.ids) == sorted(ds.ids)
    assert 15 <= len(ev) <= 45                              # ~ half
    assert all(split_of(i) == "eval" for i in ev.ids)
    # another run, another location, more files: every sample keeps its part
    d2 = tmp_path / "moved"
    shutil.copytree(d, d2)
    make_folder(d2, [f"new_{i}.png" for i in range(10)])
    ev2 = open_dataset(d2, rgb_model(), RAW_EXACT, split="eval")
    assert set(ev.ids) <= set(ev2.ids) and set(ev2.ids) - set(ev.ids) <= {f"new_{i}.png" for i in range(10)}
    # fraction
    small = ds.split("eval", eval_fraction=0.2)
    assert set(small.ids) <= set(ev.ids) and len(small) < len(ev)
    with pytest.raises(DataError, match="eval_fraction"):
        ds.split("eval", eval_fraction=1.5)


def test_limit_seed_is_independent_of_file_system_order(tmp_path):
    a = make_folder(tmp_path / "a", NAMES)
    b = make_folder(tmp_path / "b", list(reversed(NAMES)))      # created in the opposite order
    sa = open_dataset(a, rgb_model(), RAW_EXACT, limit=10, seed=3).ids
    sb = open_dataset(b, rgb_model(), RAW_EXACT, limit=10, seed=3).ids
    assert sa == sb and len(sa) == 10 and sa == sorted(sa)
    assert open_dataset(a, rgb_model(), RAW_EXACT, limit=10, seed=3).ids == sa          # repeatable
    assert open_dataset(a, rgb_model(), RAW_EXACT, limit=10, seed=4).ids != sa          # seed matters
    make_folder(a, ["extra.png"])
    grown = open_dataset(a, rgb_model(), RAW_EXACT, limit=10, seed=3).ids
    assert len(set(grown) & set(sa)) >= 9                       # adding a file swaps at most one
    # limit after split: N samples of the calib part; subset() draws from the dataset itself
    cal = open_dataset(b, rgb_model(), RAW_EXACT, split="calib", limit=7, seed=3)
    assert len(cal) == 7 and all(split_of(i) == "calib" for i in cal.ids)
    full = open_dataset(b, rgb_model(), RAW_EXACT)
    assert set(full.subset(limit=5, seed=1).ids) <= set(full.ids)
    assert open_dataset(a, rgb_model(), RAW_EXACT, limit=1000).ids == sorted(NAMES + ["extra.png"])


def test_describe_is_json_provenance(tmp_path):
    make_folder(tmp_path / "d", NAMES[:6])
    ds = open_dataset(tmp_path / "d", rgb_model(224, 224), "torchvision", limit=4, seed=2, split="calib")
    d = json.loads(json.dumps(ds.describe()))
    assert d["kind"] == "images" and d["count"] == len(ds) and d["total"] == 6
    assert d["seed"] == 2 and d["limit"] == 4 and d["split"] == "calib"
    assert d["preprocess"]["name"] == "torchvision"
    assert d["preprocess_digest"] == Preprocess.preset("torchvision").digest()
    assert d["skipped"] is None
    list(ds.batches())
    assert ds.describe()["skipped"] == 0


def _documented_selection(ids, steps):
    """The module docstring's rules, written out independently: ``("split", part, fraction)`` keeps the
    ids whose ``sha256("calib-split\\0<id>")`` falls in that part; ``("limit", n, seed)`` keeps the n
    ids with the smallest ``sha256("<seed>\\0<id>")``. Ids stay in sorted order."""
    import hashlib

    def h(text):
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    kept = sorted(ids)
    for kind, a, b in steps:
        if kind == "split":
            kept = [i for i in kept if ("eval" if int(h("calib-split\0" + i)[:16], 16) / 2 ** 64 < b else "calib") == a]
        else:
            chosen = set(sorted(kept, key=lambda i: h(f"{b}\0{i}"))[:a])
            kept = [i for i in kept if i in chosen]
    return kept


def test_split_and_subset_compose_on_the_real_image_folder(imagenet_dir, monkeypatch):
    import hashlib

    import calib.datasets.dataset as dsmod

    base = open_dataset(imagenet_dir, rgb_model(), RAW_EXACT)
    assert len(base) == 500
    chains = [
        [("limit", 40, 3), ("split", "calib", 0.5)],                       # split of a subset
        [("split", "calib", 0.5), ("limit", 40, 3)],                       # subset of a split
        [("limit", 120, 5), ("split", "eval", 0.5), ("limit", 30, 9)],
        [("split", "eval", 0.5), ("limit", 100, 0), ("split", "calib", 0.3)],
        [("limit", 20, 1), ("limit", 60, 2)],                              # a larger limit keeps all
    ]
    for steps in chains:
        ds = base
        for kind, a, b in steps:
            ds = ds.split(a, b) if kind == "split" else ds.subset(a, b)
        assert ds.ids == _documented_selection(base.ids, steps), steps
        assert ds.describe()["selection"] == [list(st) for st in steps]
    # the same ids as before derivation composed on the parent's ids (digests taken then)
    sub_split = base.subset(40, 3).split("calib")
    split_sub = base.split("calib").subset(40, 3)
    assert (len(sub_split), len(split_sub)) == (20, 40)
    assert sub_split.describe()["ids_sha256"] == "4e5b1a583a177eb6673fa830aa71775d3d26d30f0d3fbde469af5a4371f3b9be"
    assert split_sub.describe()["ids_sha256"] == "5c4ba70ed6afb94b29371e12293bf3f0a31ad436bd0c37cc4f076882e613b948"
    assert hashlib.sha256("\n".join(split_sub.ids).encode()).hexdigest() == split_sub.describe()["ids_sha256"]
    # deriving works on the parent's selected ids only: no earlier step is run again
    calls = {"split": 0, "limit": 0}
    hashed = dsmod.selection.prefix_keys

    def counting(prefix, ids):      # ids hashed by the split rule and by the seeded choice
        calls["split" if prefix == dsmod.selection.SPLIT_PREFIX else "limit"] += len(ids)
        return hashed(prefix, ids)

    monkeypatch.setattr(dsmod.selection, "prefix_keys", counting)
    base = open_dataset(imagenet_dir, rgb_model(), RAW_EXACT)     # a fresh source: no split keys kept yet
    cal = base.split("calib")
    assert calls == {"split": 500, "limit": 0}
    cal.subset(40, 3).subset(10, 4)
    assert calls == {"split": 500, "limit": len(cal) + 40}


def test_derived_streaming_selection_is_unchanged():
    feeds = [{"input": np.full((3, 3, 8, 8), k, np.float32)} for k in range(7)]     # 21 samples, ids "0".."20"
    ds = open_dataset(feeds, rgb_model())
    ev_first5 = [i for i in map(str, range(21)) if split_of(i) == "eval"][:5]
    assert ds.split("eval").subset(5).ids == ev_first5                # iterables: limit keeps the first N
    assert [i for b in ds.split("eval").subset(5).batches(2) for i in b.ids] == ev_first5
    assert ds.subset(9).split("calib").ids == [str(i) for i in range(9) if split_of(str(i)) == "calib"]


def test_rest_is_the_complement_of_subset(imagenet_dir):
    base = open_dataset(imagenet_dir, rgb_model(), RAW_EXACT).split("calib")
    for n, seed in ((64, 0), (64, 7), (1, 3)):
        sel, rest = base.subset(n, seed), base.rest(n, seed)
        assert len(sel) == n and len(rest) == len(base) - n
        assert set(sel.ids).isdisjoint(rest.ids) and sorted(sel.ids + rest.ids) == base.ids
        assert rest.ids == sorted(rest.ids)
        assert rest.describe()["selection"][-1] == ["rest", n, seed]
    assert base.rest(64, 0).ids != base.rest(64, 7).ids                 # the seed picks what is left out
    assert base.rest(0, 0).ids == base.ids and len(base.rest(10 ** 6, 0)) == 0
    with pytest.raises(DataError, match="limit"):
        base.rest(-1)
    # streaming: subset keeps the first N read, rest the ones after them, in reading order
    feeds = [{"input": np.full((3, 3, 8, 8), k, np.float32)} for k in range(7)]     # ids "0".."20"
    ds = open_dataset(feeds, rgb_model()).split("eval")
    ev = [i for i in map(str, range(21)) if split_of(i) == "eval"]
    assert ds.subset(4).ids == ev[:4] and ds.rest(4).ids == ev[4:]
    assert [i for b in ds.rest(4).batches(2) for i in b.ids] == ev[4:]
    assert [float(b.feed["input"][j, 0, 0, 0]) for b in ds.rest(4).batches(3) for j in range(len(b.ids))] == \
        [float(int(i) // 3) for i in ev[4:]]


def test_slices_are_whole_batches_of_the_reading_order(imagenet_dir):
    base = open_dataset(imagenet_dir, rgb_model(), RAW_EXACT, limit=30).split("calib")
    cuts = [base.slice(0, 8), base.slice(8, 16), base.slice(16, 10 ** 6)]
    assert [i for c in cuts for i in c.ids] == base.ids and len(cuts[0]) == 8
    assert [b.ids for c in cuts for b in c.batches(4)] == [b.ids for b in base.batches(4)]
    assert base.slice(5, 5).ids == [] and cuts[1].describe()["selection"][-1] == ["slice", 8, 16]
    with pytest.raises(DataError, match="slice"):
        base.slice(3, 2)
    # streaming: positions in reading order, after the steps before
    feeds = [{"input": np.full((3, 3, 8, 8), k, np.float32)} for k in range(7)]     # ids "0".."20"
    ds = open_dataset(feeds, rgb_model()).split("calib")
    cal = [i for i in map(str, range(21)) if split_of(i) == "calib"]
    assert ds.slice(2, 5).ids == cal[2:5] and [i for b in ds.slice(2, 5).batches(2) for i in b.ids] == cal[2:5]
    assert ds.slice(3, 100).ids == cal[3:]


def test_spec_reopens_the_same_samples_anywhere(imagenet_dir, imagenet_classes, tmp_path, monkeypatch):
    """A dataset opened from relative paths describes itself with absolute ones; the spec survives
    JSON and reopens the same ids, labels and pixels from another working directory."""
    monkeypatch.chdir(imagenet_dir.parent)
    ds = open_dataset(imagenet_dir.name, rgb_model(), RAW_EXACT, limit=40, seed=3,
                      classes=imagenet_classes.name).split("calib").subset(6, 1).slice(1, 5)
    spec = json.loads(json.dumps(ds.spec()))
    assert spec["source"] == str(imagenet_dir) and spec["classes"] == str(imagenet_classes)
    assert [step[0] for step in spec["selection"]] == ["limit", "split", "limit", "slice"]
    (b1,) = list(ds.batches(8))
    monkeypatch.chdir(tmp_path)
    back = open_spec(spec, rgb_model())
    assert back.ids == ds.ids and len(back) == 4
    (b2,) = list(back.batches(8))
    assert b1.labels.tolist() == b2.labels.tolist() and np.array_equal(b1.feed["input"], b2.feed["input"])
    assert back.describe()["preprocess_digest"] == ds.describe()["preprocess_digest"]
    # the files at the path changed (or another machine sees others): refused
    with pytest.raises(DataError, match="hold other samples here"):
        open_spec(dict(spec, ids_sha256="0" * 64), rgb_model())
    with pytest.raises(DataError, match="calib-data-spec"):
        open_spec({"source": str(imagenet_dir)}, rgb_model())
    with pytest.raises(DataError, match="unknown selection step"):
        open_spec(dict(spec, selection=[["shuffle", 1]], ids_sha256=None), rgb_model())


def test_spec_of_arrays_scripts_and_data_in_memory(tmp_path):
    import h5py

    img, meta, y = _two_input_data()
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["image"], f["grp/side"] = img, meta
    ds = open_dataset(tmp_path / "d.h5", TWO, hdf5_map="meta=grp/side", limit=6, seed=2)
    back = open_spec(ds.spec(), TWO)
    assert back.ids == ds.ids and np.array_equal(next(back.batches(6)).feed["meta"], next(ds.batches(6)).feed["meta"])
    script = tmp_path / "loader.py"
    script.write_text("import numpy as np\n"
                      "def load_data():\n"
                      "    for i in range(5):\n"
                      "        yield {'image': np.full((1, 3, 4, 4), i, np.float32), 'meta': np.zeros((1, 2))}\n")
    ds = open_dataset(f"{script}:load_data", TWO).slice(1, 4)
    assert ds.spec()["source"] == f"{script}:load_data" and ds.spec()["ids_sha256"] is None
    assert next(open_spec(ds.spec(), TWO).batches(5)).feed["image"][:, 0, 0, 0].tolist() == [1, 2, 3]
    for data in (img, {"image": img, "meta": meta}, [{"image": img, "meta": meta}]):
        with pytest.raises(DataError, match="held in memory"):
            open_dataset(data, TWO if isinstance(data, (dict, list)) else [TWO[0]]).spec()
    with pytest.raises(DataError, match="held in memory"):
        open_dataset(tmp_path / "d.h5", TWO, hdf5_map="meta=grp/side", labels=y).spec()


# ---------------------------------------------------------------------------
# HDF5, NumPy, iterables, loader scripts
# ---------------------------------------------------------------------------
TWO = [TensorInfo("image", ("N", 3, 4, 4), F32), TensorInfo("meta", ("N", 2), F32)]


def _two_input_data(n=10):
    rng = np.random.default_rng(0)
    return (rng.standard_normal((n, 3, 4, 4)).astype(np.float32), rng.standard_normal((n, 2)).astype(np.float64),
            np.arange(n, dtype=np.int64) % 3)


def test_hdf5_multi_input_map_labels_and_subset(tmp_path):
    import h5py

    img, meta, y = _two_input_data()
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f.create_dataset("image", data=img, chunks=(2, 3, 4, 4))
        f["grp/side"] = meta
        f["labels"] = y
    ds = open_dataset(tmp_path / "d.h5", TWO, hdf5_map="meta=grp/side")
    assert len(ds) == 10 and ds.has_labels and ds.kind == "hdf5"
    bs = list(ds.batches(batch_size=4))
    assert [len(b) for b in bs] == [4, 4, 2]
    assert np.array_equal(np.concatenate([b.feed["image"] for b in bs]), img)
    assert bs[0].feed["meta"].dtype == np.float32       # cast to the model dtype
    assert np.concatenate([b.labels for b in bs]).tolist() == y.tolist()
    assert bs[1].ids == ["4", "5", "6", "7"]
    sub = open_dataset(tmp_path / "d.h5", TWO, hdf5_map={"meta": "grp/side"}, limit=3, seed=1)
    (b,) = list(sub.batches(batch_size=8))
    idx = [int(i) for i in b.ids]
    assert np.array_equal(b.feed["image"], img[idx]) and b.labels.tolist() == y[idx].tolist()
    with pytest.raises(MissingDatasetKeyError, match="no dataset 'meta'.*grp/side, image, labels"):
        open_dataset(tmp_path / "d.h5", TWO)


def test_hdf5_is_read_in_slices(tmp_path, monkeypatch):
    import h5py

    img, meta, _ = _two_input_data(40)
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["image"], f["meta"] = img, meta
    reads = []
    orig = h5py.Dataset.__getitem__

    def spy(self, key):
        reads.append(key)
        return orig(self, key)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    ds = open_dataset(tmp_path / "d.h5", TWO)
    assert not reads                                  # opening reads nothing
    list(ds.batches(batch_size=8))
    assert len(reads) == 10 and all(isinstance(k, slice) and k.stop - k.start == 8 for k in reads)


def test_numpy_npy_npz_and_folder(tmp_path):
    img, meta, y = _two_input_data()
    np.save(tmp_path / "x.npy", img)
    ds = open_dataset(tmp_path / "x.npy", [TWO[0]])
    assert isinstance(ds.source.parts[0].arrays["image"], np.memmap)    # mmap, not loaded
    assert np.array_equal(np.concatenate([b.feed["image"] for b in ds.batches(batch_size=3)]), img)
    np.savez(tmp_path / "x.npz", image=img, meta=meta, labels=y)
    ds = open_dataset(tmp_path / "x.npz", TWO)
    assert ds.has_labels and np.concatenate([b.labels for b in ds.batches(batch_size=3)]).tolist() == y.tolist()
    # a folder of single-sample and multi-sample files
    (tmp_path / "f").mkdir()
    np.savez(tmp_path / "f" / "a.npz", image=img[0], meta=meta[0])
    np.savez(tmp_path / "f" / "b.npz", image=img[1:4], meta=meta[1:4])
    ds = open_dataset(tmp_path / "f", TWO)
    assert ds.ids == ["a.npz", "b.npz[0]", "b.npz[1]", "b.npz[2]"]
    (b,) = list(ds.batches(batch_size=8))
    assert np.array_equal(b.feed["image"], img[:4]) and np.allclose(b.feed["meta"], meta[:4])
    with pytest.raises(InputMismatchError, match="a .npy file feeds one input but the model has 2"):
        open_dataset(tmp_path / "x.npy", TWO)


def test_iterables_callables_generators_and_scripts(tmp_path):
    img, meta, y = _two_input_data(6)
    feeds = [{"image": img[i:i + 2], "meta": meta[i:i + 2]} for i in range(0, 6, 2)]
    ds = open_dataset(feeds, TWO)
    assert len(ds) == 6 and not ds.has_labels
    bs = list(ds.batches(batch_size=4))
    assert [len(b) for b in bs] == [4, 2] and np.array_equal(bs[0].feed["image"], img[:4])
    # a callable is called once per pass; single samples (no batch axis) are fine; labels via tuple
    calls = []

    def loader():
        calls.append(1)
        for i in range(6):
            yield {"image": img[i], "meta": meta[i]}, [y[i]]

    ds = open_dataset(loader, TWO)
    assert len(ds) == 6 and ds.has_labels
    assert np.concatenate([b.labels for b in ds.batches(batch_size=4)]).tolist() == y.tolist()
    assert list(ds.batches(batch_size=6))[0].ids == [str(i) for i in range(6)]
    # a one-shot generator is kept after the first pass so it can be re-read
    gen = ({"image": img[i], "meta": meta[i]} for i in range(6))
    ds = open_dataset(gen, TWO, limit=4)
    assert len(ds) == 4 and len(list(ds.batches(batch_size=4))[0]) == 4
    # split works on positions
    ev = open_dataset(feeds, TWO, split="eval")
    assert ev.ids == [str(i) for i in range(6) if split_of(str(i)) == "eval"]
    # Polygraphy-style data loader script
    script = tmp_path / "loader.py"
    script.write_text("import numpy as np\n"
                      "def load_data():\n"
                      "    for i in range(3):\n"
                      "        yield {'image': np.full((1, 3, 4, 4), i, np.float32),\n"
                      "               'meta': np.zeros((1, 2), np.float32)}\n")
    ds = open_dataset(f"{script}:load_data", TWO)
    assert len(ds) == 3 and list(ds.batches(batch_size=3))[0].feed["image"][:, 0, 0, 0].tolist() == [0, 1, 2]
    with pytest.raises(DataError, match="no function 'nope'"):
        open_dataset(f"{script}:nope", TWO)
    with pytest.raises(MissingDatasetKeyError, match="no array for model input 'meta'"):
        list(open_dataset([{"image": img}], TWO).batches())
    with pytest.raises(InputMismatchError, match="'bogus' not model inputs"):
        list(open_dataset([{"image": img, "meta": meta, "bogus": meta}], TWO).batches())
    bad = img.copy()
    bad[3, 0, 0, 0] = np.nan
    with pytest.raises(NonFiniteInputError, match="sample 3: input 'image' contains NaN"):
        list(open_dataset([{"image": bad, "meta": meta}], TWO).batches(batch_size=2))


def test_in_memory_arrays(tmp_path):
    img, meta, y = _two_input_data()
    ds = open_dataset({"image": img, "meta": meta, "labels": y}, TWO, limit=5)
    assert len(ds) == 5 and ds.has_labels
    ds = open_dataset(img, [TWO[0]])
    assert len(ds) == 10


def test_batch_is_a_plain_record():
    b = Batch({"x": np.zeros((2, 1))}, None, ["a", "b"])
    assert len(b) == 2 and b.labels is None


def test_progress_bar_and_repeated_passes(tmp_path, capsys):
    make_folder(tmp_path / "d", NAMES[:5])
    ds = open_dataset(tmp_path / "d", rgb_model(), RAW_EXACT)
    a = [b.ids for b in ds.batches(batch_size=2, progress="reading test")]
    b = [b.ids for b in ds.batches(batch_size=2, progress=True)]
    assert a == b and ds.last_pass == {"read": 5, "skipped": 0, "complete": True}
