"""API keys: a random secret shown once; only its sha256 and a short prefix are stored.

Secrets look like ``ctxqa_<43 url-safe characters>`` (256 bits). Verification hashes the presented secret and
looks the hash up, so no secret ever sits in the database or the logs.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session

from ctxqa.rag.db import repo
from ctxqa.rag.db.models import ApiKey, utcnow

SECRET_PREFIX = "ctxqa_"
PREFIX_LEN = 12  # "ctxqa_" + 6 characters: enough to recognise a key in a listing, useless for guessing it
_NAME_MAX = 200


class ApiKeyError(ValueError):
    """A key cannot be created or revoked as asked (the message says why)."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key's name, whether it is an admin, and the collections it may use (None = all)."""

    name: str
    admin: bool = False
    collections: frozenset[str] | None = None
    auth_disabled: bool = False

    def allows(self, collection: str) -> bool:
        return self.admin or self.collections is None or collection in self.collections

    @property
    def scoped(self) -> bool:
        return not self.admin and self.collections is not None


LOCAL_PRINCIPAL = Principal(name="local (auth disabled)", admin=True, collections=None, auth_disabled=True)


@dataclass
class CreatedKey:
    name: str
    secret: str  # shown once, never stored
    prefix: str
    admin: bool
    collections: list[str] = field(default_factory=list)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _check_name(name: str) -> str:
    name = (name or "").strip()
    if not name or len(name) > _NAME_MAX or any(ord(c) < 32 for c in name):
        raise ApiKeyError(f"invalid key name {name!r}: 1-{_NAME_MAX} printable characters")
    return name


def create_key(s: Session, name: str, *, collections: list[str] | None = None, admin: bool = False) -> CreatedKey:
    """Create a key and return its secret (the only time it is ever available)."""
    name = _check_name(name)
    existing = repo.key_by_name(s, name)
    if existing is not None:
        state = "revoked" if existing.revoked_at else "active"
        raise ApiKeyError(f"a key named {name!r} already exists ({state}); choose another name")
    colls = sorted({c.strip() for c in (collections or []) if c and c.strip()})
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(name=name, prefix=secret[:PREFIX_LEN], key_hash=hash_secret(secret), admin=bool(admin),
                 collections=colls)
    s.add(row)
    s.flush()
    return CreatedKey(name=name, secret=secret, prefix=row.prefix, admin=row.admin, collections=colls)


def list_keys(s: Session) -> list[ApiKey]:
    return repo.all_keys(s)


def revoke_key(s: Session, name: str) -> ApiKey:
    row = repo.key_by_name(s, name)
    if row is None:
        raise ApiKeyError(f"no key named {name!r}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return row


def _aware(dt: datetime | None) -> datetime | None:
    if dt is not None and dt.tzinfo is None:  # SQLite returns naive datetimes

        return dt.replace(tzinfo=UTC)
    return dt


def verify_key(s: Session, secret: str, *, touch_every: timedelta = timedelta(minutes=1)) -> Principal | None:
    """The principal for a presented secret, or None when it is unknown or revoked."""
    if not secret or not secret.startswith(SECRET_PREFIX) or len(secret) > 200:
        return None
    digest = hash_secret(secret)
    row = repo.key_by_hash(s, digest)
    if row is None or not hmac.compare_digest(row.key_hash, digest) or row.revoked_at is not None:
        return None
    now = utcnow()
    last = _aware(row.last_used_at)
    if last is None or now - last > touch_every:  # bounded write rate: at most one update a minute per key
        row.last_used_at = now
    colls = list(row.collections or [])
    return Principal(name=row.name, admin=bool(row.admin), collections=frozenset(colls) if colls else None)
