"""Which store each `IMAGEGEN_STORAGE_URL` names, and which keys the store accepts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from app.storage.store import ObjectStore, UnknownStorageUrl


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


@pytest.mark.parametrize("relative", ["./var/images", "./x", "."])
async def test_relative_file_url_resolves_against_the_working_directory(
    relative: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = ObjectStore.from_url(f"file://{relative}")
    root = (tmp_path / relative).resolve()
    assert root.is_dir()
    await store.put_stream("a/b", _one(b"bytes"), content_type="image/png")
    monkeypatch.chdir(root.parent)  # resolved once: a later chdir changes nothing
    assert (root / "a" / "b").read_bytes() == b"bytes"
    assert await store.list_keys() == ["a/b"]
    assert store.scheme == "file"


async def test_absolute_file_url_creates_the_directory(tmp_path: Path) -> None:
    root = tmp_path / "deep" / "er" / "images"
    store = ObjectStore.from_url(f"file://{root}")
    assert root.is_dir()
    assert await store.list_keys() == []


def test_memory_url() -> None:
    store = ObjectStore.from_url("memory://")
    assert store.scheme == "memory"
    assert not store.supports_signed_urls
    assert ObjectStore.from_url("memory:///").scheme == "memory"
    assert ObjectStore.from_url("MEMORY://").scheme == "memory"


@pytest.mark.parametrize(
    ("url", "scheme"),
    [("s3://bucket/some/prefix", "s3"), ("gs://bucket/prefix", "gs"), ("az://container", "az")],
)
def test_cloud_urls(url: str, scheme: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", "devaccount")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    store = ObjectStore.from_url(url)
    assert store.scheme == scheme
    assert store.supports_signed_urls


def test_a_misconfigured_cloud_store_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT", "AZURE_ACCOUNT_NAME"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(UnknownStorageUrl, match="Account must be specified"):
        ObjectStore.from_url("az://container/prefix")


@pytest.mark.parametrize(
    "url",
    [
        "",
        "images",
        "/var/images",
        "ftp://host/dir",
        "http://example.com/images",
        "gcs://bucket/prefix",
        "s3://",
        "s3:///prefix",
        "s3://bucket/../up",
        "s3://bucket/prefix?versionId=1",
        "file://relative/dir",
        "file://host/dir",
        "memory://somewhere",
    ],
)
def test_unknown_urls_are_refused(url: str) -> None:
    with pytest.raises(UnknownStorageUrl):
        ObjectStore.from_url(url)
    assert issubclass(UnknownStorageUrl, ValueError)


@pytest.mark.parametrize(
    "key", ["", "/abs", "trailing/", "a//b", "../x", "a/./b", ".hidden", "a#1", "sp ace", "é"]
)
async def test_invalid_keys_are_refused(key: str) -> None:
    store = ObjectStore.from_url("memory://")
    with pytest.raises(ValueError, match="invalid object key"):
        await store.head(key)
    with pytest.raises(ValueError, match="invalid object key"):
        await store.put_stream(key, _one(b"x"), content_type="image/png")
    with pytest.raises(ValueError, match="invalid object key"):
        await store.signed_url(key, timedelta(minutes=1))
