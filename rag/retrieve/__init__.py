"""Retrieval: dense + lexical search, fusion, filters and optional cross-encoder re-ranking."""
