"""The Files API: three ways to upload, the documented answer, the links, and every refusal."""

from __future__ import annotations

import base64
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from app.provider.simulator import Simulator, SimulatorConfig, SimulatorFaults
from tests.support.images import ImageHost, image_bytes, sha256
from tests.support.servers import free_port

from .helpers import AUTH, ManualClock, running, serve

STREAM = "/api/v1/files/upload/stream"
BASE64 = "/api/v1/files/upload/base64"
URL = "/api/v1/files/upload/url"
DATA_KEYS = {
    "file_id",
    "file_name",
    "original_name",
    "file_size",
    "mime_type",
    "upload_path",
    "file_url",
    "download_url",
    "upload_time",
    "expires_at",
}
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp", "gif": "gif"}


def uploaded(response: httpx.Response) -> dict[str, Any]:
    """The `data` of a successful upload answer, after checking the envelope."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"success", "code", "msg", "data"}
    assert (body["success"], body["code"], body["msg"]) == (True, 200, "File uploaded successfully")
    assert set(body["data"]) == DATA_KEYS
    data: dict[str, Any] = body["data"]
    return data


def assert_refused(response: httpx.Response, status: int, *words: str) -> None:
    """The Files API error shape, `code` equal to the HTTP status, a message with `words`."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"success", "code", "msg"}
    assert (body["success"], body["code"]) == (False, status)
    for word in words:
        assert word in body["msg"]


async def stream(client: httpx.AsyncClient, data: bytes, **fields: str) -> httpx.Response:
    return await client.post(STREAM, files={"file": ("photo.png", data, "image/png")}, data=fields)


async def test_a_stream_upload_answers_as_documented_and_its_links_serve_the_bytes() -> None:
    data = image_bytes("png")
    async with running(SimulatorConfig()) as (sim, client):
        answer = uploaded(await stream(client, data, upload_path="photos", file_name="cat.png"))
        by_link = await client.get(answer["file_url"], headers={"Authorization": ""})
        by_download = await client.get(answer["download_url"], headers={"Authorization": ""})
        stats = (await client.get("/_sim/stats")).json()

    file_id = answer["file_id"]
    assert file_id.startswith("file_")
    assert answer["file_name"] == "cat.png"
    assert answer["original_name"] == "photo.png"
    assert (answer["file_size"], answer["mime_type"]) == (len(data), "image/png")
    assert answer["upload_path"] == "photos"
    assert answer["file_url"] == f"http://sim.test/files-api/photos/{file_id}.png"
    assert answer["download_url"] == f"http://sim.test/api/v1/files/download/{file_id}"
    uploaded_at = datetime.fromisoformat(answer["upload_time"])
    expires_at = datetime.fromisoformat(answer["expires_at"])
    assert uploaded_at.utcoffset() == timedelta(0)
    assert expires_at - uploaded_at == timedelta(hours=72)
    assert (by_link.status_code, by_link.headers["content-type"]) == (200, "image/png")
    assert by_link.content == data
    assert (by_download.status_code, by_download.content) == (200, data)
    assert by_download.headers["content-disposition"] == 'attachment; filename="cat.png"'
    [record] = sim.engine.stats.uploaded_files
    assert (record.file_id, record.sha256, record.source) == (file_id, sha256(data), "stream")
    assert stats["uploaded_files"][0]["sha256"] == sha256(data)
    assert (stats["uploads_accepted"], stats["uploads_served"]) == (1, 2)


async def test_camel_case_fields_and_defaults() -> None:
    data = image_bytes("png")
    async with running(SimulatorConfig()) as (_, client):
        camel = uploaded(await stream(client, data, uploadPath="a/b-c", fileName="x.png"))
        plain = uploaded(await stream(client, data))

    assert (camel["upload_path"], camel["file_name"]) == ("a/b-c", "x.png")
    assert camel["file_url"].startswith("http://sim.test/files-api/a/b-c/file_")
    assert (plain["upload_path"], plain["file_name"]) == ("uploads", "photo.png")


@pytest.mark.parametrize("image_format", ["png", "jpeg", "webp", "gif"])
async def test_the_type_is_sniffed_from_the_bytes_not_declared(image_format: str) -> None:
    data = image_bytes(image_format)
    async with running(SimulatorConfig()) as (_, client):
        # Declared as a PNG called photo.png, whatever it is.
        answer = uploaded(await stream(client, data))
        served = await client.get(answer["file_url"])

    mime_type = f"image/{image_format}"
    assert answer["mime_type"] == mime_type
    assert answer["file_url"].endswith(f".{EXTENSIONS[image_format]}")
    assert (served.headers["content-type"], served.content) == (mime_type, data)


@pytest.mark.parametrize("data_url", [True, False], ids=["data-url", "pure-base64"])
async def test_a_base64_upload(data_url: bool) -> None:
    data = image_bytes("webp")
    encoded = base64.b64encode(data).decode()
    body = {
        "base64_data": f"data:image/webp;base64,{encoded}" if data_url else encoded,
        "upload_path": "refs",
        "file_name": "ref.webp",
    }
    async with running(SimulatorConfig()) as (sim, client):
        answer = uploaded(await client.post(BASE64, json=body))
        served = await client.get(answer["file_url"])

    assert (answer["file_name"], answer["upload_path"]) == ("ref.webp", "refs")
    assert (answer["mime_type"], answer["file_size"]) == ("image/webp", len(data))
    assert served.content == data
    assert sim.engine.stats.uploaded_files[0].sha256 == sha256(data)


async def test_a_url_upload_fetches_the_bytes_following_redirects() -> None:
    host = ImageHost()
    data = image_bytes("jpeg")
    host.add("ref.jpg", data, "application/octet-stream")
    async with serve(host.app) as images, running(SimulatorConfig()) as (sim, client):
        answer = uploaded(await client.post(URL, json={"file_url": f"{images}/redirect/ref.jpg"}))
        served = await client.get(answer["file_url"])

    assert (answer["mime_type"], answer["original_name"]) == ("image/jpeg", "ref.jpg")
    assert served.content == data
    [record] = sim.engine.stats.uploaded_files
    assert (record.source, record.source_url) == ("url", f"{images}/redirect/ref.jpg")
    assert record.sha256 == sha256(data)


@pytest.mark.parametrize(
    ("path", "status", "word"),
    [
        (None, 400, "ConnectError"),
        ("/status/404", 400, "HTTP 404"),
        ("/page.html", 415, "Unsupported file type"),
    ],
    ids=["unreachable", "not-found", "not-an-image"],
)
async def test_a_url_upload_that_cannot_be_used(path: str | None, status: int, word: str) -> None:
    host = ImageHost()
    host.add("page.html", b"<html>hello</html>", "image/png")
    async with serve(host.app) as images, running(SimulatorConfig()) as (sim, client):
        url = f"http://127.0.0.1:{free_port()}/x.png" if path is None else f"{images}{path}"
        response = await client.post(URL, json={"file_url": url})

    assert_refused(response, status, word)
    assert sim.engine.stats.uploaded_files == []
    assert sim.engine.stats.uploads_invalid == 1


@pytest.mark.parametrize("endpoint", [STREAM, BASE64, URL])
@pytest.mark.parametrize("key", [None, "Bearer sk-evo-wrong", "Basic sk-evo-simulator"])
async def test_uploads_need_a_known_key(endpoint: str, key: str | None) -> None:
    async with running(SimulatorConfig()) as (sim, client):
        if key is None:
            client.headers.pop("Authorization")
        else:
            client.headers["Authorization"] = key
        if endpoint == STREAM:
            response = await stream(client, image_bytes())
        else:
            response = await client.post(endpoint, json={"base64_data": "AAAA"})

    assert_refused(response, 401, "API key")
    assert sim.engine.stats.uploads_unauthorized == 1


async def test_not_an_image_is_refused_with_415() -> None:
    text = b"just some text, not an image"
    async with running(SimulatorConfig()) as (sim, client):
        streamed = await stream(client, text)
        encoded = await client.post(BASE64, json={"base64_data": base64.b64encode(text).decode()})

    assert_refused(streamed, 415, "JPEG, PNG, GIF and WebP")
    assert_refused(encoded, 415, "JPEG, PNG, GIF and WebP")
    assert sim.engine.stats.uploads_invalid == 2
    assert sim.engine.stats.uploaded_files == []


async def test_one_image_per_request() -> None:
    data = image_bytes()
    two = [("file", ("a.png", data, "image/png")), ("file", ("b.png", data, "image/png"))]
    other = [("file", ("a.png", data, "image/png")), ("image", ("b.png", data, "image/png"))]
    async with running(SimulatorConfig()) as (sim, client):
        both = await client.post(STREAM, files=two)
        beside = await client.post(STREAM, files=other)
        wrong_name = await client.post(STREAM, files={"image": ("a.png", data, "image/png")})
        no_file = await client.post(STREAM, files={"file": (None, b"text")})
        png_type = {"Content-Type": "image/png"}
        not_multipart = await client.post(STREAM, content=data, headers=png_type)

    assert_refused(both, 400, "One file per request")
    assert_refused(beside, 400, "One file per request")
    assert_refused(wrong_name, 400, "`file`")
    assert_refused(no_file, 400, "`file`")
    assert_refused(not_multipart, 400, "multipart/form-data")
    assert sim.engine.stats.uploaded_files == []


async def test_too_large_is_refused_with_413() -> None:
    config = SimulatorConfig(max_image_bytes=2048)
    big = image_bytes("png", size=(64, 64), seed=3)  # noise-like pixels: larger than 2048 bytes
    assert len(big) > 2048
    host = ImageHost()
    host.add("big.png", big)
    async with serve(host.app) as images, running(config) as (sim, client):
        streamed = await stream(client, big)
        encoded = await client.post(BASE64, json={"base64_data": base64.b64encode(big).decode()})
        fetched = await client.post(URL, json={"file_url": f"{images}/big.png"})
        endless = await client.post(URL, json={"file_url": f"{images}/endless"})
        declared = await client.post(
            STREAM,
            content=b"x" * 100_000,
            headers={"Content-Type": "multipart/form-data; boundary=b"},
        )

    for response in (streamed, encoded, fetched, endless, declared):
        assert_refused(response, 413, "at most 2048 bytes")
    assert sim.engine.stats.uploaded_files == []


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"base64_data": "not base64 at all!"}, "not valid base64"),
        ({"base64_data": "data:image/png,iVBORw0KGgo="}, "data URL"),
        ({"base64_data": ""}, "base64_data is required"),
        ({"base64_data": 12}, "base64_data is required"),
        ({}, "base64_data is required"),
        ({"base64_data": "===="}, "base64"),
        ({"base64_data": "iVBORw0KGgo=", "upload_path": "../up"}, "upload_path"),
        ({"base64_data": "iVBORw0KGgo=", "file_name": "a/b.png"}, "file_name"),
    ],
)
async def test_a_bad_base64_upload_is_refused_with_400(body: dict[str, Any], words: str) -> None:
    async with running(SimulatorConfig()) as (_, client):
        response = await client.post(BASE64, json=body)

    assert_refused(response, 400, words)


async def test_a_body_that_is_not_json_is_refused_with_400() -> None:
    async with running(SimulatorConfig()) as (_, client):
        response = await client.post(BASE64, content=b"base64_data=AAAA")

    assert_refused(response, 400, "JSON object")


async def test_files_expire_after_their_lifetime(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = ManualClock(monkeypatch)
    async with running(SimulatorConfig(files_ttl_seconds=60)) as (sim, client):
        answer = uploaded(await stream(client, image_bytes()))
        assert datetime.fromisoformat(answer["expires_at"]) - datetime.fromisoformat(
            answer["upload_time"]
        ) == timedelta(seconds=60)
        clock.advance(59)
        assert (await client.get(answer["file_url"])).status_code == 200
        clock.advance(1)
        by_link = await client.get(answer["file_url"])
        by_download = await client.get(answer["download_url"])

    assert_refused(by_link, 404, "expired")
    assert_refused(by_download, 404, "expired")
    assert sim.engine.stats.uploads_expired == 2


async def test_unknown_files_are_404() -> None:
    async with running(SimulatorConfig()) as (_, client):
        answer = uploaded(await stream(client, image_bytes(), upload_path="a"))
        wrong_path = answer["file_url"].replace("/files-api/a/", "/files-api/b/")
        wrong_extension = answer["file_url"].removesuffix(".png") + ".jpg"
        responses = [
            await client.get(wrong_path),
            await client.get(wrong_extension),
            await client.get("/files-api/a/file_nothing.png"),
            await client.get("/api/v1/files/download/file_nothing"),
        ]

    for response in responses:
        assert_refused(response, 404, "not found")


async def test_unknown_routes_and_methods_answer_in_the_files_api_shape() -> None:
    async with running(SimulatorConfig()) as (_, client):
        no_route = await client.post("/api/v1/files/upload/ftp", json={})
        no_method = await client.get(STREAM)

    assert_refused(no_route, 404, "Not Found")
    assert_refused(no_method, 405, "Method Not Allowed")


async def test_the_quota_runs_out_with_402_until_files_expire(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = ManualClock(monkeypatch)
    config = SimulatorConfig(files_quota=2, files_ttl_seconds=3600)
    async with running(config) as (sim, client):
        for _ in range(2):
            uploaded(await stream(client, image_bytes()))
        refused = await client.post(BASE64, json={"base64_data": "iVBORw0KGgo="})
        clock.advance(3600)
        again = await stream(client, image_bytes())

    assert_refused(refused, 402, "quota")
    uploaded(again)
    stats = sim.engine.stats
    assert (stats.uploads_accepted, stats.uploads_rejected_quota) == (3, 1)


@pytest.mark.parametrize(
    ("fault", "status", "counter"),
    [
        ("files_429_rate", 429, "uploads_rejected_429"),
        ("files_error_rate", 503, "uploads_rejected_503"),
    ],
)
async def test_upload_faults(fault: str, status: int, counter: str) -> None:
    async with running(SimulatorConfig()) as (sim, client):
        set_fault = await client.put("/_sim/faults", json={fault: 1.0})
        refused = await stream(client, image_bytes())
        await client.put("/_sim/faults", json={fault: 0})
        accepted = await stream(client, image_bytes())

    assert set_fault.json()[fault] == 1.0
    assert_refused(refused, status)
    uploaded(accepted)
    assert (getattr(sim.engine.stats, counter), sim.engine.stats.uploads_accepted) == (1, 1)


async def test_upload_fault_rates_are_fractions() -> None:
    faults = SimulatorFaults(files_429_rate=0.3, files_error_rate=0.3)
    async with running(SimulatorConfig(seed=3, faults=faults)) as (sim, client):
        codes = [
            (await client.post(BASE64, json={"base64_data": "iVBORw0KGgo="})).status_code
            for _ in range(60)
        ]

    assert set(codes) == {200, 429, 503}
    stats = sim.engine.stats
    assert (stats.uploads_rejected_429, stats.uploads_rejected_503) == (
        codes.count(429),
        codes.count(503),
    )


async def test_an_outage_of_the_task_api_leaves_the_files_api_up() -> None:
    async with running(SimulatorConfig(faults=SimulatorFaults(down=True))) as (_, client):
        uploaded(await stream(client, image_bytes()))


async def test_refused_uploads_leave_no_bytes_behind_and_stop_deletes_the_rest() -> None:
    text = base64.b64encode(b"not an image").decode()
    async with running(SimulatorConfig(files_quota=1)) as (sim, client):
        kept = uploaded(await stream(client, image_bytes()))
        assert_refused(await stream(client, b"text"), 415)
        assert_refused(await client.post(BASE64, json={"base64_data": text}), 415)
        assert_refused(await stream(client, image_bytes()), 402)
        directory = sim.engine.files.directory
        assert directory is not None
        assert [path.name for path in directory.iterdir()] == [kept["file_id"]]

    assert not directory.exists()


async def test_a_refusal_reaches_a_client_still_sending_a_large_body() -> None:
    big = b"\x89PNG\r\n\x1a\n" + bytes(8 * 1024 * 1024)
    simulator = Simulator(SimulatorConfig())
    async with (
        serve(simulator.app) as base,
        httpx.AsyncClient(base_url=base, headers={"Authorization": "Bearer wrong"}) as client,
    ):
        response = await client.post(STREAM, files={"file": ("big.png", big, "image/png")})
        accepted = await client.post(
            STREAM, files={"file": ("big.png", big, "image/png")}, headers=AUTH
        )
        served = await client.get(uploaded(accepted)["file_url"])

    assert_refused(response, 401)
    assert served.content == big
