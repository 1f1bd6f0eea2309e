"""INT8 through the gRPC service: the calibration inputs uploaded as data files of role CALIBRATE are what the
quantization calibrates on (and holds out for its check), as a local run with the same file does (issue 18)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import service_models
import torch
from safetensors.torch import save_file
from servers import FACTORIES, TOKEN, running_server

from convert import BenchConfig, ConvertConfig
from convert.job import CalibrateJob, JobOptions, run_job
from convert.report.schema import QuantizedModel
from convert.runtime.quantize import QuantizeConfig
from convert.runtime.sessions import open_session
from server.client import ConvertClient

pytestmark = [
    pytest.mark.slow,  # a real server and its worker processes
    pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning"),
]

SHAPE = ((1, 3, 16, 16),)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("server")
    with (
        running_server(root / "data", "--workers", "1", "--auth-token", TOKEN, *FACTORIES) as server,
        ConvertClient(server.address, auth_token=TOKEN) as c,
    ):
        yield c


def _same_calibration(service: QuantizedModel, local: QuantizedModel) -> None:
    """The same decisions from the same inputs: the format kept, and each candidate's accuracy (not its latency)."""
    assert (service.format, service.passed) == (local.format, local.passed)
    assert [(c.format, c.passed, c.top1_agreement) for c in service.candidates] == [
        (c.format, c.passed, c.top1_agreement) for c in local.candidates
    ]
    assert [c.rel_error for c in service.candidates] == pytest.approx([c.rel_error for c in local.candidates], rel=1e-4)


@pytest.mark.parametrize("shared", [False, True], ids=["quantize", "calibrate-and-quantize"])
def test_quantize_on_uploaded_calibration_inputs_matches_a_local_run(
    client: ConvertClient, tmp_path: Path, shared: bool
) -> None:
    torch.manual_seed(1)
    weights = tmp_path / "tiny.safetensors"
    save_file(service_models.tiny().state_dict(), weights)
    inputs = np.random.default_rng(0).standard_normal((40, 3, 16, 16), dtype=np.float32)
    np.save(tmp_path / "calibration.npy", inputs)
    data = (str(tmp_path / "calibration.npy"),)
    options = JobOptions(
        "service_models:tiny",
        str(weights),
        SHAPE,
        config=ConvertConfig(rank="full"),
        bench=BenchConfig(device="cpu", threads=1, warmup=1, runs=3),
        # one format: the one kept does not hang on timings; the CLI's --calibrate DATA --quantize int8 is `shared`
        quantize=QuantizeConfig(calibration=data, formats=("qdq-u8s8",), max_quant_error=0.5),  # random weights
        calibrate=CalibrateJob(data) if shared else None,
    )
    local = run_job(options, tmp_path / "local")
    remote = client.run(options, tmp_path / "remote")
    mine, theirs = local.quantize, remote.quantize
    assert not theirs.synthetic and data[0] in mine.calibration
    for field in ("calibration", "check"):  # the same inputs, under the server's name for the file
        assert getattr(theirs, field) == getattr(mine, field).replace(data[0], "upload-calibrate-1.npy")
    assert (theirs.calibration_samples, theirs.check_samples) == (mine.calibration_samples, mine.check_samples)
    for service, ours in ((theirs.original, mine.original), (theirs.converted, mine.converted)):
        _same_calibration(service, ours)
    # the INT8 files compute the same: the same ranges, from the same inputs
    x = torch.randn(4, 3, 16, 16).numpy()
    outputs = []
    for run in ("local", "remote"):
        session = open_session(tmp_path / run / "model.int8.onnx", "cpu").session
        outputs.append(session.run(None, {session.get_inputs()[0].name: x})[0])
    np.testing.assert_allclose(outputs[1], outputs[0], rtol=1e-4, atol=1e-4 * float(np.abs(outputs[0]).max()))
