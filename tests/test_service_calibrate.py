"""Calibration on uploaded inputs through the gRPC service (files of role CALIBRATE), against a local run."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import service_models
import torch
from safetensors.torch import save_file
from servers import CONVERT, FACTORIES, TOKEN, running_server, server_env

pytestmark = pytest.mark.slow  # a real server and its worker process


def test_calibration_on_uploaded_inputs_matches_a_local_run(tmp_path: Path) -> None:
    torch.manual_seed(1)
    save_file(service_models.tiny().state_dict(), tmp_path / "tiny.safetensors")
    np.save(tmp_path / "cal.npy", np.random.default_rng(0).standard_normal((20, 3, 16, 16), dtype=np.float32))
    args = ["service_models:tiny", "--weights", "tiny.safetensors", "--input-shape", "1,3,16,16", "--rank", "1"]
    args += ["--calibrate", "cal.npy", "--calibration-samples", "16", "--json"]
    env = dict(server_env(), CONVERT_AUTH_TOKEN=TOKEN, OMP_NUM_THREADS="1")  # as the server's workers run
    with running_server(tmp_path / "data", "--workers", "1", "--auth-token", TOKEN, *FACTORIES) as server:
        local, remote = (
            subprocess.run([*CONVERT, *args, "-o", out, *extra], cwd=tmp_path, env=env, capture_output=True, text=True)
            for out, extra in (("local", []), ("remote", ["--server", server.address]))
        )
    assert local.returncode == 0, local.stderr
    assert remote.returncode == 0, remote.stderr
    local, remote = json.loads(local.stdout), json.loads(remote.stdout)
    local_calibration, remote_calibration = local.pop("calibration"), remote.pop("calibration")
    drop = ("seconds", "placement")  # timings, and where it ran (the service's record)
    assert {k: v for k, v in remote.items() if k not in drop} == {k: v for k, v in local.items() if k not in drop}
    # the same fit on the same 16 of the 20 inputs: the file's name on the server differs, the figures do not
    assert local_calibration.pop("data") == "16 of 20 inputs from cal.npy"
    assert remote_calibration.pop("data") == "16 of 20 inputs from upload-calibrate-1.npy"
    assert remote_calibration.pop("seconds") > 0 and local_calibration.pop("seconds") > 0
    assert remote_calibration["calibrated"] == 2 and not remote_calibration["synthetic"]
    errors = ("output_rel_error", "svd_output_rel_error")
    for key in errors:  # the worker's thread count may round differently from the local run's
        assert remote_calibration.pop(key) == pytest.approx(local_calibration.pop(key), rel=1e-5), key
    assert remote_calibration == local_calibration
    x = torch.randn(2, 3, 16, 16)
    models = [torch.load(tmp_path / out / "model.pt", weights_only=False) for out in ("local", "remote")]
    torch.testing.assert_close(models[1](x), models[0](x), rtol=1e-5, atol=1e-6)
