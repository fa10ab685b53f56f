"""Every command has working, non-empty help with an example, --help stays light, and
the options' defaults are the stage configs' defaults."""

import subprocess
import sys

import pytest
from click.testing import CliRunner

from marketpulse.cli import main


def _commands():
    return sorted(main.commands)


def test_every_command_has_help_with_an_example():
    runner = CliRunner()
    assert _commands(), "no commands registered"
    for name in _commands():
        result = runner.invoke(main, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "Example" in result.output, f"{name} --help has no example"
        assert len(main.commands[name].help.strip().splitlines()[0]) > 10


def test_help_does_not_import_heavy_libraries():
    code = (
        "import sys; from marketpulse.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'optimum', 'onnxruntime', 'matplotlib') "
        "if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


# Each command's options are typed out in marketpulse/commands/ (so that `--help` stays
# light), and the stage's config dataclass has its own defaults for callers from Python.
# They must agree.
CONFIGS = {
    "train": "marketpulse.train.config:TrainConfig",
    "adapt": "marketpulse.train.adapt:AdaptConfig",
    "export": "marketpulse.export.stage:ExportConfig",
    "score": "marketpulse.runtime.runs:ScoreConfig",
    "explain": "marketpulse.runtime.explanations:ExplainConfig",
    "trends": "marketpulse.trends:TrendsConfig",
}


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_cli_defaults_are_the_configs_defaults(command):
    import dataclasses
    import importlib

    module, name = CONFIGS[command].split(":")
    fields = dataclasses.fields(getattr(importlib.import_module(module), name))
    config_defaults = {f.name: f.default for f in fields if f.default is not dataclasses.MISSING}
    compared = []
    for param in main.commands[command].params:
        if param.name not in config_defaults or param.default in (None, click_unset()):
            continue
        cli, config = param.default, config_defaults[param.name]
        if isinstance(config, tuple) and isinstance(cli, str):  # "a,b" on the command line
            cli = tuple(part for part in cli.split(",") if part)
        assert cli == config, f"{command} --{param.name}: cli {cli!r}, config {config!r}"
        compared.append(param.name)
    assert compared  # the test looked at something


def click_unset():
    """click's marker for an option without a default (click >= 8.3), else None."""
    from click import core

    return getattr(core, "UNSET", None)


def test_a_duckdb_error_no_stage_caught_is_one_line(monkeypatch):
    import click
    import duckdb

    from marketpulse.cli import _Group

    @click.group(cls=_Group)
    def group():
        pass

    @group.command()
    def fails():
        raise duckdb.ConversionException("Conversion Error: Could not convert string 'x'\nLINE 1")

    result = CliRunner().invoke(group, ["fails"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: DuckDB failed: Conversion Error: Could not convert string 'x'; check the "
        "tables, columns and filter named in the command (MARKETPULSE_DEBUG=1 shows where it "
        "failed)"
    ]
    monkeypatch.setenv("MARKETPULSE_DEBUG", "1")
    assert isinstance(CliRunner().invoke(group, ["fails"]).exception, duckdb.ConversionException)


def test_evaluate_refuses_an_out_file_in_a_missing_folder_before_scoring(tmp_path):
    args = ["evaluate", "--model", str(tmp_path), "--input", str(tmp_path / "rows.csv")]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "nodir" / "m.json")])
    assert result.exit_code == 2, result.output
    assert "nodir does not exist; create it first" in result.output
