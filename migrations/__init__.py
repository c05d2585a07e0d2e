"""Alembic migrations (script_location). Run through `ctxqa db upgrade` or automatically on first use."""
