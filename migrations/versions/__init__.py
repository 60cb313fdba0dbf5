"""The revisions, one file each (Alembic loads them by path, not by import)."""
