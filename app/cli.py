"""The console script `imagegen-gateway`: serve, worker, migrate, generate, simulate-provider."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from urllib.parse import urlsplit

from pydantic import ValidationError

from app.core.config import Settings, describe_error
from app.core.logging import configure_logging, register_secrets

log = logging.getLogger("app.cli")


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, or exit with one line naming the variable."""
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        print(describe_error(exc), file=sys.stderr)
        raise SystemExit(2) from None
    register_secrets(*secret_values(settings))
    for line in settings.weaknesses():
        if line not in _reported:  # `serve` may load the settings twice
            _reported.add(line)
            log.warning("weak configuration: %s", line)
    return settings


_reported: set[str] = set()


# Credentials of the object stores, read by obstore from the environment.
_STORE_SECRET_VARIABLES = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_KEY",
    "AZURE_CLIENT_SECRET",
)


def secret_values(settings: Settings) -> list[str]:
    """Every secret this process knows, to be masked in its logs."""
    values = [
        secret.get_secret_value()
        for secret in (
            settings.provider_api_key,
            settings.callback_secret,
            settings.console_secret,
            settings.notify_secret,
        )
        if secret is not None
    ]
    values += list(settings.callers) + list(settings.operators)
    password = urlsplit(settings.database_url).password
    if password:
        values.append(password)
    values += [os.environ[name] for name in _STORE_SECRET_VARIABLES if os.environ.get(name)]
    return values


def _fail(message: str) -> None:
    print(f"configuration error: {message}", file=sys.stderr)
    raise SystemExit(2)


def cmd_migrate(_args: argparse.Namespace) -> None:
    """Bring the database schema to head."""
    from app.core.db import create_engine
    from app.core.migrate import upgrade

    settings = load_settings()
    if settings.is_sqlite:
        create_engine(settings.database_url)  # creates the directory of the database file
    upgrade(settings.database_url)
    log.info("database schema is at head")


def cmd_serve(args: argparse.Namespace) -> None:
    """Run the HTTP API (with the workers unless IMAGEGEN_RUN_WORKERS=false)."""
    import uvicorn

    from app.main import create_app

    settings = load_settings()
    if settings.provider == "simulator" and settings.public_base_url is None:
        # The demo: the built-in simulator calls back where this process listens. Only its own
        # callbacks and result links go there; callers' notify_url and other downloads keep the
        # private-address refusal (IMAGEGEN_ALLOW_PRIVATE_NETWORKS is left as it is).
        host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host  # noqa: S104
        settings = load_settings(public_base_url=f"http://{host}:{args.port}")
    if not settings.callers:
        _fail("IMAGEGEN_API_KEYS: no caller keys configured; every /v1 request would be refused")
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_config=None,
        # The client address (the console's sign-in limit) is the connection's peer; forwarded
        # headers are not trusted from anyone (docs/console.md, "Access").
        proxy_headers=False,
        access_log=False,  # request paths carry callback tokens; /metrics has the traffic
        # On SIGTERM: stop accepting, let requests in flight finish for this long; then the
        # in-process workers get the same grace to finish their jobs (docs/operations.md).
        timeout_graceful_shutdown=max(1, round(settings.shutdown_grace_seconds.total_seconds())),
    )


def cmd_worker(_args: argparse.Namespace) -> None:
    """Run the background workers alone."""
    settings = load_settings()
    asyncio.run(_run_worker(settings))


async def _run_worker(settings: Settings) -> None:
    from app.runtime import Runtime

    if settings.public_base_url is None:
        _fail("IMAGEGEN_PUBLIC_BASE_URL: required by the worker to build callback URLs")
    runtime = Runtime.open(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    worker = runtime.build_worker(woken_by_api=False)
    if settings.worker_metrics_port is not None:
        from app.core.metrics import start_http_server

        start_http_server(settings.worker_metrics_port, addr="0.0.0.0")  # noqa: S104
    log.info(
        "worker started",
        extra={"worker": worker.name, "metrics_port": settings.worker_metrics_port},
    )
    try:
        await runtime.run_workers(worker, stop)
    finally:
        await runtime.close()
        log.info("worker stopped", extra={"worker": worker.name})


def cmd_generate(args: argparse.Namespace) -> None:
    """Submit a generation to a running service, show its progress, save the image."""
    from app.client import command as generate_command

    raise SystemExit(generate_command.run(args))


def cmd_simulate_provider(args: argparse.Namespace) -> None:
    """Run the fake upstream as its own process."""
    from app.provider.simulator import cli as simulator_cli

    simulator_cli.run(args)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = argparse.ArgumentParser(prog="imagegen-gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    migrate = commands.add_parser("migrate", help="bring the database schema to head")
    migrate.set_defaults(func=cmd_migrate)

    serve = commands.add_parser("serve", help="run the HTTP API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(func=cmd_serve)

    worker = commands.add_parser("worker", help="run the background workers alone")
    worker.set_defaults(func=cmd_worker)

    from app.client import options as generate_options

    generate = commands.add_parser(
        "generate", help="submit a generation to a running service and save the image"
    )
    generate_options.add_arguments(generate)
    generate.set_defaults(func=cmd_generate)

    from app.provider.simulator import cli as simulator_cli

    simulate = commands.add_parser("simulate-provider", help="run the fake upstream")
    simulator_cli.add_arguments(simulate)
    simulate.set_defaults(func=cmd_simulate_provider)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    level = "INFO"
    with contextlib.suppress(Exception):
        level = Settings().log_level
    configure_logging(level)
    args.func(args)


if __name__ == "__main__":
    main()
