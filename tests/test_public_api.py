"""The public names: every one listed resolves, and importing the package imports none of them until used."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

PACKAGES = ["convert", "convert.runtime", "convert.report", "convert.auto", "convert.distill", "convert.cli"]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_resolves(package: str) -> None:
    module = importlib.import_module(package)
    assert module.__all__ and sorted(dir(module)) == sorted(module.__all__)
    for name in module.__all__:
        assert getattr(module, name) is not None, name
    with pytest.raises(AttributeError):
        module.no_such_name  # noqa: B018 - the attribute access is the test


def test_importing_the_package_and_its_errors_imports_no_torch() -> None:
    """`convert.errors` is what the CLI and the server import first: it must not cost torch's import."""
    code = "import sys, convert, convert.errors, convert.runtime, convert.report; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "False"
