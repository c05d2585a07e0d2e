"""Indexes over a collection: the faiss vector index, the BM25 lexical index, and the store that keeps both in step with the database."""
