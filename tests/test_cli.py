"""`curate --version` and `-h` (an alias of `--help` on the app and on every subcommand)."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

import curation
from curation.cli import app

runner = CliRunner()


def _subcommands() -> list[str]:
    names = {info.name or info.callback.__name__.replace("_", "-") for info in app.registered_commands}
    assert {"run", "stages", "status", "show", "report", "browse", "train"} <= names, names
    return sorted(names)


def test_version_prints_the_package_version():
    result = runner.invoke(app, ["--version"], prog_name="curate")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"curate {curation.__version__}"
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", curation.__version__)


def test_version_wins_over_a_subcommand():
    """--version is eager: it answers before anything else is parsed or run."""
    result = runner.invoke(app, ["--version", "status", "/nonexistent"], prog_name="curate")
    assert result.exit_code == 0 and result.output.strip() == f"curate {curation.__version__}"


def test_short_help_on_the_app():
    short, long = runner.invoke(app, ["-h"], prog_name="curate"), runner.invoke(app, ["--help"], prog_name="curate")
    assert short.exit_code == long.exit_code == 0, short.output
    assert short.output == long.output
    assert "Usage: curate" in short.output and "--version" in short.output and "-h" in short.output


@pytest.mark.parametrize("command", _subcommands())
def test_short_help_on_every_subcommand(command):
    short, long = runner.invoke(app, [command, "-h"], prog_name="curate"), runner.invoke(app, [command, "--help"], prog_name="curate")
    assert short.exit_code == long.exit_code == 0, short.output
    assert short.output == long.output
    assert f"Usage: curate {command}" in short.output

