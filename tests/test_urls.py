"""Which URLs and addresses the service refuses to contact."""

from __future__ import annotations

import ipaddress

import pytest

from app.core.urls import (
    UrlPolicyError,
    check_outbound_url,
    embedded_ipv4,
    is_forbidden_address,
    literal_address,
)

FORBIDDEN = [
    "127.0.0.1",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",
    "0.0.0.0",
    "100.64.0.1",
    "224.0.0.1",
    "255.255.255.255",
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "ff02::1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "2002:7f00:1::",
    "64:ff9b::a9fe:a9fe",
    "64:ff9b::7f00:1",
    "64:ff9b:1::1",
    "::7f00:1",
    "fec0::1",
    "2001::1",
]
ALLOWED = ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "64:ff9b::808:808"]


@pytest.mark.parametrize("address", FORBIDDEN)
def test_internal_addresses_are_forbidden(address: str) -> None:
    assert is_forbidden_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_are_allowed(address: str) -> None:
    assert not is_forbidden_address(ipaddress.ip_address(address))


def carrying(ipv4: str) -> dict[str, ipaddress.IPv6Address]:
    """The IPv6 forms that carry `ipv4` in their last 32 bits."""
    low = int(ipaddress.IPv4Address(ipv4))
    prefixes = {"mapped": "::ffff:0:0", "translated": "::ffff:0:0:0", "nat64": "64:ff9b::"}
    return {
        name: ipaddress.IPv6Address(int(ipaddress.IPv6Address(prefix)) | low)
        for name, prefix in prefixes.items()
    }


@pytest.mark.parametrize(
    ("ipv4", "forbidden"),
    [
        ("127.0.0.1", True),
        ("10.0.0.1", True),
        ("172.16.5.4", True),
        ("192.168.1.1", True),
        ("169.254.169.254", True),
        ("100.64.0.1", True),
        ("0.0.0.0", True),
        ("224.0.0.1", True),
        ("8.8.8.8", False),
        ("93.184.216.34", False),
    ],
)
@pytest.mark.parametrize("form", ["mapped", "translated", "nat64"])
def test_ipv6_forms_carrying_an_ipv4_address_are_judged_by_it(
    ipv4: str, forbidden: bool, form: str
) -> None:
    # ::ffff:0:0/96 (IPv4-mapped), ::ffff:0:0:0/96 (IPv4-translated, RFC 2765/6145), 64:ff9b::/96
    address = carrying(ipv4)[form]
    assert is_forbidden_address(ipaddress.IPv4Address(ipv4)) is forbidden
    assert is_forbidden_address(address) is forbidden, str(address)


@pytest.mark.parametrize(
    ("spelling", "ipv4"),
    [
        ("::ffff:0:7f00:1", "127.0.0.1"),
        ("::ffff:0:127.0.0.1", "127.0.0.1"),
        ("0:0:0:0:ffff:0:a00:1", "10.0.0.1"),
        ("::ffff:7f00:1", "127.0.0.1"),
        ("::ffff:0:808:808", "8.8.8.8"),
    ],
)
def test_every_spelling_of_a_translated_or_mapped_address_is_recognised(
    spelling: str, ipv4: str
) -> None:
    found = literal_address(f"[{spelling}]")
    assert isinstance(found, ipaddress.IPv6Address)
    assert embedded_ipv4(found) == ipaddress.IPv4Address(ipv4)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("[::1]", "::1"),
        ("example.com", None),
        ("deadbeef.com", None),
        ("1.2.3.4.", None),
    ],
)
def test_every_spelling_of_an_ip_literal_is_recognised(host: str, expected: str | None) -> None:
    found = literal_address(host)
    assert (str(found) if found else None) == expected


@pytest.mark.parametrize(
    "url",
    [
        "https://127.1/x",
        "https://2130706433/x",
        "https://0x7f000001/",
        "https://[::ffff:7f00:1]/",
        "https://[64:ff9b::a9fe:a9fe]/latest",
        "https://[::ffff:0:7f00:1]/",
        "https://[::ffff:0:169.254.169.254]/latest",
        "https://[::ffff:0:a00:1]:8443/",
        "https://localhost./x",
        "https://api.localhost/x",
        "https://@example.com/",
        "https://user:pass@example.com/",
        "https://[::1/",
        "http://example.com/",
        "ftp://example.com/",
        "https:///nohost",
    ],
)
def test_unsafe_urls_are_refused(url: str) -> None:
    with pytest.raises(UrlPolicyError):
        check_outbound_url(url, allow_private=False)


def test_public_https_urls_pass_and_private_ones_pass_when_allowed() -> None:
    assert check_outbound_url("https://hooks.example.com/a?b=1", allow_private=False)
    assert check_outbound_url("https://[::ffff:8.8.8.8]/hook", allow_private=False)
    assert check_outbound_url("https://[::ffff:0:808:808]/hook", allow_private=False)
    assert check_outbound_url("http://127.0.0.1:8000/cb", allow_private=True)
