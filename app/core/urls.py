"""Rules for URLs the service builds or will contact itself."""

from __future__ import annotations

import ipaddress
import re
import socket
from urllib.parse import urlsplit

import httpx


class UrlPolicyError(ValueError):
    """A URL the service must not use."""


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_CALLBACK_URL_LENGTH = 2048  # the provider's limit on the callback_url it is given

_LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")
# IPv6 ranges whose last 32 bits are an IPv4 address that the packet reaches: judged by it.
_CARRY_IPV4 = (
    ipaddress.IPv6Network("::ffff:0:0/96"),  # IPv4-mapped (RFC 4291)
    ipaddress.IPv6Network("::ffff:0:0:0/96"),  # IPv4-translated (RFC 2765, RFC 6145 SIIT)
    ipaddress.IPv6Network("64:ff9b::/96"),  # NAT64 well-known prefix (RFC 6052)
)
# IPv6 ranges that reach IPv4 addresses in other ways, or are deprecated local scopes.
_FORBIDDEN_V6 = (
    ipaddress.IPv6Network("64:ff9b:1::/48"),  # NAT64 for local use (RFC 8215)
    ipaddress.IPv6Network("fec0::/10"),  # site-local (deprecated)
    ipaddress.IPv6Network("::/96"),  # IPv4-compatible (deprecated), ::, ::1
)
# Hosts that the system resolver reads as IPv4 although they are not dotted quads:
# "127.1", "2130706433", "0x7f000001", "0177.0.0.1".
_NUMERIC_HOST = re.compile(r"[0-9a-fA-Fx.]+")


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, translated, NAT64, 6to4), if any."""
    if any(address in net for net in _CARRY_IPV4):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def is_forbidden_address(address: IPAddress) -> bool:
    """True for every address a request from this service must never reach without permission."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = embedded_ipv4(address)
        if embedded is not None:
            return is_forbidden_address(embedded)
        if address.teredo is not None or any(address in net for net in _FORBIDDEN_V6):
            return True
    return not address.is_global or address.is_multicast


def literal_address(host: str) -> IPAddress | None:
    """The IP address a URL host names literally (in any spelling a resolver accepts)."""
    bare = host.strip("[]")
    try:
        return ipaddress.ip_address(bare)
    except ValueError:
        pass
    if _NUMERIC_HOST.fullmatch(bare) and not bare.endswith("."):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(bare))
        except OSError:
            return None
    return None


def check_outbound_url(url: str, *, allow_private: bool, what: str = "URL") -> str:
    """Refuse a URL that is not https (http only with private networks allowed) or names a
    private, loopback or otherwise internal host literally. DNS names are checked again at
    connect time by whoever connects."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as exc:
        raise UrlPolicyError(f"{what} is not a valid URL") from exc
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes:
        raise UrlPolicyError(f"{what} must use {' or '.join(schemes)}")
    if not host:
        raise UrlPolicyError(f"{what} has no host")
    if "@" in parts.netloc:
        raise UrlPolicyError(f"{what} must not carry credentials")
    if allow_private:
        return url
    name = host.lower().rstrip(".")
    if name in _LOCAL_NAMES or name.endswith(".localhost"):
        raise UrlPolicyError(f"{what} points to a local host")
    address = literal_address(host)
    if address is not None and is_forbidden_address(address):
        raise UrlPolicyError(f"{what} points to a private or internal address")
    return url


def is_under(url: str, base: str) -> bool:
    """Whether `url` lies at or below `base` (an absolute http(s) URL): the same scheme, host and
    port, no credentials, and a path inside the base's, compared after parsing (dot segments
    resolved), so neither `http://base@elsewhere` nor `/base/../other` passes."""
    try:
        target, root = httpx.URL(url), httpx.URL(base)
    except (httpx.InvalidURL, ValueError):  # UnicodeError included
        return False
    if target.userinfo or (target.scheme, target.host, target.port) != (
        root.scheme,
        root.host,
        root.port,
    ):
        return False
    return target.path.startswith(root.path.rstrip("/") + "/")
