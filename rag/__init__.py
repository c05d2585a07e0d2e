"""ctxqa's core (`ctxqa.rag`): settings, database, embeddings, indexes, retrieval, prompting, generation, citations.

Nothing here imports `ctxqa.ingest`, `ctxqa.api`, the CLI or the process wiring (tests/test_layers.py holds that).
"""
