"""`ctxqa serve` and `ctxqa keys create|list|revoke`, registered on the main CLI by `register(app, app_factory)`.

The API layer does not know the process wiring above it: the CLI passes the import path of the app factory
(`ctxqa.server:factory`) that each uvicorn worker process calls."""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

out = Console()
err = Console(stderr=True)

keys_app = typer.Typer(help="API keys for the HTTP API (only a hash of each key is stored).", no_args_is_help=True)


def _settings():  # type: ignore[no-untyped-def]
    from ctxqa.rag.config import Settings

    try:
        return Settings()
    except Exception as e:  # noqa: BLE001
        err.print(f"[red]error:[/] invalid settings: {e}")
        raise typer.Exit(2) from e


def _db():  # type: ignore[no-untyped-def]
    from ctxqa.rag.db.session import Database

    return Database(_settings().db_url)


def _serve(app_factory: str, host: str | None, port: int | None, workers: int, log_level: str) -> None:
    import uvicorn

    settings = _settings()
    host = host or settings.host
    port = port or settings.port
    # The app factory reads its settings from the environment in every worker process: pass the binding on.
    os.environ["CTXQA_HOST"] = host
    os.environ["CTXQA_PORT"] = str(port)
    if settings.auth_disabled:  # the app prints the big warning at start-up (once per worker)
        if host not in ("127.0.0.1", "localhost", "::1"):
            err.print(f"[bold red]auth is disabled AND the server listens on {host}: every client on that "
                      f"network has full access[/]")
    else:
        from ctxqa.api.keys import list_keys

        with _db().session() as s:
            active = [k for k in list_keys(s) if k.revoked_at is None]
        if not active:
            err.print("[yellow]no API keys yet: every request will get 401. Create one with "
                      "`ctxqa keys create --name admin --admin`[/]")
    err.print(f"ctxqa on http://{host}:{port}  (web page: /, API docs: /docs, {workers} worker(s))")
    uvicorn.run(app_factory, factory=True, host=host, port=port, workers=workers, log_level=log_level,
                timeout_graceful_shutdown=10)


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option("--name", help="A unique name (shown in logs and the answer log).")],
    collection: Annotated[Optional[list[str]], typer.Option(
        "--collection", "-c", help="Limit the key to this collection (repeatable).")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="May delete collections; sees everything.")] = False,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Create a key. The secret is printed once and never stored: keep it."""
    from ctxqa.api.keys import ApiKeyError, create_key

    if admin and collection:
        err.print("[red]error:[/] --admin keys see every collection; drop --collection or --admin")
        raise typer.Exit(2)
    try:
        with _db().session() as s:
            key = create_key(s, name, collections=list(collection or []), admin=admin)
    except ApiKeyError as e:
        err.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from None
    if json_out:
        sys.stdout.write(json.dumps({"name": key.name, "key": key.secret, "prefix": key.prefix,
                                     "admin": key.admin, "collections": key.collections}) + "\n")
        return
    scope = "admin" if key.admin else (", ".join(key.collections) if key.collections else "all collections")
    err.print(f"created key [bold]{key.name}[/] ({scope}). This is the only time the secret is shown:")
    sys.stdout.write(key.secret + "\n")


@keys_app.command("list")
def keys_list(json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List keys (name, prefix, scope, dates); secrets are never shown."""
    from ctxqa.api.keys import list_keys

    with _db().session() as s:
        rows: list[dict[str, Any]] = [{"name": k.name, "prefix": k.prefix, "admin": k.admin, "collections": list(k.collections or []),
                 "created_at": k.created_at.isoformat() if k.created_at else None,
                 "last_used_at": k.last_used_at.isoformat() if k.last_used_at else None,
                 "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None} for k in list_keys(s)]
    if json_out:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    t = Table("name", "prefix", "scope", "created", "last used", "state")
    for r in rows:
        scope = "admin" if r["admin"] else (", ".join(r["collections"]) or "all collections")
        t.add_row(r["name"], r["prefix"] + "…", scope, (r["created_at"] or "")[:19], (r["last_used_at"] or "-")[:19],
                  "[red]revoked[/]" if r["revoked_at"] else "active")
    out.print(t)


@keys_app.command("revoke")
def keys_revoke(name: Annotated[str, typer.Argument(help="The key's name.")]) -> None:
    """Revoke a key: it stops working at once."""
    from ctxqa.api.keys import ApiKeyError, revoke_key

    try:
        with _db().session() as s:
            revoke_key(s, name)
    except ApiKeyError as e:
        err.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from None
    err.print(f"revoked key {name}")


def register(app: typer.Typer, *, app_factory: str) -> None:
    def serve(
        host: Annotated[Optional[str], typer.Option("--host", help="Interface to bind (default: settings host).")] = None,
        port: Annotated[Optional[int], typer.Option("--port", help="Port (default: settings port).")] = None,
        workers: Annotated[int, typer.Option("--workers", min=1, help="Processes; each loads its own model.")] = 1,
        log_level: Annotated[str, typer.Option("--log-level")] = "info",
    ) -> None:
        """Run the HTTP API (FastAPI under uvicorn). OpenAPI docs at /docs."""
        _serve(app_factory, host, port, workers, log_level)

    app.command("serve")(serve)
    app.add_typer(keys_app, name="keys")
