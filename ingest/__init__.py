"""Ingestion: discover files, load them into text, chunk, embed and store."""
