"""Real queries with known costs, for tests of what the service does when the database is slow."""

from __future__ import annotations

from sqlalchemy import text

# Counts an endless series: never ends by itself, on SQLite or PostgreSQL, in constant memory.
ENDLESS = text(
    "WITH RECURSIVE series(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM series) "
    "SELECT count(*) FROM series"
)
