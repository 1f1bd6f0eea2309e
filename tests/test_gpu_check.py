"""benchmarks/gpu_check.py cannot rot: its CPU form runs every section that needs no GPU, end to end, from the source
tree; its rows say SLOWER and FAIL where they must; it imports nothing a bare GPU machine may lack."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from convert.report.schema import AutoLayer, AutoReport, Benchmark, Candidate, Latency, ModelTiming

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
REPORT = SCRIPT.parent / "gpu_report.py"  # its rows and table, imported from beside it
ALLOWED = {"torch", "torchvision", "onnx", "numpy", "convert", REPORT.stem}  # besides the standard library


@pytest.fixture
def gpu_check(monkeypatch: pytest.MonkeyPatch):
    """The script as a module (registered while the test runs: its dataclasses look their module up)."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # as when run as a script: its folder first on sys.path
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", module)
    spec.loader.exec_module(module)
    return module


def test_imports_are_torch_torchvision_onnx_numpy_and_the_project() -> None:
    imported = set()
    for node in (node for path in (SCRIPT, REPORT) for node in ast.walk(ast.parse(path.read_text()))):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert imported - sys.stdlib_module_names - {"__future__"} <= ALLOWED


@pytest.mark.slow
def test_cpu_form_runs_every_section_it_can(tmp_path: Path) -> None:
    out = tmp_path / "check.json"
    command = [sys.executable, str(SCRIPT), "--device", "cpu", "--threads", "1", "--json", str(out)]
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [*command, "--time-limit", "1200"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    document = json.loads(out.read_text())
    rows = document["rows"]
    assert {row["section"] for row in rows} == {"exactness", "eager", "distill", "ort"}
    assert all(row["status"] in ("ok", "SLOWER") for row in rows), rows
    assert document["environment"]["torch"] and document["auto"].keys() == {"tiny torch float32", "tiny ort"}
    assert document["benchmarks"]["tiny torch eager-float32"]["runtime"] == "torch"
    assert document["benchmarks"]["tiny ort"]["providers"] == ["CPUExecutionProvider"]
    assert re.search(r"^status +section +check +result$", done.stdout, re.MULTILINE), done.stdout
    assert f"{len(rows)} rows, 0 FAIL" in done.stdout


def test_rows_say_slower_and_fail_plainly(gpu_check) -> None:
    check = gpu_check.Check(gpu_check.parse(["--device", "cpu", "--json", ""]))
    check.args.json = None

    def timing(name: str, *p50: float) -> ModelTiming:
        return ModelTiming(
            name, "", [Latency(b, 1, ms, ms, ms, ms, ms, 0.0, 1.0) for b, ms in zip((1, 32), p50, strict=True)], 0, None
        )

    bench = Benchmark("cuda", "cuda", "", [], {}, None, None, 1, 1, None, [1, 32], [], [], [])
    bench.models = [timing("original", 1.0, 8.0), timing("separable r1", 1.5, 4.0), timing("auto", 0.9, 4.0)]
    gpu_check._latency_rows(check, "eager", "m", bench)  # noqa: SLF001 (the script's row logic, without a GPU)
    slow, fast = check.rows
    assert slow.status == "SLOWER" and "separable r1 is 1.50x SLOWER than the original" in slow.result
    assert "auto" not in slow.result.split("|")[-1] and fast.status == "ok" and "(2.00x)" in fast.result

    def layer(name: str, chosen: int, *ms: float) -> AutoLayer:
        return AutoLayer(name, [1], [Candidate("c", None, None, 0, 0.0, 0.0, t) for t in ms], chosen)

    report = AutoReport(
        1.5, None, "cuda", 2, 1, 0, 1, 1, 2, [layer("a", 0, 1.0, 2.0), layer("b", 1, 1.0, 0.5)], [], 0, 0, "", []
    )
    assert gpu_check._kept(report) == (  # noqa: SLF001 (the script's row logic, without a GPU)
        "predicted 2.00x; kept 1/2 layers, 1 where every factorized form is slower, all kept",
        "ok",
    )
    report.layers[0].chosen = 1
    result, status = gpu_check._kept(report)  # noqa: SLF001 (as above)
    assert status == "FAIL" and result.endswith("NOT kept: a")
