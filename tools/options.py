"""Command-line options the tools share."""

from pathlib import Path

import click

DEFAULT_DATA = "../shared/data"


def data_option(help: str):
    """`--data DIR`: the shared data folder, found from the working directory (the
    Makefile runs from the repo root), or MARKETPULSE_DATA; never from the source checkout."""
    return click.option(
        "--data",
        type=click.Path(file_okay=False, path_type=Path),
        default=DEFAULT_DATA,
        show_default=True,
        envvar="MARKETPULSE_DATA",
        show_envvar=True,
        help=help,
    )
