"""The throughput rounds: every copy path timed in turn, and the table of their medians."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import obstore
from obstore.store import LocalStore, S3Store

from app.archive.archiving import image_key
from app.archive.fetch import create_fetch_client
from app.provider.types import PIXELS
from app.storage.store import ObjectStore

from .config import BUCKET, MIB, POLICY, SIMULATOR_CACHE, SIZE, TARGET_RATIO
from .copies import (
    Copy,
    CopyPath,
    SourceImage,
    check,
    gateway_copy,
    in_bucket,
    in_directory,
    plain_file_copy,
    plain_obstore_copy,
    prepare_images,
    stored_bytes_put,
)
from .servers import Server, cpu_seconds, s3_client, s3_environment


async def timed(path: CopyPath, copies: list[Copy], concurrency: int, sim: Server) -> None:
    """Make all `copies`, `concurrency` at a time; record seconds, bytes and the CPU time of this
    process (every thread: obstore uploads on its own runtime threads) and of the simulator and
    the path's S3 server processes; then check and clear."""
    pending = iter(copies)
    total = 0

    async def worker() -> None:
        nonlocal total
        for item in pending:
            size = await path.copy(item)  # not `total += await ...`: that loses updates
            total += size

    servers = [sim] if path.server is None else [sim, path.server]
    before = [cpu_seconds(server.pid) for server in servers]
    cpu, started = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    used = [cpu_seconds(s.pid) - b for s, b in zip(servers, before, strict=True)] + [0.0]
    check(copies, [await asyncio.to_thread(path.stored, item) for item in copies], path.name)
    await asyncio.to_thread(path.clear)
    path.runs.append((seconds, total, cpu, used[0], used[1]))


@dataclass(frozen=True)
class S3Target:
    """An S3 server with the stores the benchmark copies to."""

    server: Server
    gateway: ObjectStore  # the production store, s3://bucket/gateway
    plain: S3Store  # obstore directly, prefix plain
    unsigned: ObjectStore  # the production store with AWS_UNSIGNED_PAYLOAD=true


async def s3_target(server: Server) -> S3Target:
    """Create the bucket on `server`, build its stores and make a first put (connections,
    credentials and the server's first volume ready before timing)."""
    await asyncio.to_thread(s3_client(server.url).create_bucket, Bucket=BUCKET)
    with s3_environment(server.url):
        gateway = ObjectStore.from_url(f"s3://{BUCKET}/gateway")
        plain = S3Store(BUCKET, prefix="plain", client_options={"allow_http": True})
    with s3_environment(server.url, AWS_UNSIGNED_PAYLOAD="true"):
        unsigned = ObjectStore.from_url(f"s3://{BUCKET}/unsigned")
    for store in (gateway, unsigned):
        await store.check_writable()
    await obstore.put_async(plain, "probe", b"probe")
    await obstore.delete_async(plain, "probe")
    return S3Target(server, gateway, plain, unsigned)


async def throughput(
    sim: Server, tmp: Path, s3_servers: list[Server], images: int, concurrency: int, rounds: int
) -> list[CopyPath]:
    width, height = PIXELS[SIZE]
    distinct = max(1, min(images, SIMULATOR_CACHE // (width * height * 3)))
    sources = await prepare_images(sim.url, distinct, SIZE)
    copies = [
        Copy(source, image_key(f"bench-{i:04d}-{source.task_id}", 0))
        for i, source in ((i, sources[i % len(sources)]) for i in range(images))
    ]
    dirs = {name: tmp / name for name in ("baseline", "gateway", "plain")}
    for directory in dirs.values():
        directory.mkdir()
    client = httpx.AsyncClient(timeout=60)
    fetcher = create_fetch_client(POLICY)
    try:
        targets = [await s3_target(server) for server in s3_servers]
        bodies = await downloaded(client, sources)
        paths = [
            in_directory(
                "plain: httpx stream -> file (baseline)",
                plain_file_copy(client, dirs["baseline"]),
                dirs["baseline"],
                lambda key: key.replace("/", "_"),
            ),
            in_directory(
                "gateway -> local store (file://)",
                gateway_copy(fetcher, ObjectStore.from_url(f"file://{dirs['gateway']}")),
                dirs["gateway"],
                lambda key: key,
            ),
        ]
        for target in targets:
            name = target.server.name
            paths.append(
                in_bucket(
                    f"gateway -> S3 ({name})",
                    gateway_copy(fetcher, target.gateway),
                    target.server,
                    "gateway",
                )
            )
            if name != "moto":  # moto's CPU would hide the difference
                paths.append(
                    in_bucket(
                        f"gateway -> S3 ({name}), unsigned payload",
                        gateway_copy(fetcher, target.unsigned),
                        target.server,
                        "unsigned",
                    )
                )
        paths.append(
            in_directory(
                "ref: httpx -> obstore put, file://",
                plain_obstore_copy(client, LocalStore(dirs["plain"])),
                dirs["plain"],
                lambda key: key,
            )
        )
        for target in targets:
            paths.append(
                in_bucket(
                    f"ref: httpx -> obstore put, S3 ({target.server.name})",
                    plain_obstore_copy(client, target.plain),
                    target.server,
                    "plain",
                )
            )
        for target in targets:
            paths.append(
                in_bucket(
                    f"ceiling: bytes in memory -> S3 put ({target.server.name})",
                    stored_bytes_put(target.plain, bodies),
                    target.server,
                    "plain",
                )
            )
        for round_index in range(rounds):
            shift = round_index % len(paths)  # each path takes its turn at going first
            for path in paths[shift:] + paths[:shift]:
                await timed(path, copies, concurrency, sim)
            print(f"round {round_index + 1}/{rounds} done ({load()})", file=sys.stderr)
    finally:
        await client.aclose()
        await fetcher.aclose()
    return paths


async def downloaded(client: httpx.AsyncClient, sources: list[SourceImage]) -> dict[str, bytes]:
    """Each source image's bytes, by URL."""
    bodies = {}
    for source in sources:
        response = await client.get(source.url)
        bodies[source.url] = response.raise_for_status().content
    return bodies


def load() -> str:
    """The load averages, as uptime shows them."""
    return "load average: " + ", ".join(f"{value:.2f}" for value in os.getloadavg())


def print_table(
    paths: list[CopyPath], images: int, concurrency: int, rounds: int, loads: tuple[str, str]
) -> None:
    base_seconds, base_bytes, *_ = paths[0].median()
    print(
        f"\narchive copy throughput: {images} noise PNG images of {base_bytes / images / MIB:.2f} "
        f"MiB from the simulator process, concurrency {concurrency}, median of {rounds} rounds, "
        f"{os.cpu_count()} CPUs"
    )
    print(f"before: {loads[0]}; after: {loads[1]}")
    per_round = [", ".join(f"{images / run[0]:.0f}" for run in path.runs) for path in paths]
    width = max(18, *map(len, per_round))
    name_width = max(len(path.name) for path in paths)
    print(
        f"| {'path':{name_width}} | images | mean MiB | seconds | images/s | MiB/s | vs baseline "
        f"| CPU ms/image: copier + simulator + S3 server | {'images/s per round':{width}} |"
    )
    print(
        f"|{'-' * (name_width + 2)}|{'-' * 8}|{'-' * 10}|{'-' * 9}|{'-' * 10}|{'-' * 7}"
        f"|{'-' * 13}|{'-' * 46}|{'-' * (width + 2)}|"
    )
    for path, rounds_text in zip(paths, per_round, strict=True):
        seconds, total, cpu, simulator_cpu, s3_cpu = path.median()
        split = f"{cpu / images * 1000:.1f} + {simulator_cpu / images * 1000:.1f} + " + (
            "-" if path.server is None else f"{s3_cpu / images * 1000:.1f}"
        )
        print(
            f"| {path.name:{name_width}} | {images:6} | {total / images / MIB:8.2f} "
            f"| {seconds:7.2f} | {images / seconds:8.1f} | {total / seconds / MIB:5.0f} "
            f"| {base_seconds / seconds:11.0%} | {split:44} | {rounds_text:{width}} |"
        )
    for path in paths:
        if path.name.startswith("gateway"):
            ratio = base_seconds / path.median()[0]
            verdict = "holds" if ratio >= TARGET_RATIO else "MISSED"
            print(f"{path.name} / baseline: {ratio:.0%} (target >= {TARGET_RATIO:.0%}: {verdict})")
    ceilings = {p.server.name: p for p in paths if p.name.startswith("ceiling") and p.server}
    for path in paths:
        ceiling = ceilings.get(path.server.name) if path.server is not None else None
        if path.name.startswith("gateway") and ceiling is not None:
            ratio = ceiling.median()[0] / path.median()[0]
            print(f"{path.name} / {ceiling.name}: {ratio:.0%}")
    print(
        "CPU: this process (all threads), the simulator process and the S3 server process, "
        "during the timed copies; every stored object's sha256 matched the simulator's"
    )
