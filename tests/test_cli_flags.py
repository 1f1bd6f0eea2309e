"""The table of option names and flags (convert/cli/flags.py): complete against the library's errors, true to the
parser, and the translation of library messages into flag terms."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import re
from pathlib import Path

import pytest

from convert import BenchConfig, ConvertError, ParityError
from convert.cli import commands, main
from convert.cli.args import bench_parser, convert_parser
from convert.cli.flags import (
    AUTO_OPTIONS,
    DISTILL_JOB_OPTIONS,
    DISTILL_OPTIONS,
    FLAGS,
    PARAMETERS,
    Flag,
    flag,
    to_cli,
)
from convert.errors import outcome_of

ROOT = Path(__file__).resolve().parents[1]

# Backticked names in library errors that are not options a CLI user sets, each with why.
NOT_OPTIONS = {
    "planner": "convert_model's planner object: the CLI chooses it from --to",
    "plans": "convert_model's given per-layer plans: Python callers only",
    "full_rank": "the proto's spelling of rank='full' (server/wire/options.py, for gRPC clients)",
    "duration_seconds": "the proto's spelling of BenchConfig.duration (server/wire/options.py, for gRPC clients)",
}
# Where library errors are raised: the library and the service (the CLI's own messages speak flags already).
LIBRARY = [ROOT / "convert", ROOT / "server"]
NOT_LIBRARY = [ROOT / "convert" / "cli", ROOT / "server" / "rpc", ROOT / "server" / "cli.py"]
ERRORS = {"ConvertError", "ParityError"}


def _library_files() -> list[Path]:
    files = [path for root in LIBRARY for path in sorted(root.rglob("*.py"))]
    return [path for path in files if not any(path == skip or skip in path.parents for skip in NOT_LIBRARY)]


def _error_messages() -> list[tuple[str, str]]:
    """(where, string literal) for every string literal in a call of ConvertError, ParityError or a subclass."""
    trees = {path: ast.parse(path.read_text(), filename=str(path)) for path in _library_files()}
    errors = set(ERRORS)
    for tree in trees.values():  # subclasses, e.g. the client's ServiceError
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any(getattr(b, "id", None) in ERRORS for b in node.bases):
                errors.add(node.name)
    found = []
    for path, tree in trees.items():
        for call in ast.walk(tree):
            if not isinstance(call, ast.Call):
                continue
            callee = call.func.id if isinstance(call.func, ast.Name) else getattr(call.func, "attr", None)
            if callee in errors:
                where = f"{path.relative_to(ROOT)}:{call.lineno}"
                found += [
                    (where, node.value)
                    for node in ast.walk(call)
                    if isinstance(node, ast.Constant) and isinstance(node.value, str)
                ]
    return found


def test_the_scan_sees_library_errors() -> None:
    """The scan below is not vacuous: it finds the messages of errors raised across the library."""
    messages = _error_messages()
    assert len(messages) > 100
    assert any(where.startswith("convert/load.py") and "factory spec" in text for where, text in messages)
    assert any(where.startswith("server/") for where, _ in messages)


def test_library_errors_name_only_options_that_have_flags() -> None:
    """Every backticked name in a library error is an option the CLI can translate to its flag, or a known
    non-option (e.g. a proto field name). A new option named in a message must get its flag in FLAGS."""
    known = {name for table in FLAGS.values() for name in table} | set(PARAMETERS) | set(NOT_OPTIONS)
    unknown = sorted(
        f"{where}: `{name}`"
        for where, text in _error_messages()
        for name in re.findall(r"`([A-Za-z_]\w*)`", text)
        if name not in known
    )
    assert not unknown, "add these names to convert/cli/flags.py FLAGS (or, if not options, to NOT_OPTIONS):\n" + (
        "\n".join(unknown)
    )


@pytest.mark.parametrize("options", list(FLAGS), ids=lambda options: options.__name__)
def test_every_entry_is_a_field(options: type) -> None:
    assert set(FLAGS[options]) <= {f.name for f in dataclasses.fields(options)}


def test_a_name_has_one_flag() -> None:
    seen: dict[str, Flag] = dict(PARAMETERS)
    for table in FLAGS.values():
        for name, entry in table.items():
            assert seen.setdefault(name, entry) == entry, f"`{name}` has two flags: {seen[name]} and {entry}"


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    # argparse keeps no public list of its options: read the actions it was given
    return {option: action for action in parser._actions for option in action.option_strings}  # noqa: SLF001


def test_every_flag_is_an_option_of_the_parser() -> None:
    actions = _actions(convert_parser())
    for entry in [*(e for table in FLAGS.values() for e in table.values()), *PARAMETERS.values()]:
        if entry.text != "MODEL":  # the positional argument
            assert entry.text.split()[0] in actions, entry
        if entry.switch is not None:  # a flag without a value
            assert actions[entry.text].nargs == 0, entry
    assert {entry.text for entry in FLAGS[BenchConfig].values()} <= set(_actions(bench_parser()))  # convert bench


def test_option_lists_are_the_flags_dests() -> None:
    """options.py reads DISTILL_OPTIONS, DISTILL_JOB_OPTIONS and AUTO_OPTIONS from the Namespace by name."""
    actions = _actions(convert_parser())
    for name in (*DISTILL_OPTIONS, *DISTILL_JOB_OPTIONS, *AUTO_OPTIONS):
        action = actions[flag(name)]
        assert action.dest == name and action.default is None, name  # None: "not given" is detectable
    assert "device" not in DISTILL_OPTIONS  # --device is shared with the benchmark, not a distillation flag
    assert DISTILL_OPTIONS[:4] == ("steps", "epochs", "batch_size", "lr") and "workers" in DISTILL_OPTIONS


@pytest.mark.parametrize(
    ("library", "cli"),
    [
        (
            "`target`=grouped needs the number of groups: set `groups` (e.g. `groups`=4)",
            "--to grouped needs the number of groups: set --groups (e.g. --groups 4)",
        ),
        (
            "`target`=auto chooses ranks and groups per layer itself: drop `rank`, `energy`, `groups`",
            "--to auto chooses ranks and groups per layer itself: drop --rank, --energy, --groups",
        ),
        ("`pointwise`=False applies to `target`=grouped only", "--no-pointwise applies to --to grouped only"),
        (
            "`dynamic_batch`=False fixes the batch at 1, so `batch_sizes`=1,8 cannot run: use `batch_sizes`=1, or drop "
            "`dynamic_batch`=False",
            "--static-shapes fixes the batch at 1, so --batch-sizes 1,8 cannot run: use "
            "--batch-sizes 1, or drop --static-shapes",
        ),
        (
            "the example input shape is unknown: set `input_shapes`, e.g. `input_shapes`=1,3,224,224",
            "the example input shape is unknown: set --input-shape, e.g. --input-shape 1,3,224,224",
        ),
        ("give `input_shapes` of the shapes it expects", "give --input-shape of the shapes it expects"),
        ("`include_grouped`=True factorizes it.", "--include-grouped factorizes it."),
        ("`pointwise`=True is the default", "no --no-pointwise is the default"),
        (
            "`auto` settings go with `target`=auto; `model` is MODEL",
            "--to auto settings go with --to auto; MODEL is MODEL",
        ),
        ("`resume` continues from `outdir`", "--resume continues from --output"),
        # the old form (flags in the library's message) and names that are not options are left as they are
        ("add --groups G (e.g. --groups 4)", "add --groups G (e.g. --groups 4)"),
        ("`plans` and `torch.load`, `full_rank`=1", "`plans` and `torch.load`, `full_rank`=1"),
        ("`convert MODEL --distill x.npy` does", "`convert MODEL --distill x.npy` does"),
    ],
)
def test_to_cli(library: str, cli: str) -> None:
    assert to_cli(library) == cli


def test_the_cli_prints_library_errors_and_warnings_in_flag_terms(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def run_job(options, outdir, *, on_warning, **_):
        on_warning("`include_grouped`=True would convert 2 more layers")
        raise ConvertError("`target`=grouped needs the number of groups: set `groups` (e.g. `groups`=4)")

    monkeypatch.setattr(commands, "run_job", run_job)
    assert main(["m:build", "--input-shape", "1,3,8,8", "-o", "out"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "warning: --include-grouped would convert 2 more layers",
        "error: --to grouped needs the number of groups: set --groups (e.g. --groups 4)",
    ]


def test_the_cli_prints_a_parity_error_with_its_exit_status(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def run_job(*_, **__):
        raise ParityError("model.onnx differs from PyTorch by 0.1 (above `atol`=1e-05)")

    monkeypatch.setattr(commands, "run_job", run_job)
    assert main(["m:build", "-o", "out"]) == outcome_of(ParityError()).exit_code == 3
    assert capsys.readouterr().err == "error: model.onnx differs from PyTorch by 0.1 (above --atol 1e-05)\n"
