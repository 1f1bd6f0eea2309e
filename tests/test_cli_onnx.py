"""`convert ... --onnx/--benchmark` and `convert bench`, run for real in a subprocess (cwd = tmp_path)."""

from __future__ import annotations

import json
import re
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from test_cli import assert_refused, ok, run, tree, user_module
from test_sessions import outside_weights, watch
from torch import nn

from convert import OnnxConfig, export_onnx

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

TINY = textwrap.dedent(
    """
    import time

    import torch
    from torch import nn


    def build():
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3))


    class ExportsSomethingElse(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)

        def forward(self, x):
            y = self.conv(x)
            return y + 1.0 if torch.compiler.is_exporting() else y


    def sneaky():
        return ExportsSomethingElse()


    class Spiky(nn.Module):  # every fourth run is 40 ms late: a tail no benchmark should trust
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            if self.calls % 4 == 0:
                time.sleep(0.04)
            return self.conv(x)


    def spiky():
        return Spiky()
    """
)
SHAPE = ["--input-shape", "1,3,16,16"]
FAST = ["--runs", "5", "--warmup", "1", "--threads", "1"]
HAS_GPU = torch.cuda.is_available()


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return user_module(tmp_path, monkeypatch, "tiny", TINY)


def test_noisy_benchmark_is_flagged_with_readable_labels(work: Path) -> None:
    """A model with a tail of slow runs: the table says NOISY, report.json and report.md carry the note; the tables
    spell out their labels and explain them."""
    args = ["tiny:spiky", *SHAPE, "--benchmark", "--runtime", "torch", "--device", "cpu", "--threads", "1"]
    result = ok(run(work, *args, "--runs", "20", "--warmup", "1", "-o", "out"))
    stdout = " ".join(result.stdout.split())
    assert "NOISY" in stdout and "CV: std / mean, NOISY when above 25% or when p90 is above 2x p50" in stdout
    assert "weight error" in stdout and re.search(r" 1 of \d+ ", stdout) and "rank: filters per group" in stdout
    report = json.loads((work / "out" / "report.json").read_text())
    noisy = [note for note in report["benchmark"]["notes"] if note.startswith("noisy timing: ")]
    assert any(note.startswith("noisy timing: original at batch 1 (") for note in noisy), noisy
    assert all("p90" in note and "unreliable" in note for note in noisy), noisy
    markdown = (work / "out" / "report.md").read_text()
    assert noisy[0] in markdown and "NOISY" in markdown and "_rank: filters per group" in markdown


def test_convert_with_benchmark(work: Path) -> None:
    result = ok(
        run(work, "tiny:build", *SHAPE, "--rank", "full", "--benchmark", *FAST, "--batch-sizes", "1,2", "-o", "out")
    )
    out = work / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "benchmark.png",
        "model.onnx",
        "model.pt",
        "model.safetensors",
        "original.onnx",
        "plan.json",
        "report.json",
        "report.md",
    ]
    assert (out / "benchmark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (
        "wrote out/ (model.pt, model.safetensors, plan.json, report.json, report.md, "
        "original.onnx, model.onnx, benchmark.png)"
    ) in result.stderr
    assert "ONNX Runtime matches PyTorch" in result.stderr
    assert "ONNX Runtime latency (ms)" in result.stdout and "speedup / MAC ratio" in result.stdout

    report = json.loads((out / "report.json").read_text())
    onnx = report["onnx"]
    assert onnx["atol"] == 1e-4
    for name, file in (("original", "original.onnx"), ("converted", "model.onnx")):
        export = onnx[name]
        assert (export["path"], export["exporter"], export["dynamic_batch"], export["passed"]) == (
            file,
            "dynamo",
            True,
            True,
        )
        assert [p["batch"] for p in export["parity"]] == [1, 3]
        assert all(p["max_rel"] <= 1e-4 and p["max_abs"] >= 0 for p in export["parity"])

    bench = report["benchmark"]
    assert bench["device"] == "cpu" and bench["requested_device"] == "auto" and bench["threads"] == 1
    if not HAS_GPU:
        assert bench["reason"] == "auto chose the CPU: no CUDA GPU is visible (torch.cuda.is_available() is False)"
    assert bench["providers"] == ["CPUExecutionProvider"] and bench["ort_version"]
    assert (bench["warmup"], bench["runs"], bench["batch_sizes"]) == (1, 5, [1, 2])
    assert [(m["name"], m["path"]) for m in bench["models"]] == [
        ("original", "original.onnx"),
        ("converted", "model.onnx"),
    ]
    for model in bench["models"]:
        assert [lat["batch"] for lat in model["latency"]] == [1, 2]
        for lat in model["latency"]:
            assert {"p50", "p90", "p99", "mean", "min", "std", "throughput"} <= lat.keys() and lat["runs"] == 5
    totals = report["totals"]
    mac_ratio = totals["macs_before"] / totals["macs_after"]
    assert [s["batch"] for s in bench["speedup"]] == [1, 2]
    for s, base, conv in zip(bench["speedup"], *(m["latency"] for m in bench["models"]), strict=True):
        assert s["speedup"] == pytest.approx(base["p50"] / conv["p50"])
        assert s["mac_ratio"] == pytest.approx(mac_ratio)
        assert s["of_mac_ratio"] == pytest.approx(s["speedup"] / mac_ratio)

    markdown = (out / "report.md").read_text()
    assert "## ONNX export" in markdown and "## Benchmark" in markdown and "| converted | 2 |" in markdown


def test_onnx_static_shapes_json_prints_only_json(work: Path) -> None:
    result = ok(run(work, "tiny:build", "--input-shape", "2,3,16,16", "--onnx", "--static-shapes", "--json", "-o", "o"))
    report = json.loads(result.stdout)  # stdout is only JSON
    assert report == json.loads((work / "o" / "report.json").read_text())
    assert report["benchmark"] is None
    for export in (report["onnx"]["original"], report["onnx"]["converted"]):
        assert export["dynamic_batch"] is False and [p["batch"] for p in export["parity"]] == [2]
    assert sorted(p.name for p in (work / "o").iterdir()) == [
        "model.onnx",
        "model.pt",
        "model.safetensors",
        "original.onnx",
        "plan.json",
        "report.json",
        "report.md",
    ]


def test_parity_failure_keeps_files_aside(work: Path) -> None:
    ok(run(work, "tiny:build", *SHAPE, "-o", "out"))  # earlier results, which must survive
    earlier = tree(work / "out")
    result = run(work, "tiny:sneaky", *SHAPE, "--onnx", "-o", "out", "--overwrite")
    assert result.returncode == 3
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert re.match(
        r"error: ONNX Runtime does not match PyTorch within --atol 0\.0001: original\.onnx: batch 1 ", lines[0]
    )
    assert lines[0].endswith("the files are kept in out.failed-parity/")
    assert tree(work / "out") == earlier
    kept = work / "out.failed-parity"
    assert {"model.pt", "original.onnx", "model.onnx", "report.json"} <= {p.name for p in kept.iterdir()}
    report = json.loads((kept / "report.json").read_text())
    assert report["onnx"]["original"]["passed"] is False
    assert sorted(p.name for p in work.iterdir()) == ["out", "out.failed-parity", "tiny.py"]  # no temporary folder


def two_files(folder: Path) -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 3, 16, 16)
    export_onnx(nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.Conv2d(32, 32, 3)), x, folder / "a.onnx")
    export_onnx(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 32, 1)), x, folder / "b.onnx")


def test_bench_subcommand(tmp_path: Path) -> None:
    two_files(tmp_path)
    result = ok(run(tmp_path, "bench", "a.onnx", "b.onnx", *FAST, "--device", "cpu", "--plot", "p.png"))
    assert "ONNX Runtime latency (ms)" in result.stdout and "baseline" in result.stdout
    assert re.search(r"b\.onnx .* 1 .*\d\.\d\dx", result.stdout)  # b's speedup relative to a
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"

    result = ok(run(tmp_path, "bench", "a.onnx", "b.onnx", *FAST, "--batch-sizes", "2,3", "--json"))
    data = json.loads(result.stdout)
    assert [m["name"] for m in data["models"]] == ["a.onnx", "b.onnx"]
    assert [(s["batch"], s["model"], s["baseline"]) for s in data["speedup"]] == [
        (2, "b.onnx", "a.onnx"),
        (3, "b.onnx", "a.onnx"),
    ]
    assert all(s["mac_ratio"] is None for s in data["speedup"])


# --- bad inputs: a one-line error, exit 2, no traceback, nothing written ----------------------------------------


def _random(root: Path) -> None:
    (root / "x.onnx").write_bytes(bytes(range(256)) * 8)


def _truncated(root: Path) -> None:
    two_files(root)
    data = (root / "a.onnx").read_bytes()
    (root / "x.onnx").write_bytes(data[: len(data) // 2])


def _static(root: Path) -> None:
    export_onnx(nn.Conv2d(3, 4, 3), torch.randn(1, 3, 8, 8), root / "x.onnx", OnnxConfig(dynamic_batch=False))


BAD: list[tuple[str, Callable[[Path], None] | None, list[str], str]] = [
    ("bench-not-onnx", _random, ["bench", "x.onnx"], r"x\.onnx is not a readable ONNX model"),
    ("bench-truncated", _truncated, ["bench", "x.onnx"], r"x\.onnx (is not a readable ONNX model|holds no ONNX graph)"),
    ("bench-missing", None, ["bench", "x.onnx"], r"x\.onnx: no such ONNX file"),
    (
        "bench-static-batch",
        _static,
        ["bench", "x.onnx", "--batch-sizes", "1,8"],
        r"input 'input' has a static batch of 1 and cannot run batch 8: use --batch-sizes 1",
    ),
    ("bench-bad-batch-sizes", None, ["bench", "x.onnx", "--batch-sizes", "1,x"], r"batch sizes '1,x' are not valid"),
    ("bench-runs-0", _static, ["bench", "x.onnx", "--runs", "0"], r"runs 0 is not valid"),
    ("bench-runs-and-duration", None, ["bench", "x.onnx", "--runs", "3", "--duration", "1"], r"not allowed with"),
    (
        "static-shapes-other-batch",
        None,
        ["tiny:build", *SHAPE, "--benchmark", "--static-shapes", "--batch-sizes", "1,2", "-o", "out"],
        r"--static-shapes fixes the batch at 1 .*use --batch-sizes 1, or drop --static-shapes",
    ),
    ("opset-without-onnx", None, ["tiny:build", *SHAPE, "--opset", "18", "-o", "out"], r"go with --onnx .*add --onnx"),
    ("opset-too-low", None, ["tiny:build", *SHAPE, "--onnx", "--opset", "2", "-o", "out"], r"opset 2 is not valid"),
]
if not HAS_GPU:
    BAD += [
        (
            "device-cuda-without-gpu",
            None,
            ["tiny:build", *SHAPE, "--benchmark", "--device", "cuda", "-o", "out"],
            r"--device cuda cannot run here \(no CUDA GPU is visible.*\): use --device cpu or auto",
        ),
        ("bench-device-cuda", _static, ["bench", "x.onnx", "--device", "cuda"], r"--device cuda cannot run here"),
    ]


@pytest.mark.parametrize(("setup", "args", "expected"), [case[1:] for case in BAD], ids=[c[0] for c in BAD])
def test_bad_input(work: Path, setup: Callable[[Path], None] | None, args: list[str], expected: str) -> None:
    if setup is not None:
        setup(work)
    assert_refused(work, args, expected)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sentinel uses inotify")
def test_bench_never_reads_external_data_outside(tmp_path: Path) -> None:
    model, secret = outside_weights(tmp_path, "dotdot")
    touched = watch(secret)
    result = run(tmp_path, "bench", model.relative_to(tmp_path))
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "outside the model's folder; refusing to read it" in result.stderr
    assert not touched()
