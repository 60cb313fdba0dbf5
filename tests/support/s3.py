"""A real S3-compatible server for tests: moto in server mode on a loopback port."""

from __future__ import annotations

import contextlib
import hashlib
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

BUCKET = "imagegen-tests"
KEY_ID = "testing-key-id"
SECRET = "testing-secret-key"


@dataclass
class S3Server:
    """A running moto server with one bucket."""

    endpoint: str
    client: Any  # boto3 S3 client

    def env(self, endpoint: str | None = None) -> dict[str, str]:
        """The standard AWS variables pointing at this server (or at `endpoint`)."""
        return {
            "AWS_ACCESS_KEY_ID": KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint or self.endpoint,
            "AWS_ALLOW_HTTP": "true",
        }

    def new_prefix(self) -> str:
        """An unused prefix, so tests never see each other's objects."""
        return f"run-{uuid.uuid4().hex[:12]}"

    def objects(self, prefix: str) -> dict[str, str]:
        """key -> sha256 of every object under `prefix`."""
        listed = self.client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        found = {}
        for item in listed.get("Contents", []):
            body = self.client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
            found[item["Key"]] = hashlib.sha256(body).hexdigest()
        return found


@contextlib.contextmanager
def running_s3() -> Iterator[S3Server]:
    """Start moto, create the bucket; stop it afterwards."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import boto3  # type: ignore[import-untyped]
        from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
    )
    client.create_bucket(Bucket=BUCKET)
    try:
        yield S3Server(endpoint=endpoint, client=client)
    finally:
        client.close()
        server.stop()
