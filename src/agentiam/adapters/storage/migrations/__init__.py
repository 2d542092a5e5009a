"""Alembic migrations (run with ``agentiam db upgrade``)."""
