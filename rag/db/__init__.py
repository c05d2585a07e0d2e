"""Database: typed SQLAlchemy 2.x models, engine/session helpers and repository functions.

Alembic (migrations/) owns the schema; `models.py` mirrors it for the ORM.
"""

from ctxqa.rag.db.models import AnswerLog, ApiKey, Base, Chunk, Collection, Document
from ctxqa.rag.db.session import Database

__all__ = ["ApiKey", "AnswerLog", "Base", "Chunk", "Collection", "Database", "Document"]
