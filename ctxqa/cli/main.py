"""The `ctxqa` command: one typer app that each command module registers into (the API's `serve` and `keys`
among them, the way `llm` plugins add commands), on top of every other layer."""

from __future__ import annotations

import sys

import typer

from ctxqa.api.cli import register as register_api
from ctxqa.cli import admin, documents, ingest, query
from ctxqa.cli.common import err
from ctxqa.context import apply_process_defaults

app = typer.Typer(help="ctxqa: citation-backed answers over your own documents.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)

ingest.register(app)
query.register(app)
documents.register(app)
admin.register(app)
# The API layer's commands; the app factory is this process's wiring (ctxqa/server.py).
register_api(app, app_factory="ctxqa.server:factory")


def main() -> None:
    apply_process_defaults()
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
