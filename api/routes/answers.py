"""GET /v1/answers/{id}: the audit log entry of an answer (question, answer, citations, model, timings, key)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from fastapi import Path as PathParam

from ctxqa.api.deps import PrincipalDep, StateDep
from ctxqa.api.errors import ERRORS, ApiError
from ctxqa.api.jsonbody import JSONRoute
from ctxqa.api.schemas import AnswerLogOut
from ctxqa.rag.db import repo

router = APIRouter(tags=["answers"], route_class=JSONRoute)


@router.get("/v1/answers/{answer_id}", response_model=AnswerLogOut, responses={
    k: v for k, v in ERRORS.items() if k in (401, 404, 422)})
def get_answer(state: StateDep, principal: PrincipalDep,
               answer_id: Annotated[int, PathParam(ge=1, le=2**31 - 1)]) -> AnswerLogOut:
    """An answer as it was given. Keys see answers about the collections they may use."""
    with state.services.db.session() as s:
        row = repo.get_answer_log(s, answer_id)
        if row is None or (row.collection is not None and not principal.allows(row.collection)):
            raise ApiError(404, "not_found", f"no answer with id {answer_id}")
        return AnswerLogOut(id=row.id, created_at=row.created_at, collection=row.collection, question=row.question,
                            answer=row.answer, abstained=bool(row.abstained), citations=list(row.citations or []),
                            model=row.model, usage=dict(row.usage or {}), timings=dict(row.timings or {}),
                            key_name=row.key_name, grounding=row.grounding,
                            sentences=list(row.sentences or []), mode=row.mode)
