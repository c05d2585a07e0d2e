"""ctxqa query side and shared core: settings, database, embeddings, indexes, retrieval, prompting, generation."""

__version__ = "0.1.0"
