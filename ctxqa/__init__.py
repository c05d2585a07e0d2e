"""ctxqa: self-hosted, citation-backed answers over your own documents.

One import package laid over the repository's top-level folders, in layers that depend downwards only:

    ctxqa.rag      (rag/)         core: settings, database, embeddings, indexes, retrieval, prompting, generation
    ctxqa.ingest   (ingest/)      loaders, chunking and the ingestion pipeline, on top of the core
    ctxqa.api      (api/)         the FastAPI service, on top of both
    ctxqa.context, ctxqa.cli      process wiring and the command line, on top of everything

`ctxqa.migrations` (migrations/) holds the Alembic scripts; the core finds them by file path, never by import.
"""

__version__ = "0.1.0"
