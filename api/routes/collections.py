"""Collections: list (those the key may use), create (bound to the configured embedding model), delete."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from fastapi import Path as PathParam
from starlette.concurrency import run_in_threadpool

from ctxqa.api.deps import PrincipalDep, StateDep
from ctxqa.api.errors import ERRORS, ApiError, bad_input
from ctxqa.api.jsonbody import JSONRoute
from ctxqa.api.schemas import CollectionCreate, CollectionList, CollectionOut, Deleted
from ctxqa.api.state import AppState
from ctxqa.api.validation import resolve_collection
from ctxqa.rag.db import repo
from ctxqa.rag.originals import prune_unreferenced

router = APIRouter(tags=["collections"], route_class=JSONRoute)


def _out(c: Any, docs: int, chunks: int) -> CollectionOut:
    return CollectionOut(name=c.name, embedding_model=c.embedding_model, embedding_dim=c.embedding_dim,
                         index_type=c.index_type, documents=docs, chunks=chunks, created_at=c.created_at)


@router.get("/v1/collections", response_model=CollectionList, responses={401: ERRORS[401]})
def list_collections(state: StateDep, principal: PrincipalDep) -> CollectionList:
    """Collections the key may use, with their embedding model and sizes."""
    with state.services.db.session() as s:
        rows = repo.list_collections(s)
        return CollectionList(collections=[_out(c, d, n) for c, d, n in rows if principal.allows(c.name)])


def _create(state: AppState, name: str, index_type: str) -> CollectionOut:
    emb = state.services.embedder
    with state.ingest_lock, state.services.db.session() as s:
        if repo.get_collection(s, name) is not None:
            raise ApiError(409, "conflict", f"collection {name!r} already exists", field="name")
        try:
            c = repo.create_collection(s, name, emb.name, emb.dim, index_type)
        except ValueError as e:
            raise bad_input("name", str(e)) from None
        return _out(c, 0, 0)


@router.post("/v1/collections", response_model=CollectionOut, status_code=201, responses={
    k: v for k, v in {**ERRORS, 409: {"model": ERRORS[422]["model"], "description": "Already exists"}}.items()
    if k in (401, 403, 409, 422)})
async def create_collection(body: CollectionCreate, state: StateDep, principal: PrincipalDep) -> CollectionOut:
    """Create an empty collection bound to the configured embedding model."""
    name = resolve_collection(body.name, state.settings, principal, field="name")
    return await run_in_threadpool(_create, state, name, body.index_type)


def _delete(state: AppState, name: str) -> None:
    with state.ingest_lock:
        with state.services.db.session() as s:
            coll = repo.get_collection(s, name)
            if coll is None:
                raise ApiError(404, "not_found", f"collection {name!r} does not exist", field="name")
            cid = coll.id
            repo.delete_collection(s, coll)
        state.services.store.drop(cid)
        prune_unreferenced(state.settings, state.services.db)  # the kept PDF copies of its documents


@router.delete("/v1/collections/{name}", response_model=Deleted, responses={
    k: v for k, v in ERRORS.items() if k in (401, 403, 404, 422)})
async def delete_collection(state: StateDep, principal: PrincipalDep,
                            name: Annotated[str, PathParam(min_length=1, max_length=200)]) -> Deleted:
    """Delete a collection with all its documents and indexes (admin keys only)."""
    name = resolve_collection(name, state.settings, principal, field="name")
    if not principal.admin:
        raise ApiError(403, "forbidden", "deleting a collection needs an admin key", field="name")
    await run_in_threadpool(_delete, state, name)
    return Deleted(name=name)
