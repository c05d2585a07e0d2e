"""What every command shares: the consoles, common options, building the Context, failing with a message."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any, NoReturn, Optional

import typer
from rich.console import Console

from ctxqa.context import Context
from ctxqa.rag.config import Settings

out = Console()
err = Console(stderr=True)

CollectionOpt = Annotated[Optional[str], typer.Option("--collection", "-c", help="Collection name.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]


def context() -> Context:
    try:
        return Context(Settings())
    except Exception as e:  # pydantic ValidationError, bad TOML...
        err.print(f"[red]error:[/] invalid settings: {e}")
        raise typer.Exit(2) from e


def fail(msg: str, code: int = 1) -> NoReturn:
    err.print(f"[red]error:[/] {msg}")
    raise typer.Exit(code)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str, ensure_ascii=False) + "\n")
