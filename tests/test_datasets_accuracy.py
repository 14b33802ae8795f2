"""Readers feeding the real models in ../shared through ONNX Runtime: accuracy proves the
preprocessing (presets, channel order, labels) and the array readers are right."""
from __future__ import annotations

import numpy as np
import pytest

from calib.backends.onnxruntime import OrtEngine
from calib.datasets import open_dataset
from calib.model import Model


def top1(engine, ds, batch_size=32):
    assert ds.has_labels
    hits = n = 0
    for b in ds.batches(batch_size=batch_size):
        y = next(iter(engine.run(b.feed).values()))
        y = y.reshape(len(b), -1)
        hits += int((y.argmax(1) == b.labels).sum())
        n += len(b)
    assert n == len(ds)
    return hits / n


def test_efficientnet_lite_preset_on_500_imagenet_images(efficientnet_path, imagenet_dir, imagenet_classes):
    model = Model.load(efficientnet_path)
    ds = open_dataset(imagenet_dir, model, "efficientnet-lite", classes=imagenet_classes)
    assert len(ds) == 500
    acc = top1(OrtEngine(model), ds)
    assert acc >= 0.85, acc          # measured 0.884 (reference 88.8% on the 1000-image superset)
    assert ds.skipped == []


def test_caffe_preset_on_squeezenet_fixed_batch_1(squeezenet_path, imagenet_dir, imagenet_classes):
    model = Model.load(squeezenet_path)
    assert model.inputs[0].fixed_batch == 1
    ds = open_dataset(imagenet_dir, model, "caffe", classes=imagenet_classes)
    acc = top1(OrtEngine(model), ds, batch_size=16)     # the engine splits the batches of 16
    assert acc >= 0.58, acc          # measured 0.600 (reference 61.0%)


def test_caffe_preset_needs_bgr(squeezenet_path, imagenet_dir, imagenet_classes):
    """Swapping to RGB must hurt: the test can tell a right preset from a wrong one."""
    model = Model.load(squeezenet_path)
    eng = OrtEngine(model)
    right = open_dataset(imagenet_dir, model, "caffe", classes=imagenet_classes, limit=80, seed=0)
    wrong = open_dataset(imagenet_dir, model, {"resize": 256, "crop": 224, "mean": (123, 117, 104)},
                         classes=imagenet_classes, limit=80, seed=0)
    assert right.ids == wrong.ids
    assert top1(eng, right) > top1(eng, wrong) + 0.03


def test_bundled_quickstart_data(bundled_dir):
    model = Model.load(bundled_dir / "models" / "squeezenet1_1_fp32.onnx")
    ds = open_dataset(bundled_dir / "imagenet-mini", model, "caffe", classes=bundled_dir / "imagenet1k_classes.tsv")
    assert len(ds) == 48
    assert top1(OrtEngine(model), ds, batch_size=16) >= 0.6      # measured 33/48


@pytest.fixture(scope="module")
def mnist_files(tmp_path_factory, mnist_arrays):
    import h5py

    x, y = mnist_arrays
    d = tmp_path_factory.mktemp("mnist")
    with h5py.File(d / "mnist.h5", "w") as f:
        f.create_dataset("digits", data=x, chunks=(100, 1, 28, 28))
        f["labels"] = y
    np.save(d / "mnist.npy", x)
    np.save(d / "labels.npy", y)
    np.savez(d / "mnist.npz", Input3=x, labels=y)
    return d


@pytest.mark.parametrize("kind", ["hdf5", "npy", "npz"])
def test_mnist_through_array_readers(kind, mnist_files, mnist_model_path):
    model = Model.load(mnist_model_path)
    if kind == "hdf5":
        ds = open_dataset(mnist_files / "mnist.h5", model, hdf5_map="Input3=digits")
    elif kind == "npy":
        ds = open_dataset(mnist_files / "mnist.npy", model, labels=mnist_files / "labels.npy")
    else:
        ds = open_dataset(mnist_files / "mnist.npz", model)
    assert len(ds) == 5000 and ds.kind in ("hdf5", "npy", "npz")
    acc = top1(OrtEngine(model), ds, batch_size=250)
    assert acc >= 0.98, acc          # measured 0.9946 (reference 99.5%)
