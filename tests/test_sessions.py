"""ONNX Runtime sessions: files they must refuse (never reading external data outside the model's folder), and
files they run."""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from convert import ConvertError, benchmark_onnx, export_onnx, open_session, validate_onnx_file
from convert.runtime.bench import BenchConfig

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

FAST = BenchConfig(device="cpu", threads=1, warmup=1, runs=5, batch_sizes=(1, 3))  # one thread: see conftest


# --- files that must be refused --------------------------------------------------------------------------------


IN_OPEN, IN_ACCESS = 0x20, 0x01


def watch(path: Path) -> Callable[[], bool]:
    """Linux inotify on `path`: the returned function says whether anyone opened or read it since."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK)
    assert fd >= 0 and libc.inotify_add_watch(fd, os.fsencode(path), IN_OPEN | IN_ACCESS) >= 0

    def touched() -> bool:
        try:
            return bool(os.read(fd, 4096))
        except BlockingIOError:
            return False

    return touched


def model_with_external_weight(path: Path, location: str) -> None:
    """y = x + w, with w's 4 floats stored at `location` (relative to the model's folder, or absolute)."""
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4])
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        weight.external_data.add(key=key, value=value)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    path.write_bytes(model.SerializeToString())  # as is: onnx.save would try to write the external data


def outside_weights(tmp_path: Path, form: str) -> tuple[Path, Path]:
    """models/evil.onnx whose weight lives in secret.bin, one folder up: (model, secret)."""
    (tmp_path / "models").mkdir()
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(4, dtype=np.float32).tobytes())  # valid data: reading it would "work"
    location = {"dotdot": "../secret.bin", "absolute": str(secret), "symlink": "weights.bin"}[form]
    if form == "symlink":
        (tmp_path / "models" / "weights.bin").symlink_to(secret)
    model_with_external_weight(tmp_path / "models" / "evil.onnx", location)
    return tmp_path / "models" / "evil.onnx", secret


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sentinel uses inotify")
@pytest.mark.parametrize("form", ["dotdot", "absolute", "symlink"])
def test_external_data_outside_the_folder_is_never_read(tmp_path: Path, form: str) -> None:
    model, secret = outside_weights(tmp_path, form)
    touched = watch(secret)
    with pytest.raises(ConvertError, match=r"outside the model's folder; refusing to read it"):
        benchmark_onnx([model], FAST)
    with pytest.raises(ConvertError, match=r"outside the model's folder"):
        open_session(model, "cpu")
    assert not touched()
    secret.read_bytes()  # the sentinel itself works
    assert touched()


def test_external_data_inside_the_folder_runs(tmp_path: Path) -> None:
    (tmp_path / "w.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    model_with_external_weight(tmp_path / "ok.onnx", "w.bin")
    validate_onnx_file(tmp_path / "ok.onnx")
    session = open_session(tmp_path / "ok.onnx", "cpu", threads=1).session
    (y,) = session.run(None, {"x": np.zeros((2, 4), np.float32)})
    assert y.tolist() == [[0.0, 1.0, 2.0, 3.0]] * 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (lambda data: os.urandom(2048), r"is not a readable ONNX model .*is it an ONNX file"),
        (lambda data: data[: len(data) // 2], r"is not a readable ONNX model|holds no ONNX graph"),
        (lambda data: b"", r"holds no ONNX graph"),
    ],
    ids=["random-bytes", "truncated", "empty"],
)
def test_not_onnx_refused(tmp_path: Path, content: Callable[[bytes], bytes], message: str) -> None:
    good = export_onnx(nn.Conv2d(3, 4, 3), torch.randn(1, 3, 8, 8), tmp_path / "good.onnx").path
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content(Path(good).read_bytes()))
    with pytest.raises(ConvertError, match=message) as caught:
        validate_onnx_file(bad)
    assert "\n" not in str(caught.value)
    with pytest.raises(ConvertError, match="no such ONNX file"):
        validate_onnx_file(tmp_path / "missing.onnx")
