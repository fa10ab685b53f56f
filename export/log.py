"""Export's progress lines for people: on stderr, so `--json` output on stdout stays clean."""

import sys


def log(message: str) -> None:
    print(f"export: {message}", file=sys.stderr, flush=True)
