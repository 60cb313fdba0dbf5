"""The downloader against real local servers: formats, redirects, statuses, caps, timeouts."""

from __future__ import annotations

import hashlib
import tracemalloc
from collections.abc import AsyncIterator

import httpx
import pytest

from app.archive.fetch import (
    ImageDownload,
    LinkGone,
    NotAnImage,
    TooLarge,
    TransientFetchError,
    create_fetch_client,
    open_image,
)
from app.core.safe_http import FetchError, FetchPolicy, RefusedUrl
from tests.archive.test_fetch_support import (
    HEADS,
    IMAGE_SIZE,
    IMAGES,
    PUBLIC_IP,
    Dialer,
    FakeDns,
    ImageServer,
    RawServer,
    canary,
    serve,
    stream_pieces,
)

LOCAL = FetchPolicy(allow_private=True, read_timeout=5.0, connect_timeout=5.0)


@pytest.fixture(scope="module")
async def running() -> AsyncIterator[tuple[ImageServer, str]]:
    """The image server shared by this module's tests, and its base URL."""
    app = ImageServer()
    async with serve(app) as port:
        yield app, f"http://127.0.0.1:{port}"


@pytest.fixture
def server(running: tuple[ImageServer, str]) -> ImageServer:
    """The image server."""
    return running[0]


@pytest.fixture
def base(running: tuple[ImageServer, str]) -> str:
    """The image server's base URL."""
    return running[1]


@pytest.fixture(scope="module")
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """One client for the module, as in the service."""
    async with create_fetch_client(LOCAL) as fetch_client:
        yield fetch_client


async def download(
    client: httpx.AsyncClient, url: str, policy: FetchPolicy = LOCAL
) -> tuple[bytes, ImageDownload]:
    """The whole body and the finished download."""
    pieces = []
    async with open_image(client, url, policy) as image:
        async for chunk in image.chunks():
            assert len(chunk) <= max(policy.chunk_size, 16)
            pieces.append(chunk)
    return b"".join(pieces), image


async def refusal(client: httpx.AsyncClient, url: str, policy: FetchPolicy = LOCAL) -> FetchError:
    """The FetchError a download raises, wherever it is raised."""
    with pytest.raises(FetchError) as caught:
        await download(client, url, policy)
    return caught.value


@pytest.mark.parametrize(
    ("name", "content_type"),
    [("png", "image/png"), ("jpg", "image/jpeg"), ("webp", "image/webp")],
)
@pytest.mark.parametrize("chunk_size", [7, 4096, 65536])
async def test_an_image_streams_with_its_info(
    client: httpx.AsyncClient, base: str, name: str, content_type: str, chunk_size: int
) -> None:
    policy = FetchPolicy(allow_private=True, chunk_size=chunk_size)
    async with open_image(client, f"{base}/img/{name}", policy) as image:
        assert image.content_type == content_type  # the server claims application/octet-stream
        with pytest.raises(RuntimeError):
            _ = image.info
        body = b"".join([chunk async for chunk in image.chunks()])
    served = IMAGES[name]
    assert body == served
    info = image.info
    assert (info.content_type, info.extension) == (content_type, name)
    assert info.bytes == len(served)
    assert info.sha256 == hashlib.sha256(served).hexdigest()
    assert (info.width, info.height) == IMAGE_SIZE


async def test_chunks_can_be_iterated_once(client: httpx.AsyncClient, base: str) -> None:
    async with open_image(client, f"{base}/img/png", LOCAL) as image:
        _ = [chunk async for chunk in image.chunks()]
        with pytest.raises(RuntimeError):
            _ = [chunk async for chunk in image.chunks()]


async def test_a_partly_read_download_has_no_info(client: httpx.AsyncClient, base: str) -> None:
    async with open_image(
        client, f"{base}/img/jpg", FetchPolicy(allow_private=True, chunk_size=100)
    ) as image:
        async for _ in image.chunks():
            break
    with pytest.raises(RuntimeError):
        _ = image.info


async def test_redirects_are_followed_up_to_the_limit(
    client: httpx.AsyncClient, server: ImageServer, base: str
) -> None:
    body, image = await download(client, f"{base}/hops/3")
    assert body == IMAGES["png"]
    assert image.url == f"{base}/hops/0"


async def test_one_redirect_too_many_is_refused(
    client: httpx.AsyncClient, server: ImageServer, base: str
) -> None:
    before = server.hits["/hops/0"]
    error = await refusal(client, f"{base}/hops/4")
    assert isinstance(error, RefusedUrl)
    assert error.permanent
    assert "redirects" in error.reason
    assert server.hits["/hops/0"] == before  # the fifth hop was never requested


async def test_max_redirects_zero_refuses_any_redirect(
    client: httpx.AsyncClient, base: str
) -> None:
    policy = FetchPolicy(allow_private=True, max_redirects=0)
    assert isinstance(await refusal(client, f"{base}/hops/1", policy), RefusedUrl)
    body, _ = await download(client, f"{base}/img/png", policy)
    assert body == IMAGES["png"]


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("location", ["/img/webp", "../img/webp", "ABSOLUTE"])
async def test_redirect_locations_resolve_against_the_current_url(
    client: httpx.AsyncClient, base: str, status: int, location: str
) -> None:
    target = f"{base}/img/webp" if location == "ABSOLUTE" else location
    url = httpx.URL(f"{base}/to", params={"location": target, "status": str(status)})
    body, image = await download(client, str(url))
    assert body == IMAGES["webp"]
    assert image.url == f"{base}/img/webp"


async def test_a_redirect_without_location_is_transient(
    client: httpx.AsyncClient, base: str
) -> None:
    error = await refusal(client, f"{base}/no-location")
    assert isinstance(error, TransientFetchError)
    assert "302" in error.reason


@pytest.mark.parametrize("status", [404, 410])
async def test_expired_links_are_gone(client: httpx.AsyncClient, base: str, status: int) -> None:
    error = await refusal(client, f"{base}/status/{status}")
    assert isinstance(error, LinkGone)
    assert error.permanent
    assert str(status) in str(error)


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429, 408, 403, 401, 400, 418, 204, 206])
async def test_other_statuses_are_transient(
    client: httpx.AsyncClient, base: str, status: int
) -> None:
    error = await refusal(client, f"{base}/status/{status}")
    assert type(error) is TransientFetchError
    assert not error.permanent
    assert str(status) in error.reason


async def test_an_endless_body_stops_at_the_cap(client: httpx.AsyncClient, base: str) -> None:
    policy = FetchPolicy(allow_private=True, max_bytes=1024 * 1024)
    received: list[int] = []

    async def consume() -> None:
        async with open_image(client, f"{base}/stream?size=endless", policy) as image:
            async for chunk in image.chunks():
                received.append(len(chunk))

    with pytest.raises(TooLarge) as caught:
        await consume()
    assert caught.value.permanent
    assert 0 < sum(received) <= policy.max_bytes


async def test_a_body_of_exactly_the_cap_passes(client: httpx.AsyncClient, base: str) -> None:
    policy = FetchPolicy(allow_private=True, max_bytes=300_000)
    body, image = await download(client, f"{base}/stream?size=300000", policy)
    assert len(body) == image.info.bytes == 300_000
    policy = FetchPolicy(allow_private=True, max_bytes=299_999)
    assert isinstance(await refusal(client, f"{base}/stream?size=300000", policy), TooLarge)


async def test_a_declared_length_over_the_cap_is_refused_before_streaming(
    client: httpx.AsyncClient, base: str
) -> None:
    policy = FetchPolicy(allow_private=True, max_bytes=10_000)
    with pytest.raises(TooLarge, match="declares 20000"):
        async with open_image(client, f"{base}/declared?length=20000", policy):
            pytest.fail("opened a body declared larger than the cap")


async def test_a_lying_content_length_does_not_lift_the_cap(client: httpx.AsyncClient) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"%x\r\n" % len(HEADS["png"]) + HEADS["png"] + b"\r\n"
    zeros = b"%x\r\n" % 65536 + bytes(65536) + b"\r\n"
    async with RawServer([head, chunk, *[zeros] * 40]) as liar:
        policy = FetchPolicy(allow_private=True, max_bytes=1024 * 1024)
        error = await refusal(client, f"http://127.0.0.1:{liar.port}/", policy)
    assert isinstance(error, TooLarge)


async def test_a_body_cut_short_is_transient(client: httpx.AsyncClient) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n"
    async with RawServer([head + IMAGES["png"][:1000]]) as cut:
        error = await refusal(client, f"http://127.0.0.1:{cut.port}/")
    assert type(error) is TransientFetchError


@pytest.mark.parametrize("kind", ["html", "zip", "gif", "empty", "short"])
async def test_non_images_are_refused_before_any_chunk(
    client: httpx.AsyncClient, base: str, kind: str
) -> None:
    with pytest.raises(NotAnImage) as caught:
        async with open_image(client, f"{base}/body/{kind}", LOCAL):
            pytest.fail("opened a body that is not an image")
    assert caught.value.permanent


async def test_a_long_non_image_stream_is_refused_at_its_first_bytes(
    client: httpx.AsyncClient, base: str
) -> None:
    error = await refusal(client, f"{base}/stream?size=endless&head=html")
    assert isinstance(error, NotAnImage)


async def test_a_compressed_body_is_refused(client: httpx.AsyncClient, base: str) -> None:
    error = await refusal(client, f"{base}/gzip")
    assert isinstance(error, NotAnImage)
    assert "gzip" in error.reason


async def test_slow_headers_time_out(client: httpx.AsyncClient, base: str) -> None:
    policy = FetchPolicy(allow_private=True, read_timeout=0.2)
    error = await refusal(client, f"{base}/stall-headers", policy)
    assert type(error) is TransientFetchError
    assert "timed out" in error.reason


async def test_a_stalled_body_times_out(client: httpx.AsyncClient, base: str) -> None:
    policy = FetchPolicy(allow_private=True, read_timeout=0.2, chunk_size=50)
    async with open_image(client, f"{base}/stall-body", policy) as image:
        with pytest.raises(TransientFetchError, match="stalled"):
            async for _ in image.chunks():
                pass


@pytest.mark.parametrize("where", ["resolver", "connect"])
async def test_a_slow_connection_times_out(base: str, where: str) -> None:
    policy = FetchPolicy(allow_private=True, connect_timeout=0.2)
    dns = FakeDns({"slow.test": [[PUBLIC_IP]]}, hang=where == "resolver")
    dialer = Dialer(hang=where == "connect")
    port = httpx.URL(base).port
    async with create_fetch_client(policy, resolver=dns, network_backend=dialer) as slow:
        error = await refusal(slow, f"http://slow.test:{port}/img/png", policy)
    assert type(error) is TransientFetchError
    assert "timed out" in error.reason


async def test_a_closed_port_is_transient(client: httpx.AsyncClient) -> None:
    async with RawServer([]) as closed:
        port = closed.port
    error = await refusal(client, f"http://127.0.0.1:{port}/img/png")
    assert type(error) is TransientFetchError


async def test_an_unknown_host_is_transient(base: str) -> None:
    async with create_fetch_client(LOCAL, resolver=FakeDns({})) as lost:
        error = await refusal(lost, "http://nowhere.test/img/png")
    assert type(error) is TransientFetchError
    assert "resolve" in error.reason


async def test_requests_ask_for_raw_images_and_keep_no_cookies(
    client: httpx.AsyncClient, server: ImageServer, base: str
) -> None:
    await download(client, f"{base}/cookie")
    await download(client, f"{base}/img/png")
    headers = server.requests[-1]
    assert "cookie" not in headers
    assert headers["accept-encoding"] == "identity"
    assert not client.cookies


async def test_proxies_from_the_environment_are_ignored(
    base: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with canary() as proxy:
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.port}")
        async with create_fetch_client(LOCAL) as direct:
            body, _ = await download(direct, f"{base}/img/png")
    assert body == IMAGES["png"]
    assert proxy.connections == 0


async def test_open_image_needs_a_checked_client(base: str) -> None:
    async with httpx.AsyncClient() as plain:
        with pytest.raises(ValueError, match="create_fetch_client"):
            async with open_image(plain, f"{base}/img/png", LOCAL):
                pass


async def test_a_permissive_client_refuses_a_strict_policy(
    client: httpx.AsyncClient, base: str
) -> None:
    with pytest.raises(ValueError, match="private"):
        async with open_image(client, f"{base}/img/png", FetchPolicy()):
            pass


def test_policy_values_are_checked() -> None:
    for bad in ({"max_bytes": 0}, {"chunk_size": 0}, {"max_redirects": -1}):
        with pytest.raises(ValueError, match="positive"):
            FetchPolicy(**bad)  # type: ignore[arg-type]


async def test_memory_stays_flat_for_a_50_mb_image(client: httpx.AsyncClient, base: str) -> None:
    size = 50_000_000
    expected = hashlib.sha256()
    for piece in stream_pieces(size, HEADS["png"]):
        expected.update(piece)
    tracemalloc.start()
    try:
        async with open_image(client, f"{base}/stream?size={size}", LOCAL) as image:
            async for _ in image.chunks():
                pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert image.info.bytes == size
    assert image.info.sha256 == expected.hexdigest()
    assert (image.info.width, image.info.height) == IMAGE_SIZE
    # A few chunks in flight at most, nowhere near the 50 MB body.
    assert peak < 4 * LOCAL.chunk_size + 2 * 1024 * 1024, peak
