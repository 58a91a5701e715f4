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


def _command_paths(group, prefix=()):
    import click

    for name, command in group.commands.items():
        yield (*prefix, name)
        if isinstance(command, click.Group):
            yield from _command_paths(command, (*prefix, name))


def test_every_cli_command_has_help():
    from click.testing import CliRunner

    from flows.cli import cli

    paths = [(), *_command_paths(cli)]
    assert ("stack", "agent") in paths and ("dataset", "push") in paths and len(paths) > 20
    for path in paths:
        result = CliRunner().invoke(cli, [*path, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output, (path, result.output)


def test_cli_help_imports_nothing_heavy():
    """`rslm --help` is instant because the CLI imports no heavy library until a command runs
    (measured: prefect ~0.7 s, mlflow ~0.8 s, GX ~2 s, torch ~1.5 s). Checked in a fresh interpreter."""
    import json
    import subprocess
    import sys

    heavy = ["torch", "transformers", "prefect", "mlflow", "great_expectations", "boto3", "pandas"]
    code = ("import json, sys\nfrom click.testing import CliRunner\nfrom flows.cli import cli\n"
            "for args in ([], ['pipeline'], ['serve'], ['stack', 'up']):\n"
            "    assert CliRunner().invoke(cli, [*args, '--help']).exit_code == 0\n"
            f"print(json.dumps([m for m in {heavy!r} if m in sys.modules]))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert json.loads(loaded.stdout.splitlines()[-1]) == []
