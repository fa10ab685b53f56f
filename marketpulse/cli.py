"""The `marketpulse` command line: the click group, its error handling, and the commands.

Every command is a thin function: parse flags, build the stage's config, call the
stage, print. The commands live in marketpulse/commands/, one module per stage; this
module registers them. Expected errors are MarketpulseError (one line, exit 1). Heavy
imports (torch, transformers, optimum) happen inside the commands that need them, so
`marketpulse --help` is instant and scoring never loads torch.
"""

from __future__ import annotations

import click

from marketpulse import __version__
from marketpulse.commands.export import export_, inspect_
from marketpulse.commands.score import explain, score
from marketpulse.commands.train import adapt, evaluate, train
from marketpulse.commands.trends import sql_, trends
from marketpulse.errors import MarketpulseError, first_line


class _Group(click.Group):
    """Turns MarketpulseError into a one-line `Error: ...` and exit code 1.

    A DuckDB error that no stage turned into one (a view that fails when read, say) is
    one line too, naming DuckDB's own message; MARKETPULSE_DEBUG=1 keeps the traceback.
    """

    def invoke(self, ctx):
        import os

        try:
            return super().invoke(ctx)
        except MarketpulseError as exc:
            raise click.ClickException(str(exc)) from exc
        except KeyboardInterrupt:  # Ctrl-C outside `score` (which stops gracefully itself)
            click.echo("marketpulse: interrupted", err=True)
            ctx.exit(130)  # the shell's convention, as `score` exits: 128 + SIGINT
        except Exception as exc:
            if type(exc).__module__.split(".")[0] not in ("duckdb", "_duckdb"):
                raise
            if os.environ.get("MARKETPULSE_DEBUG"):
                raise
            raise click.ClickException(
                f"DuckDB failed: {first_line(exc)}; check the tables, columns and filter "
                "named in the command (MARKETPULSE_DEBUG=1 shows where it failed)"
            ) from exc


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="marketpulse")
def main():
    """Turn market text in DuckDB tables into market signals.

    Example: marketpulse score --db news.duckdb --table news --id-col id --text-col text --bundle model/
    """


# In this order in `main.commands`; `--help` lists them sorted.
for _command in (train, evaluate, adapt, export_, inspect_, score, explain, sql_, trends):
    main.add_command(_command)
