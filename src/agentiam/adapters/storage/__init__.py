"""Storage on SQLite (default) and PostgreSQL, one SQLAlchemy Core implementation."""
