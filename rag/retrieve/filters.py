"""Metadata filters for retrieval, resolved to the set of chunk ids a search may return.

    Filters(source_prefix=, source_glob=, document_ids=, date_from=, date_to=, metadata={key: value})
    repo.allowed_chunk_ids(session, collection_id, filters) -> np.ndarray | None   (None: no restriction; SQL in
    rag/db/repo.py, which calls `Filters.matches` on the candidate documents)

All conditions must hold (AND). The ids are handed to both indexes, which restrict their candidates *before* the
top-k cut, so a filtered search still returns k hits when k matching chunks exist.

- `source_prefix`: the document's source starts with it (case-sensitive, like paths).
- `source_glob`: shell-style pattern over the whole source (`fnmatch`, case-sensitive; `*` also matches `/`).
- `document_ids`: only these documents.
- `date_from` / `date_to`: inclusive bounds on the document date: the `date` metadata (front matter, sidecar,
  `--meta date=...`) or, without one, the file's modification date — the date hits show. A document without
  any date never matches a date bound.
- `metadata`: every key must equal the given value in the document's metadata. Values compare
  equal when equal as JSON values or as strings (`--meta year=2020` stores "2020"; a filter may say 2020); when
  the stored value is a list, the filter value must be one of its items. A list as filter value means "any of".
"""

from __future__ import annotations

import fnmatch
from datetime import date, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Filters(BaseModel):
    """Conditions a hit's document must meet (all of them)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source_prefix: str | None = Field(None, max_length=2000, description="Source starts with this.")
    source_glob: str | None = Field(None, max_length=2000, description="Source matches this shell pattern.")
    document_ids: tuple[int, ...] | None = Field(None, max_length=10_000, description="Only these documents.")
    date_from: date | None = Field(None, description="Document date on or after (inclusive).")
    date_to: date | None = Field(None, description="Document date on or before (inclusive).")
    metadata: dict[str, Any] = Field(default_factory=dict, description="key = value (all must match).")

    @field_validator("date_from", "date_to", mode="before")
    @classmethod
    def _date(cls, v: Any) -> Any:
        if isinstance(v, datetime):
            return v.date()
        if isinstance(v, str) and len(v) > 10 and v[10] in "T ":
            return v[:10]
        return v

    @field_validator("metadata")
    @classmethod
    def _meta(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key, value in v.items():
            if not key:
                raise ValueError("metadata filter keys must be non-empty")
            values = value if isinstance(value, (list, tuple)) else [value]
            for item in values:
                if isinstance(item, (dict, list, tuple)):
                    raise ValueError(f"metadata filter {key!r}: values must be scalars or a list of scalars")
        return v

    @model_validator(mode="after")
    def _range(self) -> Filters:
        if self.date_from and self.date_to and self.date_from > self.date_to:
            raise ValueError(f"date_from ({self.date_from}) is after date_to ({self.date_to})")
        return self

    @classmethod
    def coerce(cls, value: Filters | dict[str, Any] | None) -> Filters | None:
        """Accept a Filters, a plain dict (the API passes JSON as given; invalid → pydantic ValidationError)
        or None. An empty filter is None."""
        if value is None:
            return None
        f = value if isinstance(value, Filters) else cls.model_validate(value)
        return None if f.is_empty() else f

    def is_empty(self) -> bool:
        return (self.source_prefix is None and self.source_glob is None and self.document_ids is None
                and self.date_from is None and self.date_to is None and not self.metadata)

    def key(self) -> str:
        """A stable string identifying the filter (cache key)."""
        return self.model_dump_json()

    # -- evaluation ----------------------------------------------------------------------------------------
    def matches(self, *, document_id: int, source: str, meta: dict[str, Any] | None,
                mtime: datetime | None = None) -> bool:
        """Whether one document passes (used on documents fetched by `allowed_chunk_ids`, and on hits)."""
        if self.document_ids is not None and document_id not in self.document_ids:
            return False
        if self.source_prefix is not None and not source.startswith(self.source_prefix):
            return False
        if self.source_glob is not None and not fnmatch.fnmatchcase(source, self.source_glob):
            return False
        meta = meta or {}
        if self.date_from is not None or self.date_to is not None:
            d = document_date(meta, mtime)
            if d is None:
                return False
            if self.date_from is not None and d < self.date_from:
                return False
            if self.date_to is not None and d > self.date_to:
                return False
        for key, want in self.metadata.items():
            if key not in meta or not value_matches(meta[key], want):
                return False
        return True


def _scalar_eq(have: Any, want: Any) -> bool:
    if have == want and type(have) is not bool and type(want) is not bool:
        return True
    if isinstance(have, bool) or isinstance(want, bool):
        return str(have).lower() == str(want).lower()
    return str(have) == str(want)


def value_matches(have: Any, want: Any) -> bool:
    wants = list(want) if isinstance(want, (list, tuple)) else [want]
    haves = list(have) if isinstance(have, (list, tuple)) else [have]
    return any(_scalar_eq(h, w) for h in haves for w in wants)


def document_date(meta: dict[str, Any], mtime: datetime | None) -> date | None:
    """The date a document is filtered by: `date` metadata when it parses, else the file's mtime."""
    value = meta.get("date")
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, (str, int)) and str(value).strip():
        text = str(value).strip()
        for cut in (10, 7, 4):  # YYYY-MM-DD, YYYY-MM, YYYY
            try:
                if cut == 10:
                    return date.fromisoformat(text[:10])
                if cut == 7 and len(text) >= 7 and text[4] == "-":
                    return date(int(text[:4]), int(text[5:7]), 1)
                if cut == 4 and text[:4].isdigit():
                    return date(int(text[:4]), 1, 1)
            except (ValueError, IndexError):
                continue
    if mtime is not None:
        return mtime.date()
    return None
