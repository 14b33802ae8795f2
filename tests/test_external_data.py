"""A model's external data is read only from regular files inside the model's folder: a symbolic
link to a file elsewhere is refused with one line (onnx >= 1.21 refuses it; 1.15-1.20 followed it,
which is why pyproject.toml asks for 1.21)."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh

from calib.cli import main
from calib.errors import ModelLoadError
from calib.model import Model

WEIGHTS = np.arange(16, dtype=np.float32)


def _model_with_external_weights(folder, location="w.bin"):
    """m.onnx in *folder*: y = x + w, with w (16 float32) in the external file *location*."""
    folder.mkdir(parents=True, exist_ok=True)
    w = nh.from_array(np.zeros(16, np.float32), "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(WEIGHTS.nbytes))):
        e = w.external_data.add()
        e.key, e.value = k, v
    g = oh.make_graph([oh.make_node("Add", ["x", "w"], ["y"])], "g",
                      [oh.make_tensor_value_info("x", TensorProto.FLOAT, [16])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, [16])], [w])
    path = folder / "m.onnx"
    path.write_bytes(oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)], ir_version=8).SerializeToString())
    return path


def test_external_data_in_the_model_folder_loads(tmp_path):
    path = _model_with_external_weights(tmp_path / "model")
    (tmp_path / "model" / "w.bin").write_bytes(WEIGHTS.tobytes())
    m = Model.load(path)
    assert np.array_equal(nh.to_array(m.proto.graph.initializer[0]), WEIGHTS)


@pytest.mark.parametrize("link", ["file", "folder"])
def test_external_data_through_a_link_to_a_file_elsewhere_is_refused(tmp_path, capsys, link):
    secret = tmp_path / "elsewhere" / "secret.bin"
    secret.parent.mkdir()
    secret.write_bytes(WEIGHTS.tobytes())
    if link == "file":   # model/w.bin -> ../elsewhere/secret.bin
        path = _model_with_external_weights(tmp_path / "model")
        (tmp_path / "model" / "w.bin").symlink_to(secret)
        what = "symbolic link"
    else:                # model/data -> ../elsewhere, location data/secret.bin
        path = _model_with_external_weights(tmp_path / "model", "data/secret.bin")
        (tmp_path / "model" / "data").symlink_to(secret.parent, target_is_directory=True)
        what = "outside"
    with pytest.raises(ModelLoadError, match=f"its external data is refused: .*{what}"):
        Model.load(path)
    rc = main(["inspect", "--model", str(path)])
    cap = capsys.readouterr()
    lines = cap.err.splitlines()
    assert rc == 2 and cap.out == "" and len(lines) == 1 and "Traceback" not in cap.err
    assert lines[0].startswith(f"error: cannot read {path}: its external data is refused: ") and what in lines[0]

