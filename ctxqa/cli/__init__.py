"""The `ctxqa` command line (typer): thin commands over the library, printed with rich."""

from ctxqa.cli.main import app, main

__all__ = ["app", "main"]
