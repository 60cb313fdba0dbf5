"""SSRF: with private networks forbidden, no internal address is ever contacted.

The "public" server is a local TLS server for public.test: FakeDns answers PUBLIC_IP for it and
the Dialer (the network under the checked backend) routes PUBLIC_IP to 127.0.0.1. The Dialer
records every connection attempt and the canary counts every connection it receives."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import string
from collections.abc import AsyncIterator

import httpx
import pytest
import respx
from hypothesis import given, settings
from hypothesis import strategies as st

from app.archive.fetch import (
    LinkGone,
    NotAnImage,
    TooLarge,
    TransientFetchError,
    create_fetch_client,
    open_image,
)
from app.core.safe_http import FetchError, FetchPolicy, RefusedUrl
from app.core.urls import check_outbound_url, is_forbidden_address
from tests.archive.test_fetch_support import (
    IMAGE_SIZE,
    IMAGES,
    PUBLIC_IP,
    Dialer,
    FakeDns,
    ImageServer,
    RawServer,
    canary,
    client_ssl_context,
    serve,
)

STRICT = FetchPolicy(read_timeout=5.0, connect_timeout=5.0)


@pytest.fixture(scope="module")
async def running(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[ImageServer, int]]:
    """The TLS image server for public.test and its port."""
    app = ImageServer()
    async with serve(app, tls_dir=tmp_path_factory.mktemp("tls")) as port:
        yield app, port


@pytest.fixture
def server(running: tuple[ImageServer, int]) -> ImageServer:
    """The TLS image server."""
    return running[0]


@pytest.fixture
def public(running: tuple[ImageServer, int]) -> str:
    """The TLS image server's base URL under its public name."""
    return f"https://public.test:{running[1]}"


@pytest.fixture
async def internal() -> AsyncIterator[RawServer]:
    """The internal target that must never be contacted."""
    async with canary() as target:
        yield target
    assert target.connections == 0


@pytest.fixture
def dialer() -> Dialer:
    """The recorded network."""
    return Dialer()


@pytest.fixture
def dns() -> FakeDns:
    """public.test is public, internal.test is loopback, rebind.test turns private."""
    return FakeDns(
        {
            "public.test": [[PUBLIC_IP]],
            "wrong.test": [[PUBLIC_IP]],
            "internal.test": [["127.0.0.1"]],
            "rebind.test": [[PUBLIC_IP], ["127.0.0.1"]],
        }
    )


@pytest.fixture
async def client(dns: FakeDns, dialer: Dialer) -> AsyncIterator[httpx.AsyncClient]:
    """A strict client on the recorded network."""
    async with create_fetch_client(
        STRICT, resolver=dns, network_backend=dialer, ssl_context=client_ssl_context()
    ) as strict:
        yield strict


async def fetch(client: httpx.AsyncClient, url: str, policy: FetchPolicy = STRICT) -> bytes:
    """Download `url` completely."""
    async with open_image(client, url, policy) as image:
        return b"".join([chunk async for chunk in image.chunks()])


async def refused(client: httpx.AsyncClient, url: str) -> RefusedUrl:
    """The refusal of `url`."""
    with pytest.raises(RefusedUrl) as caught:
        await fetch(client, url)
    assert caught.value.permanent
    return caught.value


async def test_a_public_host_is_reached_at_its_checked_address(
    client: httpx.AsyncClient, server: ImageServer, public: str, dns: FakeDns, dialer: Dialer
) -> None:
    async with open_image(client, f"{public}/img/png", STRICT) as image:
        body = b"".join([chunk async for chunk in image.chunks()])
    assert body == IMAGES["png"]
    assert (image.info.width, image.info.height) == IMAGE_SIZE
    port = httpx.URL(public).port
    assert dns.lookups == ["public.test"]
    assert dialer.attempts == [(PUBLIC_IP, port)]  # the IP, never the name again
    assert server.requests[-1]["host"] == f"public.test:{port}"  # TLS also verified the name


async def test_the_certificate_is_checked_against_the_url_host(
    client: httpx.AsyncClient, public: str, dialer: Dialer
) -> None:
    url = httpx.URL(f"{public}/img/png").copy_with(host="wrong.test")
    with pytest.raises(TransientFetchError, match="CERTIFICATE_VERIFY_FAILED"):
        await fetch(client, str(url))
    assert dialer.attempts == [(PUBLIC_IP, url.port)]


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.255.255.254",
        "10.0.0.1",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "[::1]",
        "[::]",
        "[::ffff:127.0.0.1]",
        "[::ffff:169.254.169.254]",
        "[::ffff:0:7f00:1]",
        "[::ffff:0:169.254.169.254]",
        "[fe80::1]",
        "[fd00::1]",
        "[2002:7f00:1::1]",
    ],
)
async def test_literal_internal_addresses_are_refused_unconnected(
    client: httpx.AsyncClient, internal: RawServer, dialer: Dialer, dns: FakeDns, host: str
) -> None:
    error = await refused(client, f"https://{host}:{internal.port}/img.png")
    assert "private or internal" in error.reason
    assert dialer.attempts == []
    assert dns.lookups == []
    assert internal.connections == 0


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST.", "ip6-localhost", "api.localhost"])
async def test_local_names_are_refused_unresolved(
    client: httpx.AsyncClient, internal: RawServer, dialer: Dialer, dns: FakeDns, host: str
) -> None:
    await refused(client, f"https://{host}:{internal.port}/img.png")
    assert dialer.attempts == []
    assert dns.lookups == []


@pytest.mark.parametrize("host", ["127.1", "2130706433", "0x7f000001", "0177.0.0.1"])
async def test_odd_spellings_of_loopback_are_refused(
    internal: RawServer, dialer: Dialer, host: str
) -> None:
    async with create_fetch_client(STRICT, network_backend=dialer) as real_dns:
        await refused(real_dns, f"https://{host}:{internal.port}/img.png")
    assert dialer.attempts == []


@pytest.mark.parametrize(
    "answer",
    [
        ["127.0.0.1"],
        ["10.1.2.3"],
        ["169.254.169.254"],
        ["0.0.0.0"],
        ["::1"],
        ["::ffff:127.0.0.1"],
        ["::ffff:10.0.0.1"],
        ["::ffff:0:7f00:1"],
        ["::ffff:0:a9fe:a9fe"],
        ["2002:a9fe:a9fe::1"],
        ["2001::1"],
        ["fd12:3456::1"],
        ["127.0.0.1", "10.0.0.1", "::1"],
    ],
)
async def test_names_resolving_to_internal_addresses_are_refused_at_connect(
    internal: RawServer, dialer: Dialer, answer: list[str]
) -> None:
    dns = FakeDns({"sneaky.test": [answer]})
    async with create_fetch_client(STRICT, resolver=dns, network_backend=dialer) as strict:
        error = await refused(strict, f"https://sneaky.test:{internal.port}/img.png")
    assert "sneaky.test resolves only to forbidden addresses" in error.reason
    assert dns.lookups == ["sneaky.test"]
    assert dialer.attempts == []
    assert internal.connections == 0


async def test_internal_answers_are_dropped_and_the_public_one_used(
    server: ImageServer, public: str, dialer: Dialer
) -> None:
    dns = FakeDns({"public.test": [["127.0.0.1", "10.0.0.7", PUBLIC_IP, "::1"]]})
    async with create_fetch_client(
        STRICT, resolver=dns, network_backend=dialer, ssl_context=client_ssl_context()
    ) as strict:
        assert await fetch(strict, f"{public}/img/jpg") == IMAGES["jpg"]
    assert dialer.attempts == [(PUBLIC_IP, httpx.URL(public).port)]


@pytest.mark.parametrize("answer", ["::ffff:93.184.215.14", "::ffff:0:5db8:d70e"])
async def test_a_name_resolving_to_an_ipv6_form_of_a_public_ipv4_address_is_dialled(
    answer: str,
) -> None:
    dns = FakeDns({"v6.test": [["::ffff:0:7f00:1", answer]]})
    offline = Dialer(offline=True)
    async with create_fetch_client(STRICT, resolver=dns, network_backend=offline) as strict:
        with pytest.raises(TransientFetchError, match="offline"):
            await fetch(strict, "https://v6.test:8443/img.png")
    # The loopback form dropped, the public one tried.
    assert offline.attempts == [(str(ipaddress.ip_address(answer)), 8443)]


async def test_a_name_is_resolved_once_per_connection(
    client: httpx.AsyncClient, public: str, dns: FakeDns, dialer: Dialer
) -> None:
    url = httpx.URL(f"{public}/img/webp").copy_with(host="rebind.test")
    assert await fetch(client, str(url)) == IMAGES["webp"]
    assert dns.lookups == ["rebind.test"]  # the second, private, answer was never asked for
    assert dialer.attempts == [(PUBLIC_IP, url.port)]


async def test_dns_rebinding_between_hops_is_refused_at_connect(
    client: httpx.AsyncClient, server: ImageServer, public: str, dns: FakeDns, dialer: Dialer
) -> None:
    before = server.hits["/img/png"]
    first = httpx.URL(f"{public}/to", params={"location": "/img/png", "close": "1"})
    first = first.copy_with(host="rebind.test")
    error = await refused(client, str(first))
    assert "rebind.test resolves only to forbidden addresses (127.0.0.1)" in error.reason
    assert dns.lookups == ["rebind.test", "rebind.test"]
    assert dialer.attempts == [(PUBLIC_IP, first.port)]  # the second hop never connected
    assert server.hits["/img/png"] == before


@pytest.mark.parametrize(
    "location",
    [
        "http://127.0.0.1:{canary}/latest",
        "https://127.0.0.1:{canary}/latest",
        "https://[::1]:{canary}/latest",
        "https://[::ffff:127.0.0.1]:{canary}/latest",
        "http://169.254.169.254/latest/meta-data/",
        "https://169.254.169.254/latest/meta-data/",
        "https://10.0.0.1/",
        "https://localhost:{canary}/",
        "https://internal.test:{canary}/",
        "http://public.test:{canary}/",
        "file:///etc/passwd",
        "ftp://public.test/img.png",
        "gopher://127.0.0.1:{canary}/_",
        "https://user:secret@public.test/img.png",
    ],
)
async def test_redirects_to_internal_targets_are_refused(
    client: httpx.AsyncClient,
    server: ImageServer,
    public: str,
    internal: RawServer,
    dialer: Dialer,
    location: str,
) -> None:
    target = location.format(canary=internal.port)
    await refused(client, str(httpx.URL(f"{public}/to", params={"location": target})))
    assert dialer.attempts == [(PUBLIC_IP, httpx.URL(public).port)]  # the first hop only
    assert internal.connections == 0


@pytest.mark.parametrize(
    "url",
    [
        "http://public.test/img.png",
        "ftp://public.test/img.png",
        "file:///etc/passwd",
        "gopher://public.test:70/_",
        "data:image/png;base64,iVBORw0KGgo=",
        "javascript:alert(1)",
        "public.test/img.png",
        "//public.test/img.png",
        "https:///img.png",
        "https://user:secret@public.test/img.png",
        "https://user@public.test/img.png",
        "https://[::1/img.png",
        "https://public.test:99999/img.png",
    ],
)
async def test_bad_urls_are_refused_before_any_lookup(
    client: httpx.AsyncClient, dialer: Dialer, dns: FakeDns, url: str
) -> None:
    await refused(client, url)
    assert dialer.attempts == []
    assert dns.lookups == []


@pytest.mark.parametrize("host", ["a..b", "x" * 64 + ".test"])
async def test_host_names_the_resolver_cannot_encode_are_refused(dialer: Dialer, host: str) -> None:
    async with create_fetch_client(STRICT, network_backend=dialer) as real_dns:
        error = await refused(real_dns, f"https://{host}/img.png")
    assert "not a valid host name" in error.reason
    assert dialer.attempts == []


async def test_the_same_targets_are_reached_when_private_networks_are_allowed() -> None:
    permissive = FetchPolicy(allow_private=True)
    async with canary() as target, create_fetch_client(permissive) as client:
        body = await fetch(client, f"http://127.0.0.1:{target.port}/img.png", permissive)
    assert body == IMAGES["png"]
    assert target.connections == 1  # so a count of 0 above means "not contacted"


async def test_an_oversized_public_body_is_cut(client: httpx.AsyncClient, public: str) -> None:
    policy = FetchPolicy(max_bytes=512 * 1024)
    with pytest.raises(TooLarge):
        await fetch(client, f"{public}/stream?size=endless", policy)


@pytest.mark.parametrize("kind", ["html", "zip"])
async def test_a_public_non_image_is_refused(
    client: httpx.AsyncClient, public: str, kind: str
) -> None:
    with pytest.raises(NotAnImage):
        await fetch(client, f"{public}/body/{kind}")


def test_only_transient_errors_are_worth_a_retry() -> None:
    for permanent in (RefusedUrl, LinkGone, TooLarge, NotAnImage):
        error: FetchError = permanent("the reason")
        assert (error.permanent, error.reason, str(error)) == (True, "the reason", "the reason")
    assert not TransientFetchError("x").permanent


HOSTS = st.one_of(
    st.sampled_from(
        [
            "127.0.0.1",
            "0",
            "0x7f.1",
            "127.1",
            "localhost",
            "LocalHost.",
            "[::1]",
            "[::]",
            "[::ffff:10.0.0.1]",
            "[fe80::1%25eth0]",
            "[64:ff9b::a9fe:a9fe]",
            "169.254.169.254",
            "8.8.8.8",
            "a..b",
            "",
            ".",
            "%2e",
            "[",
            "999.1.1.1",
            "public.test",
            "xn--",
            "\u00e9.test",
        ]
    ),
    st.text(string.ascii_letters + string.digits + ".-_%[]:@/\\?#", max_size=24),
)


def mostly(common: str, *others: str) -> st.SearchStrategy[str]:
    """`common` about half the time, else one of `others`."""
    return st.one_of(st.just(common), st.sampled_from(others))


URLS = st.builds(
    "".join,
    st.tuples(
        mostly("https", "http", "HTTPS", "ftp", "file", "gopher", "data", ""),
        mostly("://", ":", ":///", "//", ":\\\\"),
        mostly("", "u@", "u:p@", "@", ":@", "a@b@", "public.test@", "x\\@"),
        HOSTS,
        mostly("", ":0", ":443", ":99999", ":-1", ":x", ":", ":08"),
        st.text(string.ascii_letters + string.digits + "/.%?#&=@\\", max_size=16),
    ),
)
OFFLINE_TLS = client_ssl_context()


@settings(max_examples=300, deadline=None)
@given(url=URLS)
def test_hostile_urls_only_ever_raise_fetch_errors(url: str) -> None:
    dialer = Dialer(offline=True)

    async def attempt() -> None:
        dns = FakeDns({})
        async with create_fetch_client(
            STRICT, resolver=dns, network_backend=dialer, ssl_context=OFFLINE_TLS
        ) as strict:
            with pytest.raises(FetchError):
                await fetch(strict, url)

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(attempt())
    finally:
        loop.close()
    for host, _ in dialer.attempts:
        assert not is_forbidden_address(ipaddress.ip_address(host)), (url, host)


LOCATIONS = st.one_of(
    URLS,
    st.text(string.ascii_letters + string.digits + string.punctuation, max_size=30),
    st.sampled_from(
        [
            "//127.0.0.1/x",
            "/\\127.0.0.1/x",
            "\\\\127.0.0.1\\x",
            "https:127.0.0.1",
            "https:/127.0.0.1/",
            "https://127.0.0.1%2f@public.test/",
            "https://public.test%2f@127.0.0.1/",
            "https://public.test\\@127.0.0.1/",
            "https://0x7f.1/",
            "https://[::ffff:7f00:1]/",
            "https://xn--/",
        ]
    ),
).filter(str.isascii)


@settings(max_examples=300, deadline=None)
@given(location=LOCATIONS)
def test_hostile_redirects_lead_only_to_checked_urls(location: str) -> None:
    requested: list[httpx.URL] = []

    async def attempt() -> None:
        with respx.mock(assert_all_called=False) as mock:
            mock.get("https://public.test/start").respond(302, headers={"location": location})
            mock.route().respond(200, content=IMAGES["png"])
            async with create_fetch_client(STRICT, ssl_context=OFFLINE_TLS) as strict:
                with contextlib.suppress(FetchError):
                    await fetch(strict, "https://public.test/start")
            requested.extend(call.request.url for call in mock.calls)

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(attempt())
    finally:
        loop.close()
    assert requested[0] == "https://public.test/start"
    for url in requested[1:]:  # a name still meets the connect-time check, bypassed here
        check_outbound_url(str(url), allow_private=False)
