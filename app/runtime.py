"""Everything one process holds: database engine, HTTP clients, object store, job contexts.

`serve` and `worker` build it the same way, so a worker replica and an API replica with
workers run exactly the same handlers."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.archive.archiving import ArchiveContext, Archiver, OwnImages
from app.archive.fetch import create_fetch_client
from app.archive.presenting import present_tasks
from app.archive.thumbnails import Thumbnailer
from app.balance.polling import BalancePoller
from app.core.config import SIMULATOR_API_KEY, Settings
from app.core.db import asyncpg_dsn, create_engine, create_sessionmaker
from app.core.http import create_http_client
from app.core.pg_compiled import LazyPool
from app.core.safe_http import FetchPolicy
from app.notify.notifying import Notifier, NotifyContext, create_notify_client
from app.provider.evolink import EvolinkClient
from app.provider.files import ProviderFilesClient
from app.storage.store import ObjectStore
from app.tasks.context import TaskContext
from app.tasks.polling import Poller
from app.tasks.submission import Submitter
from app.uploads.sweeping import UploadSweeper
from app.workers.models import JobKind
from app.workers.pg_queue import PgJobQueue
from app.workers.runner import Worker, worker_name

SIMULATOR_MOUNT = "/_simulator"


def provider_files_origin(settings: Settings) -> str:
    """Base URL of the provider's Files API (the built-in simulator's mount in simulator mode;
    the key is the one of `provider_origin`)."""
    if settings.provider == "simulator":
        assert settings.public_base_url is not None
        return settings.public_base_url + SIMULATOR_MOUNT
    return settings.provider_files_base_url


def provider_origin(settings: Settings) -> tuple[str, str]:
    """(base URL, API key) of the upstream this process talks to."""
    if settings.provider == "simulator":
        assert settings.public_base_url is not None
        key = settings.provider_api_key
        return settings.public_base_url + SIMULATOR_MOUNT, (
            key.get_secret_value() if key else SIMULATOR_API_KEY
        )
    assert settings.provider_api_key is not None
    return settings.provider_base_url, settings.provider_api_key.get_secret_value()


# The asyncpg pools of the statements every job runs (app/core/pg_compiled.py's LazyPool): the
# worker loop's own (a cycle, and the lease heartbeat, which nothing else may keep waiting), and
# the job handlers' (each statement one short round trip: a few connections serve the slots).
LOOP_POOL_SIZE = 2
HANDLER_POOL_SIZE = 5


def notify_slots(settings: Settings) -> int:
    """The most worker slots notify jobs may hold in one process (at least one)."""
    return max(1, int(settings.worker_concurrency * settings.notify_slot_share))


@dataclass
class Runtime:
    """The shared resources of a process, opened once and closed once."""

    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    http: httpx.AsyncClient
    fetcher: httpx.AsyncClient
    store: ObjectStore
    tasks: TaskContext
    archive: ArchiveContext
    notify: NotifyContext
    # The console's thumbnails (one decoder process per service process; started on first use).
    thumbnails: Thumbnailer
    # PostgreSQL: the asyncpg pools of the job handlers' first reads and of the worker loop's
    # claims, outcomes and leases; None on SQLite.
    direct: LazyPool | None = None
    loop_pool: LazyPool | None = None

    @classmethod
    def open(cls, settings: Settings) -> Runtime:
        """Create every resource (connections are made lazily, on first use)."""
        engine = create_engine(settings.database_url)
        sessions = create_sessionmaker(engine)
        direct = loop_pool = None
        if not settings.is_sqlite:
            dsn = asyncpg_dsn(settings.database_url)
            direct = LazyPool(dsn, max_size=HANDLER_POOL_SIZE)
            loop_pool = LazyPool(dsn, max_size=LOOP_POOL_SIZE)
        http = create_http_client()
        policy = FetchPolicy(
            allow_private=settings.allow_private_networks, max_bytes=settings.max_image_bytes
        )
        fetcher = create_fetch_client(policy)
        store = ObjectStore.from_url(settings.storage_url)
        base_url, api_key = provider_origin(settings)
        own_images = None
        if settings.provider == "simulator":
            # The built-in simulator's result links point back into this service: they alone get
            # a client that may reach its (loopback) origin, one that follows no redirect.
            own_policy = FetchPolicy(
                allow_private=True, max_bytes=settings.max_image_bytes, max_redirects=0
            )
            own_images = OwnImages(
                prefix=f"{base_url}/files/",
                fetcher=create_fetch_client(own_policy),
                policy=own_policy,
            )
        provider = EvolinkClient(
            http, base_url, api_key, create_read_timeout=settings.provider_create_timeout_seconds
        )
        return cls(
            settings=settings,
            engine=engine,
            sessions=sessions,
            http=http,
            fetcher=fetcher,
            store=store,
            tasks=TaskContext(
                sessions=sessions,
                settings=settings,
                provider=provider,
                callback_base_url=settings.public_base_url or "",
                store=store,
                files=ProviderFilesClient(http, provider_files_origin(settings), api_key),
                direct=direct,
            ),
            archive=ArchiveContext(
                sessions=sessions,
                settings=settings,
                store=store,
                fetcher=fetcher,
                policy=policy,
                own_images=own_images,
                direct=direct,
            ),
            notify=NotifyContext(
                sessions=sessions,
                settings=settings,
                client=create_notify_client(settings),
                present=present_tasks,
            ),
            thumbnails=Thumbnailer(store),
            direct=direct,
            loop_pool=loop_pool,
        )

    def build_worker(self, *, woken_by_api: bool = True) -> Worker:
        """A worker running every job kind. `woken_by_api`: the process's API wakes it on every
        create and callback (`serve`); a `worker` process, which nothing wakes, looks for due
        jobs each time a job finishes as well as at its idle tick (app/workers/signals.py)."""
        return Worker(
            self.sessions,
            {
                JobKind.SUBMIT: Submitter(self.tasks),
                JobKind.POLL: Poller(self.tasks),
                JobKind.ARCHIVE: Archiver(self.archive),
                JobKind.NOTIFY: Notifier(self.notify),
            },
            concurrency=self.settings.worker_concurrency,
            lease=self.settings.job_lease_seconds,
            grace=self.settings.shutdown_grace_seconds.total_seconds(),
            caps={JobKind.NOTIFY: notify_slots(self.settings)},
            # PostgreSQL: the loop's claims and outcomes straight on asyncpg.
            queue=None if self.loop_pool is None else PgJobQueue(self.loop_pool),
            claim_on_finish=not woken_by_api,
        )

    def build_balance_poller(self) -> BalancePoller:
        """The poller of the provider's balance (one poll per period across all replicas)."""
        return BalancePoller(
            self.sessions,
            self.tasks.provider,
            every=self.settings.provider_credits_poll_seconds,
            warn_below=self.settings.provider_credits_warn_below,
            holder=worker_name(),
        )

    async def run_workers(self, worker: Worker, stop: asyncio.Event) -> None:
        """The job worker, the periodic upload sweep (app/uploads/sweeping.py) and the poller of
        the provider's balance (app/balance/polling.py) until `stop`: every process that runs
        workers runs all three."""
        await asyncio.gather(
            worker.run(stop),
            UploadSweeper(self.sessions, self.store).run(stop),
            self.build_balance_poller().run(stop),
        )

    async def close(self) -> None:
        """Close clients and connections, end the thumbnail decoder process."""
        await self.thumbnails.aclose()
        await self.fetcher.aclose()
        if self.archive.own_images is not None:
            await self.archive.own_images.fetcher.aclose()
        await self.notify.client.aclose()
        await self.http.aclose()
        for pool in (self.direct, self.loop_pool):
            if pool is not None:
                await pool.aclose()
        await self.engine.dispose()
