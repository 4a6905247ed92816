"""The `circuitlab` command. Importing the CLI takes a moment (typer, rich); a Ctrl-C then is one line and exit
status 130, as everywhere else, not a traceback."""

import sys


def main() -> None:
    try:
        from circuitlab.cli import app
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    app(prog_name="circuitlab")
