"""Rules for URLs the service builds or will contact itself."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


class UrlPolicyError(ValueError):
    """A URL the service must not use."""


_LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")


def is_forbidden_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for every address a request from this service must never reach without permission."""
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped or address.sixtofour
        if mapped is not None:
            return is_forbidden_address(mapped)
        if address.teredo is not None:
            return True
    return not address.is_global or address.is_multicast


def literal_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address a URL host names literally, or None for a DNS name."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def check_outbound_url(url: str, *, allow_private: bool, what: str = "URL") -> str:
    """Refuse a URL that is not https (http only with private networks allowed) or names a
    private, loopback or otherwise internal host literally. DNS names are checked again at
    connect time by whoever connects."""
    parts = urlsplit(url)
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes:
        raise UrlPolicyError(f"{what} must use {' or '.join(schemes)}")
    host = parts.hostname
    if not host:
        raise UrlPolicyError(f"{what} has no host")
    if parts.username or parts.password:
        raise UrlPolicyError(f"{what} must not carry credentials")
    if allow_private:
        return url
    if host.lower().rstrip(".") in _LOCAL_NAMES or host.lower().endswith(".localhost"):
        raise UrlPolicyError(f"{what} points to a local host")
    address = literal_address(host)
    if address is not None and is_forbidden_address(address):
        raise UrlPolicyError(f"{what} points to a private or internal address")
    return url
