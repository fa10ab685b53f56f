"""Every command has working, non-empty help with an example, and --help stays light."""

import subprocess
import sys

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
