"""The `marketpulse` command line: parse flags, call a stage, report.

Each stage owns its commands in `<stage>/cli.py`; this module only groups them.
Heavy imports (torch, transformers, optimum) happen inside the commands that need
them, so `marketpulse --help` is instant and scoring never loads torch.
"""

from __future__ import annotations

import click

from marketpulse import __version__
from marketpulse.errors import MarketpulseError


class _Group(click.Group):
    """Turns MarketpulseError into a one-line `Error: ...` and exit code 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MarketpulseError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="marketpulse")
def main():
    """Turn market text in DuckDB tables into market signals.

    Example: marketpulse score --db news.duckdb --table news --id-col id --text-col text --bundle model/
    """
