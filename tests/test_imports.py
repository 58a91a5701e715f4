"""Every module imports (the cautionary tale: an import error nobody noticed), and `mlflow/` holds
no Python that could shadow the real package."""
import importlib
import pkgutil

import pytest

from conftest import REPO

MODULES = sorted(
    name
    for package in ("flows", "tasks", "expectations")
    for name in [package] + [m.name for m in pkgutil.walk_packages([str(REPO / package)], prefix=f"{package}.")]
)


@pytest.mark.parametrize("module", MODULES)
def test_module_imports(module):
    importlib.import_module(module)


def test_mlflow_dir_is_configuration_only():
    assert not list((REPO / "mlflow").rglob("*.py"))
    import mlflow

    assert "site-packages" in mlflow.__file__


def test_cli_help_is_instant_and_complete():
    from click.testing import CliRunner

    from flows.cli import cli

    for command in ["", "pipeline", "generate", "validate", "format", "train", "chat"]:
        result = CliRunner().invoke(cli, [*command.split(), "--help"])
        assert result.exit_code == 0, result.output
        assert "Usage:" in result.output
