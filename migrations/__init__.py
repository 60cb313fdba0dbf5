"""The Alembic scripts; the wheel ships them as the package app._migrations (pyproject.toml)."""
