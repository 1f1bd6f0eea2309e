"""The `convert` command, run for real in a subprocess (cwd = tmp_path), plus in-process runs that break saving.

Every bad input must exit 2 with exactly one line on stderr that says what to do, and write nothing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import stat
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import convert.artifacts
from convert import cli
from convert.load import make_inputs

_SCRIPT = Path(sys.executable).with_name("convert")  # the console script the user runs
COMMAND = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "convert.cli"]

TINY = textwrap.dedent(
    """
    import torch
    from torch import nn


    def build():
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3))


    class Net(nn.Module):  # a class of the user's own: a whole-model pickle needs this module to load
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.head = nn.Conv2d(8, 4, 3)

        def forward(self, x):
            return self.head(torch.relu(self.conv(x)))


    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.image = nn.Conv2d(3, 8, 3, padding=1)
            self.signal = nn.Conv1d(4, 8, 3, padding=1)

        def forward(self, x, y):
            return self.image(x).mean(dim=(2, 3)) + self.signal(y).mean(dim=2)


    def two():
        return TwoInputs()


    def sized(width, bias=True):
        return nn.Sequential(nn.Conv2d(3, width, 3, bias=bias))

    def linear_only():
        return nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))


    def decoder():  # a grouped conv, and a transposed conv that upsamples
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.Conv2d(8, 8, 3, padding=1, groups=2),
            nn.ConvTranspose2d(8, 4, 2, stride=2),
        )
    """
)
SHAPE = ["--input-shape", "1,3,16,16"]
OUTPUT_FILES = ["model.pt", "model.safetensors", "plan.json", "report.json", "report.md"]
LAYER_KEYS = {
    "name",
    "op",
    "status",
    "reason",
    "in_channels",
    "out_channels",
    "kernel",
    "stride",
    "dilation",
    "rank",
    "groups",
    "params_before",
    "params_after",
    "macs_before",
    "macs_after",
    "weight_rel_error",
}
TOTALS_KEYS = {"params_before", "params_after", "macs_before", "macs_after", "converted", "skipped"}


def run(cwd: Path, *args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PYTHONDONTWRITEBYTECODE": "1"}  # no __pycache__ next to the user's module
    return subprocess.run(
        [*COMMAND, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return result


def tree(root: Path) -> dict[str, str]:
    """Every path under `root` with a digest of its content: compares 'nothing was written or changed'."""
    return {
        str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


def user_module(root: Path, monkeypatch: pytest.MonkeyPatch, name: str, source: str) -> Path:
    """`root`/NAME.py holding `source`, importable as NAME (model.pt pickles the user's classes: loading it imports
    NAME); returns `root`, the working folder of a test's runs."""
    (root / f"{name}.py").write_text(source)
    monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(root))
    return root


def tiny_module(root: Path):
    """tiny.py imported from its file (not via sys.path), registered as `tiny` so its classes pickle."""
    spec = importlib.util.spec_from_file_location("tiny", root / "tiny.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["tiny"] = module
    spec.loader.exec_module(module)
    return module


def load_output(path: Path) -> nn.Module:
    model = torch.load(path, weights_only=False)
    assert isinstance(model, nn.Module)
    return model


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "tiny.py").write_text(TINY)
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.delitem(sys.modules, "tiny", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))  # model.pt pickles the user's class: loading it imports tiny
    yield tmp_path
    sys.modules.pop("tiny", None)


# --- success paths -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["pt", "safetensors", "checkpoint"])
def test_factory_with_weights(work: Path, form: str) -> None:
    torch.manual_seed(123)
    trained = tiny_module(work).build().eval()
    state = trained.state_dict()
    if form == "safetensors":
        from safetensors.torch import save_file

        weights = work / "weights.safetensors"
        save_file(state, weights)
    elif form == "pt":
        weights = work / "weights.pt"
        torch.save(state, weights)
    else:  # a training checkpoint, saved from DataParallel
        weights = work / "checkpoint.pth"
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, weights)

    result = ok(run(work, "tiny:build", "--weights", weights.name, *SHAPE, "--rank", "full", "-o", "out"))
    assert "2 converted, 0 skipped" in result.stdout  # the table's summary
    assert "wrote out/" in result.stderr
    report = json.loads((work / "out" / "report.json").read_text())
    assert report["totals"]["converted"] == 2 and report["output_rel_error"] < 1e-4
    assert (work / "out" / "report.md").read_text().startswith("# Conversion report: separable")
    # full rank is exact, so the output matches the *trained* weights, not build()'s fresh ones
    converted = load_output(work / "out" / "model.pt")
    (x,) = make_inputs([(2, 3, 16, 16)])
    with torch.no_grad():
        assert rel_error(converted(x), trained(x)) < 1e-4


def test_pt2_with_and_without_input_shape(work: Path) -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    (work / "models").mkdir()
    torch.export.save(torch.export.export(model, (torch.randn(1, 3, 12, 12),)), work / "models" / "m.pt2")

    # the archive's example inputs; the output folder goes next to the input file
    result = ok(run(work, "models/m.pt2", "--json"))
    report = json.loads(result.stdout)
    assert report["input_shapes"] == [[1, 3, 12, 12]] and report["totals"]["converted"] == 2
    assert (work / "models" / "m-separable" / "model.pt").is_file()

    result = ok(run(work, "models/m.pt2", "--input-shape", "2,3,20,20", "--rank", "full", "--json", "-o", "out"))
    report = json.loads(result.stdout)
    assert report["input_shapes"] == [[2, 3, 20, 20]] and report["output_rel_error"] < 1e-4
    assert [layer["output_shape"] for layer in report["layers"]] == [[2, 8, 20, 20], [2, 4, 18, 18]]
    x = torch.randn(2, 3, 20, 20)
    with torch.no_grad():
        assert rel_error(load_output(work / "out" / "model.pt")(x), model(x)) < 1e-4


def test_whole_model_pickle_warns_once(work: Path) -> None:
    model = tiny_module(work).Net().eval()
    torch.save(model, work / "net.pt")
    result = ok(run(work, "net.pt", *SHAPE, "--rank", "full"))
    lines = result.stderr.strip().splitlines()
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 1 and "runs code from the file" in warnings[0], result.stderr
    assert lines == [
        warnings[0],
        "wrote net-separable/ (model.pt, model.safetensors, plan.json, report.json, report.md)",
    ]
    report = json.loads((work / "net-separable" / "report.json").read_text())
    assert report["totals"]["converted"] == 2 and report["output_rel_error"] < 1e-4


def test_two_inputs_and_json_output(work: Path) -> None:
    result = ok(run(work, "tiny:two", "--input-shape", "1,3,16,16", "--input-shape", "1,4,50", "--json", "-o", "out"))
    assert result.stderr == ""  # --json: nothing but the report, and no chatter elsewhere
    report = json.loads(result.stdout)  # stdout is only JSON
    assert report == json.loads((work / "out" / "report.json").read_text())

    assert {"target", "trace", "layers", "totals", "output_rel_error"} <= report.keys()
    assert report["target"] == "separable" and report["trace"] in ("fx", "export", "module-walk")
    assert report["input_shapes"] == [[1, 3, 16, 16], [1, 4, 50]]
    assert TOTALS_KEYS <= report["totals"].keys()
    assert isinstance(report["output_rel_error"], float) and 0 <= report["output_rel_error"] < 1
    layers = {layer["name"]: layer for layer in report["layers"]}
    assert set(layers) == {"image", "signal"}
    for layer in layers.values():
        assert LAYER_KEYS <= layer.keys()
        assert layer["status"] == "converted" and layer["reason"] is None and layer["rank"] == 1
        assert layer["params_after"] < layer["params_before"] and layer["macs_after"] < layer["macs_before"]
        assert 0 < layer["weight_rel_error"] < 1
    assert layers["image"]["op"] == "Conv2d" and layers["image"]["kernel"] == [3, 3]
    assert layers["image"]["in_channels"] == 3 and layers["image"]["groups"] == 3
    assert layers["signal"]["op"] == "Conv1d" and layers["signal"]["kernel"] == [3]
    assert layers["signal"]["stride"] == [1] and layers["signal"]["dilation"] == [1]
    totals = report["totals"]
    assert totals["converted"] == 2 and totals["skipped"] == 0
    assert totals["macs_after"] < totals["macs_before"] and totals["params_after"] < totals["params_before"]

    converted = load_output(work / "out" / "model.pt")
    with torch.no_grad():
        assert converted(torch.randn(1, 3, 16, 16), torch.randn(1, 4, 50)).shape == (1, 8)


def test_transposed_and_grouped_options(work: Path) -> None:
    full = ok(run(work, "tiny:decoder", *SHAPE, "--rank", "full", "--include-grouped", "--json", "-o", "full"))
    report = json.loads(full.stdout)
    assert [(layer["name"], layer["status"]) for layer in report["layers"]] == [
        ("0", "converted"),
        ("1", "converted"),
        ("2", "converted"),
    ]
    assert report["options"]["transposed"] == "separable" and report["options"]["include_grouped"] is True
    assert report["output_rel_error"] < 1e-5
    converted = load_output(work / "full" / "model.pt")
    assert isinstance(converted.get_submodule("2.depthwise"), nn.ConvTranspose2d)
    assert converted.get_submodule("1.pointwise").groups == 2

    skipping = ok(run(work, "tiny:decoder", *SHAPE, "--transposed", "skip", "--json", "-o", "skip"))
    reasons = {layer["name"]: layer["reason"] for layer in json.loads(skipping.stdout)["layers"]}
    assert "--include-grouped" in reasons["1"] and "--transposed separable" in reasons["2"]
    assert reasons["0"] is None
    assert type(load_output(work / "skip" / "model.pt").get_submodule("2")) is nn.ConvTranspose2d


def test_default_outdir_and_rerun_needs_overwrite(work: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    # a regex with [brackets] (rich markup) shows verbatim in the table and the report
    result = ok(run(work, "tiny:build", *SHAPE, "--exclude", "^[/]?0$"))
    out = work / "tiny.build-separable"  # ./<module>.<callable>-<target> for a factory
    assert sorted(p.name for p in out.iterdir()) == [
        "model.pt",
        "model.safetensors",
        "plan.json",
        "report.json",
        "report.md",
    ]
    assert "wrote tiny.build-separable/" in result.stderr
    assert "name matches --exclude" in result.stdout and "'^[/]?0$'" in result.stdout  # the cell may wrap
    first = json.loads((out / "report.json").read_text())
    assert [(layer["name"], layer["status"]) for layer in first["layers"]] == [("0", "skipped"), ("2", "converted")]
    assert first["layers"][0]["reason"] == "name matches --exclude '^[/]?0$'"
    # the folder has the permissions of any folder the user makes (umask), not mkdtemp's 0700
    reference = tmp_path_factory.mktemp("perm") / "made-by-mkdir"
    reference.mkdir()
    assert stat.S_IMODE(out.stat().st_mode) == stat.S_IMODE(reference.stat().st_mode)

    # a second run into the same folder is refused before any work: the earlier results stay as they were
    (out / "stale.txt").write_text("from an earlier run")
    assert_refused(
        work,
        ["tiny:build", *SHAPE, "--rank", "2"],
        r"^error: tiny\.build-separable holds the results of an earlier run: pass --overwrite to replace them, "
        r"or give another --output$",
    )
    # --overwrite replaces the folder as a whole
    ok(run(work, "tiny:build", *SHAPE, "--rank", "2", "--overwrite"))
    assert sorted(p.name for p in out.iterdir()) == OUTPUT_FILES
    second = json.loads((out / "report.json").read_text())
    assert second["options"]["rank"] == 2 and second["totals"]["converted"] == 2
    assert sorted(p.name for p in work.iterdir()) == ["tiny.build-separable", "tiny.py"]  # no .tmp- / .old- left


def test_inspect_prints_a_table_and_writes_nothing(work: Path) -> None:
    before = tree(work)
    result = ok(run(work, "inspect", "tiny:build", *SHAPE, "--groups", "1", "--exclude", "^[/]?0$"))
    assert "standard convolutions" in result.stdout
    assert "separable: MACs" in result.stdout and "grouped g1: MACs" in result.stdout
    assert "3->8" in result.stdout and "8->8" in result.stdout and "fewer" in result.stdout
    assert "name matches --exclude" in result.stdout and "'^[/]?0$'" in result.stdout  # the cell may wrap
    assert tree(work) == before


def test_inspect_honours_rank_and_prints_json(work: Path) -> None:
    args = ["inspect", "tiny:build", *SHAPE, "--json"]
    default = json.loads(ok(run(work, *args)).stdout)
    ranked = json.loads(ok(run(work, *args, "--rank", "2", "--to", "grouped", "--groups", "1")).stdout)
    assert list(default) == ["separable"] and list(ranked) == ["separable", "grouped g1"]
    assert [row["rank"] for row in default["separable"]] == [1, 1]
    assert [row["rank"] for row in ranked["separable"]] == [2, 2]
    assert [row["rank"] for row in ranked["grouped g1"]] == [2, 2]
    first = ranked["separable"][0]
    assert first["name"] == "0" and first["status"] == "converted" and first["macs_after"] < first["macs_before"]
    assert ranked["separable"][0]["weight_rel_error"] < default["separable"][0]["weight_rel_error"]


def test_factory_arguments_and_short_names(work: Path) -> None:
    result = ok(run(work, "tiny:sized", "--model-arg", "width=5", "--model-arg", "bias=False", *SHAPE, "--json"))
    report = json.loads(result.stdout)
    assert report["layers"][0]["out_channels"] == 5 and report["totals"]["params_before"] == 5 * 3 * 9
    assert (work / "tiny.sized-separable" / "model.pt").is_file()
    resnet = json.loads(
        ok(
            run(work, "torchvision:resnet18", "--model-arg", "num_classes=10", "--input-shape", "1,3,32,32", "--json")
        ).stdout
    )
    assert resnet["totals"]["params_before"] == sum(
        p.numel() for p in __import__("torchvision").models.resnet18(num_classes=10).parameters()
    )
    assert (work / "torchvision.resnet18-separable" / "report.json").is_file()


def test_version_quiet_log_level_and_examples(work: Path) -> None:
    assert re.fullmatch(r"convert \S.*\n", ok(run(work, "--version")).stdout)
    for command in ([], ["inspect"], ["bench"]):
        assert "\nexamples:\n  convert " in ok(run(work, *command, "--help")).stdout, command
    args = ["tiny:linear_only", "--input-shape", "2,16", "--log-level", "error"]
    loud = ok(run(work, *args, "-o", "loud"))
    assert "warning: the model has no convolution" in loud.stderr and "wrote loud/" in loud.stderr
    quiet = ok(run(work, *args, "-o", "quiet", "-q"))
    assert quiet.stderr == "" and quiet.stdout == loud.stdout.replace("loud", "quiet")
    assert (work / "quiet" / "report.json").is_file()
    refused = run(work, *args, "-o", "x", "-q", "--rank", "0")
    assert refused.returncode == 2 and "rank 0 is not valid" in refused.stderr  # errors still print


def test_model_without_standard_convs_warns_and_strict_refuses(work: Path) -> None:
    args = ["tiny:linear_only", "--input-shape", "2,16", "--json"]
    result = ok(run(work, *args, "-o", "out"))
    report = json.loads(result.stdout)
    assert report["totals"]["converted"] == 0 and report["layers"] == []
    assert report["totals"]["params_after"] == report["totals"]["params_before"]
    assert report["output_rel_error"] == 0
    assert (work / "out" / "model.pt").is_file()
    assert result.stderr.startswith("warning: the model has no convolution (Conv1d/2d/3d, ConvTranspose")
    # --strict: the same warning is an error, exit status 1, nothing written
    before = tree(work)
    strict = run(work, *args, "-o", "strict", "--strict")
    assert strict.returncode == 1 and strict.stdout == ""
    assert strict.stderr.splitlines() == [
        "error: the model has no convolution (Conv1d/2d/3d, ConvTranspose, or F.conv* on its own weights): nothing "
        "was converted, the output is the model as it was (a warning: --strict makes it an error)"
    ]
    assert tree(work) == before


def test_every_conv_skipped_warns(work: Path) -> None:
    result = ok(run(work, "tiny:build", *SHAPE, "--min-channels", "100", "-o", "out"))
    assert "warning: no conv was converted: all 2 were skipped (e.g. 0: fewer than --min-channels 100" in (
        result.stderr.replace("\n", " ")
    )


@pytest.mark.slow
def test_resnet18_separable_is_about_8x_fewer_macs(tmp_path: Path) -> None:
    """The issue's main command."""
    result = ok(
        run(tmp_path, "torchvision.models:resnet18", "--to", "separable", "--input-shape", "1,3,224,224", "-o", "out")
    )
    assert "wrote out/" in result.stderr
    totals = json.loads((tmp_path / "out" / "report.json").read_text())["totals"]
    assert 7 < totals["macs_before"] / totals["macs_after"] < 9, totals
    assert totals["converted"] > 10
    model = load_output(tmp_path / "out" / "model.pt")
    with torch.no_grad():
        y = model(torch.randn(1, 3, 224, 224))
    assert y.shape == (1, 1000) and torch.isfinite(y).all()


# --- bad inputs: exit 2, one line on stderr that says what to do, nothing written ----------------------------------


def _random_bytes(root: Path) -> None:
    (root / "random.bin").write_bytes(os.urandom(4096))


def _truncated(root: Path) -> None:
    torch.save(nn.Sequential(nn.Conv2d(3, 8, 3)), root / "whole.pt")
    data = (root / "whole.pt").read_bytes()
    (root / "truncated.pt").write_bytes(data[: len(data) // 2])


def _torchscript(root: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated, which is the point
        torch.jit.save(torch.jit.script(nn.Sequential(nn.Conv2d(3, 8, 3))), root / "scripted.pt")


def _state_dict(root: Path) -> None:
    torch.save(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3)).state_dict(), root / "sd.pt")


def _misfit_weights(root: Path) -> None:
    torch.save(nn.Sequential(nn.Conv2d(3, 4, 3)).state_dict(), root / "other.pt")


def _pt2(root: Path) -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3))
    torch.export.save(torch.export.export(model, (torch.randn(1, 3, 8, 8),)), root / "m.pt2")
    _state_dict(root)


def _syntax_error(root: Path) -> None:
    (root / "broken.py").write_text("def build(:\n")


def _user_folder(root: Path) -> None:
    (root / "src").mkdir()
    (root / "src" / "notes.txt").write_text("not convert's")


def _existing_file(root: Path) -> None:
    (root / "taken.pt").write_bytes(b"the user's file")


BAD_INPUTS: list[tuple[str, Callable[[Path], None] | None, list[str], str]] = [
    ("missing-file", None, ["missing.pt", *SHAPE], r"missing\.pt: no such file .*package\.module:callable"),
    ("markup-in-name", None, ["m[/].pt", *SHAPE], r"m\[/\]\.pt: no such file"),
    ("directory", lambda root: (root / "adir").mkdir(), ["adir", *SHAPE], r"adir is not a file: give the model file"),
    ("random-bytes", _random_bytes, ["random.bin", *SHAPE], r"not a PyTorch model file.*factory spec"),
    ("truncated", _truncated, ["truncated.pt", *SHAPE], r"truncated\.pt .*check that it is complete"),
    ("torchscript", _torchscript, ["scripted.pt", *SHAPE], r"TorchScript archive.*torch\.export\.save"),
    ("state-dict-as-model", _state_dict, ["sd.pt", *SHAPE], r"holds weights only: .*--weights"),
    (
        "weights-do-not-fit",
        _misfit_weights,
        ["tiny:build", "--weights", "other.pt", *SHAPE],
        r"other\.pt does not fit the model \(missing 2 keys.*check the factory and the weights file",
    ),
    ("weights-missing", None, ["tiny:build", "--weights", "absent.pt", *SHAPE], r"absent\.pt: no such file"),
    ("weights-with-pt2", _pt2, ["m.pt2", "--weights", "sd.pt"], r"--weights goes with a factory spec"),
    (
        "module-not-found",
        None,
        ["no_such_module_xyz:build", *SHAPE],
        r"cannot import factory 'no_such_module_xyz:build' \(ModuleNotFoundError.*PYTHONPATH",
    ),
    ("module-syntax-error", _syntax_error, ["broken:build", *SHAPE], r"importing 'broken' .*fix the error"),
    ("no-such-attribute", None, ["tiny:nope", *SHAPE], r"has no attribute 'nope'.*check the spelling"),
    (
        "input-shape-rejected",
        None,
        ["tiny:build", "--input-shape", "1,5,16,16"],
        r"cannot run in eval mode on inputs of shape 1x5x16x16 .*give --input-shape",
    ),
    ("input-shape-malformed", None, ["tiny:build", "--input-shape", "1,x,3"], r"--input-shape.*e\.g\. 1,3,224,224"),
    (
        "groups-fit-no-layer",
        None,
        ["tiny:build", "--to", "grouped", "--groups", "7", *SHAPE],
        r"--groups 7 fits no layer \(input channels: 3, 8\): choose",
    ),
    ("unknown-log-level", None, ["tiny:build", *SHAPE, "--log-level", "loud"], r"invalid choice: 'loud'"),
    ("quiet-and-verbose", None, ["tiny:build", *SHAPE, "-q", "-v"], r"not allowed with argument"),
    ("unknown-target", None, ["tiny:build", "--to", "octagonal", *SHAPE], r"invalid choice: 'octagonal'.*separable"),
    ("unknown-transposed", None, ["tiny:build", "--transposed", "dense", *SHAPE], r"invalid choice: 'dense'.*skip"),
    ("grouped-without-groups", None, ["tiny:build", "--to", "grouped", *SHAPE], r"set --groups \(e\.g\. --groups 4\)"),
    ("rank-0", None, ["tiny:build", "--rank", "0", *SHAPE], r"rank 0 is not valid: use a positive integer or 'full'"),
    ("energy-1.5", None, ["tiny:build", "--energy", "1.5", *SHAPE], r"energy 1\.5 is not valid: use a fraction"),
    ("no-input-shape", None, ["tiny:build"], r"input shape is unknown: set --input-shape"),
    ("inspect-rejected-shape", None, ["inspect", "tiny:build", "--input-shape", "1,5"], r"give --input-shape"),
    ("outdir-is-a-file", _existing_file, ["tiny:build", *SHAPE, "-o", "taken.pt"], r"taken\.pt .*not a folder"),
    ("outdir-holds-user-files", _user_folder, ["tiny:build", *SHAPE, "-o", "src"], r"src .*give -o a new folder"),
    ("outdir-is-cwd", None, ["tiny:build", *SHAPE, "-o", "."], r"output folder '\.' is not valid"),
    (
        "accelerator-without-server",
        None,
        ["tiny:build", *SHAPE, "--accelerator", "H100"],
        r"--accelerator and --resource choose a Ray node of a server: add --server HOST:PORT",
    ),
    ("resource-malformed", None, ["tiny:build", *SHAPE, "--resource", "edge=x"], r"'edge=x' is not NAME=AMOUNT"),
    (
        "processes-0",
        None,
        ["tiny:build", *SHAPE, "--distill", "synthetic", "--processes", "0"],
        r"--processes 0 is not valid: use 1 or more",
    ),
    ("model-arg-malformed", None, ["tiny:build", *SHAPE, "--model-arg", "10"], r"--model-arg: model argument '10'"),
    (
        "model-arg-unknown",
        None,
        ["tiny:build", *SHAPE, "--model-arg", "width=3"],
        r"factory 'tiny:build' failed when called with \(width=3\) \(TypeError: .*check its arguments \(--model-arg",
    ),
    ("model-arg-with-a-file", _existing_file, ["taken.pt", *SHAPE, "--model-arg", "a=1"], r"--model-arg goes with"),
    (
        "include-matches-nothing",
        None,
        ["tiny:build", *SHAPE, "--include", "layer1"],
        r"--include 'layer1' matches no layer \(the 2 convs are 0, 2\): use a regex",
    ),
    ("exclude-matches-nothing", None, ["tiny:build", *SHAPE, "--exclude", "fc"], r"--exclude 'fc' matches no layer"),
    ("include-not-a-regex", None, ["tiny:build", *SHAPE, "--include", "conv["], r"--include 'conv\[' is not a valid"),
    ("inspect-not-a-regex", None, ["inspect", "tiny:build", *SHAPE, "--exclude", "(0"], r"--exclude '\(0' is not"),
    ("inspect-matches-nothing", None, ["inspect", "tiny:build", *SHAPE, "--include", "x"], r"matches no layer"),
    ("inspect-auto", None, ["inspect", "tiny:build", *SHAPE, "--to", "auto"], r"--to auto times each layer.*run `"),
    ("inspect-grouped-no-groups", None, ["inspect", "tiny:build", *SHAPE, "--to", "grouped"], r"set --groups"),
    ("inspect-no-pointwise", None, ["inspect", "tiny:build", *SHAPE, "--no-pointwise"], r"add --groups G"),
]


@pytest.mark.parametrize(
    ("setup", "args", "expected"), [case[1:] for case in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input(work: Path, setup: Callable[[Path], None] | None, args: list[str], expected: str) -> None:
    if setup is not None:
        setup(work)
    if args[0] != "inspect" and "-o" not in args:
        args = [*args, "-o", "out"]
    assert_refused(work, args, expected)


def assert_refused(work: Path, args: list[str], expected: str) -> None:
    """The command exits 2 with one `error:` line matching `expected`, prints nothing else, writes nothing."""
    before = tree(work)
    result = run(work, *args)
    assert result.returncode == 2, f"exit {result.returncode}: {result.stderr}"
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"not one line on stderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert re.match(r"(convert(?: inspect| bench)?: )?error: ", lines[0]), lines[0]
    assert re.search(expected, lines[0]), lines[0]
    assert result.stdout == ""
    assert tree(work) == before  # no OUTDIR, no temporary folder, nothing changed


def assert_refused_in_process(
    work: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list[str], expected: str
) -> None:
    """As `assert_refused`, with `cli.main(args)` run in this process in `work` (quicker than a subprocess)."""
    monkeypatch.chdir(work)
    monkeypatch.setattr(sys, "path", list(sys.path))  # loading a factory spec puts the working folder on it
    before = tree(work)
    assert cli.main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1, captured.err
    assert re.match(r"(convert: )?error: ", captured.err) and re.search(expected, captured.err), captured.err
    assert tree(work) == before


def test_unreadable_model_file(work: Path) -> None:
    path = work / "locked.pt"
    torch.save(nn.Sequential(nn.Conv2d(3, 8, 3)), path)
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as root: chmod 000 does not stop reading")
        before = tree(work)
        result = run(work, "locked.pt", *SHAPE, "-o", "out")
        assert result.returncode == 2
        assert result.stderr.splitlines() == ["error: locked.pt is not readable: check its permissions"]
        assert tree(work) == before
    finally:
        path.chmod(0o644)


# --- atomic writes (in-process, so saving can be broken midway) -------------------------------------------------


@pytest.fixture
def in_process(work: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(work)
    monkeypatch.setattr(sys, "path", list(sys.path))
    return work


def _break_saving(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    """torch.save writes half a file, then fails (a full disk, or Ctrl-C)."""

    def broken_save(obj: object, f: str | os.PathLike[str], *args: object, **kwargs: object) -> None:
        Path(f).write_bytes(b"half a model")
        raise error

    monkeypatch.setattr(torch, "save", broken_save)


FAILURES = [
    pytest.param(
        OSError(28, "No space left on device"), 2, "cannot write out (OSError: [Errno 28] No space", id="disk-full"
    ),
    pytest.param(KeyboardInterrupt(), 130, "interrupted: nothing was written", id="interrupted"),
]


@pytest.mark.parametrize(("error", "code", "message"), FAILURES)
def test_failed_save_writes_nothing(
    in_process: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], error, code, message
) -> None:
    _break_saving(monkeypatch, error)
    assert cli.main(["tiny:build", *SHAPE, "-o", "out", "--json"]) == code
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1 and message in captured.err
    assert sorted(p.name for p in in_process.iterdir()) == ["tiny.py"]  # no out/, no .out.tmp-*


@pytest.mark.parametrize(("error", "code", "message"), FAILURES)
def test_failed_save_keeps_earlier_results(
    in_process: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], error, code, message
) -> None:
    assert cli.main(["tiny:build", *SHAPE, "-o", "out", "--json"]) == 0
    earlier = tree(in_process)
    _break_saving(monkeypatch, error)
    capsys.readouterr()
    assert cli.main(["tiny:build", *SHAPE, "-o", "out", "--rank", "3", "--json", "--overwrite"]) == code
    assert message in capsys.readouterr().err
    assert tree(in_process) == earlier  # out/ as it was; no .out.tmp-* or .out.old-*


def test_failed_swap_puts_earlier_results_back(
    in_process: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["tiny:build", *SHAPE, "-o", "out", "--json"]) == 0
    earlier = tree(in_process)
    real_replace = os.replace

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if ".out.tmp-" in str(src):
            raise PermissionError(13, "Permission denied", str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(convert.artifacts.os, "replace", replace)
    capsys.readouterr()
    assert cli.main(["tiny:build", *SHAPE, "-o", "out", "--rank", "3", "--json", "--overwrite"]) == 2
    assert "cannot write out (PermissionError: [Errno 13] Permission denied" in capsys.readouterr().err
    assert tree(in_process) == earlier


def test_plan_of_an_earlier_run_applies_to_the_weights(work: Path) -> None:
    first = json.loads(
        ok(run(work, "tiny:build", *SHAPE, "--rank", "2", "--exclude", "^0$", "--json", "-o", "a")).stdout
    )
    again = json.loads(ok(run(work, "tiny:build", *SHAPE, "--plan", "a/plan.json", "--json", "-o", "b")).stdout)
    assert [(x["name"], x["status"], x["rank"]) for x in again["layers"]] == [
        (x["name"], x["status"], x["rank"]) for x in first["layers"]
    ]
    refused = run(work, "tiny:build", *SHAPE, "--plan", "a/plan.json", "--to", "auto", "-o", "c")
    assert refused.returncode == 2 and "give either a --plan or --to auto" in refused.stderr
