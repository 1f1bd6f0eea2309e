"""`convert --help` through the real CLI (subprocess): its subcommands in the usage line, each with a --help of its own,
and the --device help that says what it means for distillation and for the benchmark."""

from __future__ import annotations

from pathlib import Path

from test_cli import ok, run

from convert.cli.commands import COMMANDS


def test_usage_line_lists_every_subcommand_and_each_has_its_help(tmp_path: Path) -> None:
    top = ok(run(tmp_path, "--help")).stdout
    usage = top[: top.index("\n\n")]  # the usage block, before the description
    assert usage.startswith("usage: convert MODEL [options]")
    listed = [line.split()[1] for line in usage.splitlines()[1:] if line.split()[1] != "SUBCOMMAND"]
    assert sorted(listed) == sorted(COMMANDS)
    for name in listed:
        own = ok(run(tmp_path, name, "--help")).stdout
        assert own.startswith(f"usage: convert {name}"), own[:200]
    assert tuple(tmp_path.iterdir()) == ()  # help writes nothing


def test_device_help_says_what_it_means_for_distillation_and_the_benchmark(tmp_path: Path) -> None:
    text = " ".join(ok(run(tmp_path, "--help")).stdout.split())
    device = text[text.index("--device {auto,cpu,cuda,tensorrt}") :]
    device = device[: device.index("--threads")]
    assert "--distill trains there" in device and "--benchmark (and --to auto) times there" in device
    assert "tensorrt (ONNX Runtime's TensorRT provider for timing, CUDA for training)" in device
