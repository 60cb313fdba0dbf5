"""Database engine, session factory and the declarative base with a naming convention."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from weakref import WeakKeyDictionary

import asyncpg
from sqlalchemy import ColumnElement, DateTime, MetaData, Result, event, literal
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Session, SessionTransaction
from sqlalchemy.types import TypeDecorator
from sqlalchemy.util import await_

from app.core.retry import RetryStrategy

log = logging.getLogger(__name__)
T = TypeVar("T")

SQLITE_INTERRUPT_GRACE_SECONDS = 1.0
# A pooled PostgreSQL connection given back this recently is handed out again without a ping
# (HikariCP's "alive bypass window" is 500 ms too): see `_asyncpg_ping`.
PING_BYPASS_SECONDS = 0.5

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Base of every ORM model."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime: `timestamptz` on PostgreSQL, normalised text on SQLite."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def create_engine(
    url: str, *, ping_bypass_seconds: float = PING_BYPASS_SECONDS, **kwargs: Any
) -> AsyncEngine:
    """An async engine; SQLite gets WAL, a busy timeout and one writer at a time.

    On PostgreSQL (asyncpg) a pooled connection is checked before each checkout unless it was
    given back less than `ping_bypass_seconds` ago and its socket is still open (see
    `_asyncpg_ping`)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        kwargs.setdefault("pool_size", 10)
        kwargs.setdefault("max_overflow", 10)
        kwargs.setdefault("pool_pre_ping", True)
        engine = create_async_engine(url, **kwargs)
        if engine.dialect.driver == "asyncpg":
            returned: WeakKeyDictionary[Any, float] = WeakKeyDictionary()

            @event.listens_for(engine.sync_engine, "checkin")
            def _on_checkin(dbapi_connection: Any, _record: Any) -> None:
                if dbapi_connection is not None:  # None: it was invalidated
                    returned[dbapi_connection.driver_connection] = time.monotonic()

            engine.dialect.do_ping = functools.partial(  # type: ignore[method-assign]
                _asyncpg_ping, returned=returned, bypass_seconds=ping_bypass_seconds
            )
        return engine
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, connect_args={"timeout": 30}, **kwargs)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin (see `_on_begin`).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Take the write lock up front: read-then-write transactions never deadlock on upgrade.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _asyncpg_ping(
    dbapi_connection: Any,
    *,
    returned: WeakKeyDictionary[Any, float] | None = None,
    bypass_seconds: float = 0.0,
) -> bool:
    """The pool's check of a connection before each checkout, in one round trip: `;` outside
    a transaction. SQLAlchemy's own asyncpg ping wraps it in BEGIN and ROLLBACK (for PgBouncer
    in transaction mode, which this service does not support: see docs/operations.md), three
    round trips for every session a request or a job opens. A dead connection raises here as a
    disconnect, and the pool replaces it, as with the stock ping.

    No round trip at all for a connection given back to the pool less than `bypass_seconds`
    ago (`returned`: when each was) whose socket is still open: under load that is nearly every
    checkout. A server that closed the connection (a restart, `pg_terminate_backend`) has
    closed its socket, which asyncpg sees, and the connection is pinged and replaced as before;
    only a connection cut without a word (a network partition) in that half second would fail
    on its first statement instead, as it could just after any ping."""
    driver = dbapi_connection.driver_connection
    at = None if returned is None else returned.get(driver)
    if at is not None and time.monotonic() - at < bypass_seconds and not driver.is_closed():
        return True
    try:
        await_(dbapi_connection._connection.fetchrow(";"))
    except Exception as error:
        dbapi_connection._handle_exception(error)
    return True


@asynccontextmanager
async def query_deadline(session: AsyncSession, seconds: float) -> AsyncIterator[None]:
    """Bound the queries the block runs on `session` to `seconds` in all; TimeoutError past it.

    On PostgreSQL the timeout's cancellation is enough: SQLAlchemy's asyncpg adapter gives up
    the query and discards the connection. SQLite's driver runs the query in a thread that no
    cancellation reaches: the cancelled task would wait for the query to end before it could
    roll back, however long that takes. So there the query is interrupted at the deadline
    (`sqlite3_interrupt`), ends with an error, and that error becomes the TimeoutError; the
    cancellation stays as a fallback, `SQLITE_INTERRUPT_GRACE_SECONDS` later."""
    if session.get_bind().dialect.name != "sqlite":
        async with asyncio.timeout(seconds):
            yield
        return
    async with asyncio.timeout(seconds + SQLITE_INTERRUPT_GRACE_SECONDS):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        connection = await session.connection()
        driver: Any = (await connection.get_raw_connection()).driver_connection  # aiosqlite's
        inside = True
        interrupting: set[asyncio.Task[None]] = set()

        async def interrupt() -> None:
            if inside:  # never a statement run after the block, such as the session's rollback
                await driver.interrupt()

        def start_interrupt() -> None:
            task = loop.create_task(interrupt())
            interrupting.add(task)
            task.add_done_callback(interrupting.discard)

        handle = loop.call_at(deadline, start_interrupt)
        try:
            yield
        except OperationalError as exc:
            if loop.time() < deadline:
                raise
            raise TimeoutError(f"interrupted at the deadline of {seconds:g} s") from exc
        finally:
            inside = False
            handle.cancel()


async def autocommit(session: AsyncSession) -> bool:
    """On PostgreSQL, let each statement the session runs from here commit by itself: no BEGIN
    and no COMMIT around them, two round trips fewer per session. For a block whose statements
    need no transaction around them: reads, and writes each atomic on its own (one conditional
    update, one statement with its CTEs); never for writes that must commit together. Call it
    before the session's first statement; a no-op on SQLite (whose transactions take the write
    lock up front, see `create_engine`) and inside a transaction. The connection goes back to
    the pool with its usual isolation level. True when statements now commit by themselves."""
    if session.get_bind().dialect.name == "postgresql" and not session.in_transaction():
        await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        return True
    return False


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded attributes after commit."""
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


_AFTER_COMMIT = "imagegen_after_commit"


def after_commit(session: AsyncSession | Session, action: Callable[[], None]) -> None:
    """Run `action` once the session's current transaction has committed; never if it ends
    otherwise (rollback, close, a lost connection). For logs that state what was written."""
    session.info.setdefault(_AFTER_COMMIT, []).append(action)


@event.listens_for(Session, "after_commit")
def _run_after_commit(session: Session) -> None:
    for action in session.info.pop(_AFTER_COMMIT, ()):
        try:
            action()
        except Exception:  # the commit stands: an action must not make it look failed
            log.exception("an after-commit action failed")


@event.listens_for(Session, "after_transaction_end")
def _forget_uncommitted(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # the outermost transaction ended without a commit
        session.info.pop(_AFTER_COMMIT, None)


def upsert_insert(session: AsyncSession) -> Any:
    """The `insert` with ON CONFLICT support of the session's database."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert
    return sqlite.insert


def as_expression(value: Any, column: Any) -> Any:
    """A SQL expression (a bound parameter, a column) as is; a plain value as a literal of the
    column's type. Lets one statement builder serve values and compiled-once parameters."""
    return value if isinstance(value, ColumnElement) else literal(value, column.type)


def matched_any(result: Result[Any]) -> bool:
    """Whether an UPDATE or DELETE matched a row: its rowcount (False when it has none)."""
    return bool(getattr(result, "rowcount", 0))


def asyncpg_dsn(url: str) -> str:
    """The plain `postgresql://` DSN asyncpg takes for a SQLAlchemy URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


# Waits between attempts of a write that must not be lost to a database restart or a killed
# connection: 0.5 s doubling to 30 s, seven of them (about a minute in all).
DURABLE_RETRY = RetryStrategy(base=timedelta(seconds=0.5), cap=timedelta(seconds=30), jitter=0.0)
DURABLE_RETRIES = 7


# The errors of statements run straight on asyncpg (app/core/pg_compiled.py): the server's, and
# the connection's (lost, closed, or in a state it cannot run them in).
_DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError)


async def write_durably(
    write: Callable[[], Awaitable[T]], *, what: str, extra: dict[str, Any]
) -> T:
    """Run `write` (one transaction), again after each database error, for about a minute.

    For records of something that already happened outside (an upstream id, a delivered
    notification): losing them would make the service repeat that thing."""
    for failures in range(1, DURABLE_RETRIES + 1):
        try:
            return await write()
        except (SQLAlchemyError, OSError, *_DRIVER_ERRORS) as exc:
            delay = DURABLE_RETRY.delay(failures).total_seconds()
            log.warning(
                f"could not record {what}; retrying",
                extra=extra | {"error": str(exc)[:300], "retry_in": delay},
            )
            await asyncio.sleep(delay)
    return await write()
