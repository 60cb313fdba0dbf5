"""Core statements compiled once for asyncpg and run on plain asyncpg pools: the PostgreSQL
paths that run several times per task (the callback fast path, the worker's job queue), where
SQLAlchemy's execution would cost several times the round trip itself.

A statement stays written with SQLAlchemy (one source of truth with the ORM paths): `Compiled`
takes its SQL text once, with the bind processors of its parameters' types, and orders a dict of
values into asyncpg's positional arguments."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import ClauseElement
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect

_DIALECT = asyncpg_dialect()  # type: ignore[no-untyped-call]


@dataclass(frozen=True, slots=True)
class Compiled:
    """A statement compiled once for asyncpg: its SQL and how to order its arguments."""

    sql: str
    names: tuple[str, ...]  # the named parameters, in $n order
    fixed: tuple[Any, ...]  # processed values of the literals, None where a name goes
    processors: tuple[Callable[[Any], Any] | None, ...]
    # (position, name, bind processor or None when it is the identity) of each named parameter
    slots: tuple[tuple[int, str, Callable[[Any], Any] | None], ...]

    @classmethod
    def of(cls, statement: ClauseElement, names: set[str]) -> Compiled:
        compiled: Any = statement.compile(dialect=_DIALECT)  # a SQLCompiler
        order = tuple(compiled.positiontup or ())
        binds = [compiled.binds[name] for name in order]
        processors = tuple(b.type.dialect_impl(_DIALECT).bind_processor(_DIALECT) for b in binds)
        fixed = tuple(
            None if name in names else (p(b.value) if p else b.value)
            for name, b, p in zip(order, binds, processors, strict=True)
        )
        missing = names - set(order)
        assert not missing, f"parameters not in the statement: {missing}"
        # The literals go into the SQL text: asyncpg need not encode them on every execution.
        inlined = {i: text for i, v in enumerate(fixed) if (text := _sql_literal(v)) is not None}
        kept = [i for i in range(len(order)) if i not in inlined]
        number = {i: f"${n}" for n, i in enumerate(kept, start=1)}

        def placeholder(match: re.Match[str]) -> str:
            i = int(match[1]) - 1
            return inlined.get(i) or number[i]

        sql = _PLACEHOLDER.sub(placeholder, str(compiled))
        order = tuple(order[i] for i in kept)
        fixed = tuple(fixed[i] for i in kept)
        processors = tuple(processors[i] for i in kept)
        slots = tuple(
            (i, name, p)
            for i, (name, p) in enumerate(zip(order, processors, strict=True))
            if name in names
        )
        return cls(sql, order, fixed, processors, slots)

    @classmethod
    def of_named(cls, statement: ClauseElement) -> Compiled:
        """`of`, with every named `bindparam` of the statement as a parameter (the values of
        `literal()`s, anonymous, go into the SQL text)."""
        compiled: Any = statement.compile(dialect=_DIALECT)
        named = {name for name, bind in compiled.binds.items() if not bind.unique}
        return cls.of(statement, named)

    def arguments(self, values: Mapping[str, Any]) -> list[Any]:
        """The positional arguments for `values` by parameter name (a name not in `values`
        keeps its fixed value)."""
        arguments = list(self.fixed)
        for i, name, p in self.slots:
            if name in values:
                value = values[name]
                arguments[i] = value if p is None else p(value)
        return arguments


@functools.cache
def compiled_once(statement: ClauseElement) -> Compiled:
    """`Compiled.of_named` of a statement built once (or once per shape): compiled once."""
    return Compiled.of_named(statement)


_PLACEHOLDER = re.compile(r"\$(\d+)\b")


def _sql_literal(value: Any) -> str | None:
    """The SQL text of a literal parameter value (None: it stays a parameter)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, str):
        return "'" + str.replace(value, "'", "''") + "'"
    return None


async def _setup(connection: asyncpg.Connection) -> None:
    """JSON parameters as the compiled statements give them (text), as SQLAlchemy does."""
    await connection.set_type_codec(
        "json", encoder=lambda text: text, decoder=json.loads, schema="pg_catalog"
    )


async def _no_reset(_connection: asyncpg.Connection) -> None:
    """Connections here never hold session state: every statement is its own transaction."""


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 20) -> asyncpg.Pool:
    """A pool of its own for compiled statements (each statement its own transaction)."""
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, reset=_no_reset, init=_setup
    )
    return pool


class LazyPool:
    """An asyncpg pool opened at its first use (a process that never needs it opens none), for
    compiled statements that run several times per task. Waiting for a free connection gives
    up after `acquire_timeout` (as SQLAlchemy's pool does, 30 s by default)."""

    def __init__(self, dsn: str, *, max_size: int, acquire_timeout: float = 30.0) -> None:
        self._dsn = dsn
        self._max_size = max_size
        self._acquire_timeout = acquire_timeout
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()
        self._closed = False

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        pool = self._pool
        if pool is None:
            async with self._opening:
                if self._closed:
                    raise RuntimeError("the pool is closed")
                if self._pool is None:
                    self._pool = await create_pool(self._dsn, max_size=self._max_size)
                pool = self._pool
        async with pool.acquire(timeout=self._acquire_timeout) as connection:
            yield connection

    async def fetch(self, compiled: Compiled, values: Mapping[str, Any]) -> list[asyncpg.Record]:
        """The rows of one compiled statement (its own transaction)."""
        async with self.acquire() as connection:
            rows: list[asyncpg.Record] = await connection.fetch(
                compiled.sql, *compiled.arguments(values)
            )
            return rows

    async def aclose(self) -> None:
        """Close the pool (once its connections are given back); it is not opened again."""
        async with self._opening:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
