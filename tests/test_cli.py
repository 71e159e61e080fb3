import subprocess
import sys

from typer.testing import CliRunner

from teellm.cli import app


def test_help_lists_commands() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "teellm" in result.output.lower() or "Usage" in result.output


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and "teellm" in result.output


def test_every_command_has_help() -> None:
    import typer.main

    group = typer.main.get_command(app)
    runner = CliRunner()

    def walk(path: list[str], cmd: object) -> None:
        res = runner.invoke(app, [*path, "--help"])
        assert res.exit_code == 0, (path, res.output)
        for name, sub in getattr(cmd, "commands", {}).items():
            walk([*path, name], sub)

    walk([], group)


def test_entry_point_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "teellm.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "Usage" in out.stdout
