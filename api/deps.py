"""FastAPI dependencies: the app state and its services, a database session, and the caller (auth).

Everything heavy lives on `app.state` (built once by the lifespan in api/app.py); dependencies only hand it out.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from ctxqa.api.errors import ApiError
from ctxqa.api.keys import LOCAL_PRINCIPAL, Principal, verify_key
from ctxqa.api.state import AppState, Services
from ctxqa.rag.config import Settings


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.ctxqa
    return state


def get_settings(state: Annotated[AppState, Depends(get_state)]) -> Settings:
    return state.settings


def get_services(state: Annotated[AppState, Depends(get_state)]) -> Services:
    return state.services


def get_session(services: Annotated[Services, Depends(get_services)]) -> Iterator[Session]:
    """A transaction scope for one request (commits on success, rolls back on error)."""
    with services.db.session() as s:
        yield s


bearer = HTTPBearer(auto_error=False, description="An API key from `ctxqa keys create`.")


def get_principal(
    request: Request,
    state: Annotated[AppState, Depends(get_state)],
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """The caller. A plain `def`: FastAPI runs it in the thread pool, so the key lookup never blocks the loop."""
    if state.settings.auth_disabled:
        principal = LOCAL_PRINCIPAL
    else:
        if creds is None or not creds.credentials:
            state.metrics.auth_failures.inc()
            raise ApiError(401, "unauthorized", "missing API key: send 'Authorization: Bearer <key>'",
                           field="Authorization", headers={"WWW-Authenticate": "Bearer"})
        with state.services.db.session() as s:
            found = verify_key(s, creds.credentials.strip())
        if found is None:
            state.metrics.auth_failures.inc()
            raise ApiError(401, "unauthorized", "invalid or revoked API key", field="Authorization",
                           headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        principal = found
    request.state.principal = principal
    return principal


StateDep = Annotated[AppState, Depends(get_state)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
ServicesDep = Annotated[Services, Depends(get_services)]
SessionDep = Annotated[Session, Depends(get_session)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]


