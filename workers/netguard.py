"""SSRF guard for ``http`` jobs: decide whether a URL may be fetched, then fetch it safely.

Operators define ``http`` jobs (method, URL, headers, body, expected status) and workers run them
from inside our network, so a job URL is a request to reach *from here*. ADR 0010
sets the rules this module enforces:

* Only ``http``/``https`` (configurable), no userinfo, optional port allow-list.
* The host is normalised the way resolvers would read it (``2130706433``, ``0x7f000001``,
  ``0177.1``, ``127.1``, trailing dots, IDNA, bracketed IPv6, zone ids) and resolved **once**.
* **Every** resolved address must be public (:func:`is_public`) unless the operator allow-list
  (:class:`NetPolicy`) admits it; one bad answer refuses the whole target.
* :func:`fetch` connects to the address that was validated (pinning), sending the original
  ``Host`` header and TLS SNI, so a second DNS answer (rebinding) is never consulted.
* Redirects are not followed by httpx; :func:`fetch` follows at most ``max_redirects`` hops
  itself and re-validates each one with :func:`check_url`.
* The response body is streamed and cut at ``max_body`` bytes (10 KiB by default); secret
  headers are redacted in results and stripped from cross-origin redirects.

The only I/O in the checking half is DNS resolution, which is injectable (:data:`Resolver`), so
tests prove refusals with a stub resolver and a transport that fails if it is ever used.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import dataclasses
import ipaddress
import logging
import re
import socket
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import cast

import httpx
import idna

from pgsched.app.domain.jobs import SECRET_HEADERS
from pgsched.app.settings import SettingsError

__all__ = [
    "DEFAULT_MAX_BODY",
    "REDACTED",
    "SECRET_HEADERS",
    "HttpResult",
    "IPAddress",
    "IPNetwork",
    "NetPolicy",
    "ResolvedTarget",
    "Resolver",
    "TargetRefused",
    "Unresolved",
    "check_url",
    "fetch",
    "is_public",
    "redact_headers",
    "system_resolver",
]

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]
"""``(host, port) -> IP strings``. Called at most once per URL checked."""

DEFAULT_MAX_BODY = 10_240
REDACTED = "[redacted]"
# Managed here, not by the operator: Host must match the validated URL (pinning), and the
# hop-by-hop/framing headers are httpx's job.
_DROPPED_REQUEST_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "upgrade", "te"}
)
# CONNECT/TRACE have no business in a scheduled job and CONNECT changes what the URL means.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_TRUNCATION_MARK = "\n[truncated at {n} bytes]"
_MAX_HOST_IN_REASON = 80
_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
_NUMERIC_LABEL = re.compile(r"[0-9]+|0[xX][0-9a-fA-F]*")


class TargetRefused(Exception):
    """The URL or one of the addresses it resolves to may not be fetched.

    ``reason`` is one line naming the host or address and why; it never contains userinfo,
    path or query string, so it can go straight into job events and logs.
    """

    def __init__(self, reason: str) -> None:
        self.reason = " ".join(reason.split())  # one line, whatever the input held
        super().__init__(self.reason)


class Unresolved(TargetRefused):
    """The host's name did not resolve. Not a policy decision: DNS failures are often
    temporary (a resolver restarting, a record not yet propagated), so a job may try again."""


# --------------------------------------------------------------------------------------------
# Address classification
# --------------------------------------------------------------------------------------------


def _nets(*specs: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ipaddress.ip_network(cidr), why) for cidr, why in specs)


# IANA special-purpose registries, spelled out rather than trusting ``is_global`` alone: its
# answers changed between 3.11 patch releases (gh-113171) and on 3.11.7 it calls 224.0.0.1,
# fec0::1, ff0e::1, ::7f00:1, 2002:7f00:1:: and 64:ff9b::a00:1 "global".
_V4_DENY = _nets(
    ("0.0.0.0/8", "this-network"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "carrier-grade NAT"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.169.254/32", "link-local (cloud metadata)"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "6to4 relay anycast"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("240.0.0.0/4", "reserved"),
)
_V6_DENY = _nets(
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    # IPv4-compatible addresses are deprecated (RFC 4291 §2.5.5.1); nothing legitimate uses them
    # and stacks disagree on how they route, so refuse rather than unwrap.
    ("::/96", "IPv4-compatible (deprecated)"),
    ("64:ff9b:1::/48", "local-use NAT64"),
    ("100::/64", "discard-only"),
    ("2001::/23", "IETF protocol assignments"),  # Teredo (2001::/32) is unwrapped before this
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"),
    ("5f00::/16", "SRv6 SIDs"),
    ("fc00::/7", "unique-local (private)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local (deprecated)"),
    ("ff00::/8", "multicast"),
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_TEREDO = ipaddress.IPv6Network("2001::/32")


def _embedded_v4(ip: ipaddress.IPv6Address) -> list[tuple[str, ipaddress.IPv4Address]]:
    """IPv4 addresses a v6 address hands traffic to: mapped, NAT64, 6to4, Teredo."""
    if ip.ipv4_mapped is not None:
        return [("IPv4-mapped", ip.ipv4_mapped)]
    if ip in _NAT64:
        return [("NAT64", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))]
    if ip.sixtofour is not None:
        return [("6to4", ip.sixtofour)]
    if ip in _TEREDO and ip.teredo is not None:
        server, client = ip.teredo
        return [("Teredo server", server), ("Teredo client", client)]
    return []


def _refusal(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public unicast address, or None if it is."""
    if isinstance(ip, ipaddress.IPv6Address):
        ip = ipaddress.IPv6Address(int(ip))  # drop any zone id; the address decides
        embedded = _embedded_v4(ip)
        for form, v4 in embedded:
            inner = _refusal(v4)
            if inner is not None:
                return f"{form} {v4}, {inner}"
        if embedded:
            return None  # the embedded v4 is public, so the tunnel lands on the public internet
        table = _V6_DENY
    else:
        table = _V4_DENY
    for net, why in table:
        if ip in net:
            return why
    # Backstop for anything the tables miss, including future stdlib additions.
    if not ip.is_global or ip.is_multicast or ip.is_reserved:
        return "not globally routable"
    return None


def is_public(ip: IPAddress) -> bool:
    """True if ``ip`` is a public unicast address that a job may reach without an allow-list.

    Refuses loopback, private (RFC 1918, fc00::/7), link-local (incl. 169.254.169.254,
    fe80::/10), CGNAT, 0.0.0.0/8, multicast, broadcast, reserved, benchmarking, documentation,
    site-local and discard ranges. IPv6 forms that carry an IPv4 address (mapped, NAT64
    64:ff9b::/96, 6to4 2002::/16, Teredo) are unwrapped and judged by the IPv4 rules;
    deprecated IPv4-compatible ``::a.b.c.d`` is refused outright.
    """
    return _refusal(ip) is None


# --------------------------------------------------------------------------------------------
# Policy
# --------------------------------------------------------------------------------------------


def _normalise_hostname(host: str) -> str:
    """Lower-case, IDNA-encoded, no trailing dot; ValueError if not a DNS name."""
    host = host.strip().rstrip(".").lower()
    try:
        # The IDNA 2008 encoder httpx applies to URL hosts (the stdlib codec is IDNA 2003 and
        # maps "ß" differently), so allow_hosts entries and URL hosts compare equal.
        ascii_host = host if host.isascii() else idna.encode(host).decode("ascii")
    except (idna.IDNAError, UnicodeError) as exc:
        raise ValueError(f"{host!r} is not a valid hostname") from exc
    labels = ascii_host.split(".")
    if len(ascii_host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"{host!r} is not a valid hostname")
    return ascii_host


class AllowListError(SettingsError):
    """A ``PGSCHED_HTTP_ALLOW`` entry is refused; the message is one line naming it.

    A SettingsError (so a ValueError), which ``pgsched`` reports as one line with exit code 2
    instead of a traceback.
    """


@dataclass(frozen=True)
class NetPolicy:
    """What an ``http`` job may reach beyond the public internet.

    ``allow`` admits non-public addresses by CIDR; ``allow_hosts`` admits exact hostnames
    whatever they resolve to (DNS for those names is trusted, so list only names you control).
    """

    allow: tuple[IPNetwork, ...] = ()
    allow_hosts: frozenset[str] = frozenset()
    allowed_schemes: frozenset[str] = frozenset({"http", "https"})
    allowed_ports: frozenset[int] | None = None

    def __post_init__(self) -> None:
        # Compare like with like: check_url sees normalised hosts and lower-case schemes.
        object.__setattr__(self, "allow", tuple(self.allow))
        hosts = frozenset(_normalise_hostname(h) for h in self.allow_hosts)
        object.__setattr__(self, "allow_hosts", hosts)
        schemes = frozenset(s.lower() for s in self.allowed_schemes)
        object.__setattr__(self, "allowed_schemes", schemes)

    @classmethod
    def from_env(cls, value: str | None) -> NetPolicy:
        """Parse ``PGSCHED_HTTP_ALLOW``: comma-separated CIDRs, bare IPs and hostnames.

        ``"10.0.0.0/8, 127.0.0.1/32, internal.example"``. Empty or None is the default policy
        (public internet only). A bad entry raises AllowListError naming it.
        """
        nets: list[IPNetwork] = []
        hosts: set[str] = set()
        for position, raw in enumerate((value or "").split(","), start=1):
            entry = raw.strip()
            if not entry:
                continue
            where = f"PGSCHED_HTTP_ALLOW entry {position} ({entry!r})"
            if "/" in entry or ":" in entry or _looks_numeric(entry):
                nets.append(_parse_allow_network(entry, where))
                continue
            if "*" in entry:
                raise AllowListError(f"{where}: wildcards are not supported; list exact hostnames")
            try:
                hosts.add(_normalise_hostname(entry))
            except ValueError as exc:
                raise AllowListError(f"{where}: not a CIDR, IP address or hostname") from exc
        return cls(allow=tuple(nets), allow_hosts=frozenset(hosts))

    def admits(self, ip: IPAddress) -> bool:
        """True if the allow-list covers ``ip`` (or the IPv4 address it maps to)."""
        candidates: list[IPAddress] = [ip]
        if isinstance(ip, ipaddress.IPv6Address):
            ip = ipaddress.IPv6Address(int(ip))
            candidates = [ip]
            if ip.ipv4_mapped is not None:  # the kernel routes ::ffff:a.b.c.d as a.b.c.d
                candidates.append(ip.ipv4_mapped)
        return any(c in net for c in candidates for net in self.allow)


def _looks_numeric(entry: str) -> bool:
    last = entry.rstrip(".").rsplit(".", 1)[-1]
    return bool(_NUMERIC_LABEL.fullmatch(last))


def _parse_allow_network(entry: str, where: str) -> IPNetwork:
    try:
        net = ipaddress.ip_network(entry, strict=True)
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise AllowListError(f"{where}: not a valid CIDR or IP address") from exc
        raise AllowListError(f"{where}: host bits set; did you mean {loose}?") from exc
    if net.prefixlen == 0:
        raise AllowListError(f"{where}: a /0 allow-list would switch the SSRF guard off")
    _check_breadth(net, where)
    return net


# The instance metadata services (AWS, GCP, Azure, OpenStack: 169.254.169.254; AWS over IPv6:
# fd00:ec2::254) hand out the machine's credentials: admitted only by an entry naming exactly
# that address, never as part of a wider network.
_METADATA = (ipaddress.IPv4Address("169.254.169.254"), ipaddress.IPv6Address("fd00:ec2::254"))
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def _check_breadth(net: IPNetwork, where: str) -> None:
    """Refuse an allow entry that reaches the public internet or covers a metadata address.

    The allow-list exists to admit *non-public* targets, so an entry must lie wholly inside one
    of the special-purpose blocks ``is_public`` refuses (10.0.0.0/8, 127.0.0.0/8, fc00::/7, …).
    A wider entry admits nothing a job needs and, like ``0.0.0.0/1,128.0.0.0/1`` (a /0 in two
    halves), can switch the guard off. An entry in ``::ffff:0:0/96`` is judged as the IPv4
    network it maps to.
    """
    judged: IPNetwork = net
    if isinstance(net, ipaddress.IPv6Network) and net.subnet_of(_MAPPED):
        judged = ipaddress.IPv4Network((int(net.network_address) & 0xFFFFFFFF, net.prefixlen - 96))
    if isinstance(judged, ipaddress.IPv4Network):
        inside = any(judged.subnet_of(block) for block, _ in _V4_DENY)  # type: ignore[arg-type]
    else:
        inside = any(judged.subnet_of(block) for block, _ in _V6_DENY)  # type: ignore[arg-type]
    if not inside:
        raise AllowListError(
            f"{where}: reaches public addresses; list only private, loopback or link-local "
            "networks (the allow-list admits what the guard refuses, nothing else)"
        )
    for address in _METADATA:
        if address.version == judged.version and address in judged and judged.num_addresses > 1:
            raise AllowListError(
                f"{where}: covers the cloud metadata address {address}; "
                f"allow it only by the exact entry {address}"
            )


# --------------------------------------------------------------------------------------------
# URL checking
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedTarget:
    """A URL that passed :func:`check_url`, with the addresses a fetch may connect to."""

    url: str
    scheme: str
    host: str  # normalised: lower-case, IDNA, no trailing dot, IPv6 without brackets
    port: int
    ips: tuple[IPAddress, ...]


async def system_resolver(host: str, port: int) -> list[str]:
    """Default :data:`Resolver`: the event loop's ``getaddrinfo`` (A and AAAA)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]) for info in infos]


def _short(text: str) -> str:
    return text if len(text) <= _MAX_HOST_IN_REASON else text[:_MAX_HOST_IN_REASON] + "..."


def _parse_ipv4_loose(host: str) -> ipaddress.IPv4Address:
    """Read ``host`` the way inet_aton does: 1-4 parts, each decimal, 0x-hex or 0-octal.

    Only called when the last label is numeric, which (as in the WHATWG URL standard) means
    the host is an IPv4 address or invalid: no top-level domain is numeric.
    """
    parts = host.split(".")
    if len(parts) > 4:
        raise ValueError("more than four parts")
    numbers: list[int] = []
    for part in parts:
        if not _NUMERIC_LABEL.fullmatch(part):  # int() would take "+1", " 1" and "1_0"
            raise ValueError("not a number")
        if part[:2].lower() == "0x":
            numbers.append(int(part[2:] or "0", 16))
        elif len(part) > 1 and part.startswith("0"):
            numbers.append(int(part, 8))
        else:
            numbers.append(int(part, 10))  # ValueError on anything non-numeric
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (4 - len(head)):
        raise ValueError("part out of range")
    value = last
    for i, n in enumerate(head):
        value += n << (8 * (3 - i))
    return ipaddress.IPv4Address(value)


def _literal_address(host: str) -> tuple[IPAddress | None, str]:
    """``(address, zone)`` if ``host`` is an IP literal in any form a resolver accepts."""
    if ":" in host:
        address, _, zone = host.partition("%")
        zone = zone.removeprefix("25")  # httpx keeps the URL's "%25" escape of "%"
        return ipaddress.IPv6Address(address), zone
    if _looks_numeric(host):
        return _parse_ipv4_loose(host), ""
    return None, ""


async def check_url(
    url: str, policy: NetPolicy, resolver: Resolver | None = None
) -> ResolvedTarget:
    """Validate ``url`` against ``policy`` and resolve it once; raise :class:`TargetRefused`.

    The URL is parsed by httpx, the same parser :func:`fetch` sends with, so the checker and
    the connector cannot disagree about which host a URL names.
    """
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, UnicodeError) as exc:
        raise TargetRefused(f"malformed URL ({type(exc).__name__})") from None
    scheme = parsed.scheme.lower()
    raw_host = parsed.raw_host.decode("ascii", "replace")
    if scheme not in policy.allowed_schemes:
        raise TargetRefused(f"scheme {_short(scheme)!r} is not allowed")
    if parsed.userinfo:
        # http://example.com@127.0.0.1/ targets 127.0.0.1; credentials belong in headers.
        raise TargetRefused(f"host {_short(raw_host)!r}: URLs with userinfo (user@) are refused")
    if not raw_host:
        raise TargetRefused("URL has no host")
    port = parsed.port if parsed.port is not None else _DEFAULT_PORTS.get(scheme, 0)
    if not 0 < port < 65536:
        raise TargetRefused(f"host {_short(raw_host)!r}: invalid port {port}")
    if policy.allowed_ports is not None and port not in policy.allowed_ports:
        raise TargetRefused(f"host {_short(raw_host)!r}: port {port} is not allowed")

    host = raw_host.lower().rstrip(".")
    try:
        literal, zone = _literal_address(host)
    except ValueError:
        raise TargetRefused(f"host {_short(raw_host)!r} is not a valid IP address") from None
    if literal is not None:
        written = "" if raw_host == str(literal) else f" (written {_short(raw_host)!r})"
        _judge(literal, policy, subject=f"address {literal}{written}")
        if zone:
            # Zone ids only mean something for link-local targets; we cannot pin one safely.
            raise TargetRefused(f"address {literal}: IPv6 zone ids are not supported")
        return ResolvedTarget(str(parsed), scheme, str(literal), port, (literal,))

    try:
        host = _normalise_hostname(host)
    except ValueError:
        raise TargetRefused(f"host {_short(raw_host)!r} is not a valid hostname") from None
    ips = await _resolve(host, port, resolver or system_resolver)
    if host not in policy.allow_hosts:
        for ip in ips:
            _judge(ip, policy, subject=f"host {host!r} resolves to {ip}")
    return ResolvedTarget(str(parsed), scheme, host, port, ips)


async def _resolve(host: str, port: int, resolver: Resolver) -> tuple[IPAddress, ...]:
    try:
        answers = await resolver(host, port)
    except (OSError, UnicodeError) as exc:  # socket.gaierror is an OSError
        raise Unresolved(f"host {host!r} did not resolve ({type(exc).__name__})") from None
    ips: list[IPAddress] = []
    for answer in answers:
        try:
            # getaddrinfo returns "fe80::1%eth0" for scoped answers; the address decides.
            ip = ipaddress.ip_address(answer.partition("%")[0])
        except ValueError:
            raise TargetRefused(f"host {host!r}: resolver returned a non-address") from None
        if ip not in ips:
            ips.append(ip)
    if not ips:
        raise TargetRefused(f"host {host!r} resolved to no addresses")
    return tuple(ips)


def _judge(ip: IPAddress, policy: NetPolicy, *, subject: str) -> None:
    if policy.admits(ip):
        return
    why = _refusal(ip)
    if why is not None:
        raise TargetRefused(f"{subject}: {why} address, not in the allow-list")


# --------------------------------------------------------------------------------------------
# Fetching
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpResult:
    """What an ``http`` job observed. Safe to store: bounded body, no secret header values."""

    status: int
    body: str  # at most max_body bytes of content, decoded, plus a marker when cut
    truncated: bool
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names, secrets redacted
    final_url: str = ""  # scheme://host[:port]/path of the last hop; query dropped (may hold keys)
    peer_ip: str = ""  # the pinned address the last hop connected to
    redirects: int = 0


def redact_headers(headers: Iterable[tuple[str, str]] | Mapping[str, str]) -> dict[str, str]:
    """Lower-case header names; values of :data:`SECRET_HEADERS` replaced by ``[redacted]``."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    out: dict[str, str] = {}
    for name, value in items:
        key = name.lower()
        shown = REDACTED if key in SECRET_HEADERS else value
        out[key] = f"{out[key]}, {shown}" if key in out else shown
    return out


def _display_url(target: ResolvedTarget) -> str:
    return str(httpx.URL(target.url).copy_with(query=None, fragment=None))


def _host_header(target: ResolvedTarget) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host
    if target.port != _DEFAULT_PORTS.get(target.scheme):
        host = f"{host}:{target.port}"
    return host


def _same_origin(a: ResolvedTarget, b: ResolvedTarget) -> bool:
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)


def _pinned_request(
    method: str,
    target: ResolvedTarget,
    ip: IPAddress,
    headers: Mapping[str, str],
    body: bytes | None,
    *,
    timeout_s: float,
) -> httpx.Request:
    """A request whose URL names the validated IP, with the original name in Host and SNI.

    httpcore connects to the URL's host and uses ``extensions["sni_hostname"]`` for both SNI
    and certificate hostname checking, so TLS is verified against the name the operator wrote.
    """
    url = httpx.URL(target.url).copy_with(host=str(ip))
    extensions: dict[str, object] = {
        "timeout": {"connect": timeout_s, "read": timeout_s, "write": timeout_s, "pool": timeout_s}
    }
    if target.scheme == "https" and target.host != str(ip):
        extensions["sni_hostname"] = target.host  # no SNI for IP literals (RFC 6066 §3)
    sent = {k: v for k, v in headers.items() if k.lower() not in _DROPPED_REQUEST_HEADERS}
    sent["Host"] = _host_header(target)
    return httpx.Request(method, url, headers=sent, content=body, extensions=extensions)


async def _send_pinned(
    transport: httpx.AsyncBaseTransport,
    method: str,
    target: ResolvedTarget,
    headers: Mapping[str, str],
    body: bytes | None,
    *,
    timeout_s: float,
) -> tuple[httpx.Response, IPAddress]:
    """Try the validated addresses in order; move on only if the connection never opened."""
    for attempt, ip in enumerate(target.ips, start=1):
        request = _pinned_request(method, target, ip, headers, body, timeout_s=timeout_s)
        log.debug("http job: %s %s:%d via %s", method, target.host, target.port, ip)
        try:
            return await transport.handle_async_request(request), ip
        except (httpx.ConnectError, httpx.ConnectTimeout):
            if attempt == len(target.ips):
                raise
    raise TargetRefused(f"host {target.host!r}: no addresses to connect to")


async def _read_bounded(response: httpx.Response, max_body: int) -> tuple[bytes, bool]:
    buf = bytearray()
    # aiter_bytes is an async generator; close it explicitly when we stop early.
    stream = cast("AsyncGenerator[bytes, None]", response.aiter_bytes())
    async with contextlib.aclosing(stream) as chunks:
        async for chunk in chunks:
            buf += chunk
            if len(buf) > max_body:  # stop reading: the rest is never downloaded
                return bytes(buf[:max_body]), True
    return bytes(buf), False


def _decode(content: bytes, response: httpx.Response) -> str:
    encoding = response.charset_encoding or "utf-8"
    try:
        codecs.lookup(encoding)
    except LookupError:
        encoding = "utf-8"
    return content.decode(encoding, errors="replace")


def _next_hop(
    method: str, status: int, body: bytes | None, location: str, base: ResolvedTarget
) -> tuple[str, str, bytes | None]:
    """Method, absolute URL and body for the hop after a redirect (browser rules, as httpx)."""
    try:
        url = str(httpx.URL(base.url).join(location))
    except (httpx.InvalidURL, UnicodeError):
        raise TargetRefused(f"host {base.host!r}: redirect Location is malformed") from None
    if status == 303 and method != "HEAD":
        return "GET", url, None
    if status in (301, 302) and method == "POST":
        return "GET", url, None
    return method, url, body


@dataclass(frozen=True)
class _Redirect:
    status: int
    location: str


async def _exchange(
    transport: httpx.AsyncBaseTransport,
    method: str,
    target: ResolvedTarget,
    headers: Mapping[str, str],
    body: bytes | None,
    *,
    timeout_s: float,
    max_body: int,
    follow: bool,
) -> HttpResult | _Redirect:
    """One request/response on a pinned connection; a redirect is reported, not followed."""
    response, ip = await _send_pinned(transport, method, target, headers, body, timeout_s=timeout_s)
    try:
        location = response.headers.get("location")
        if follow and location and response.status_code in _REDIRECT_STATUSES:
            return _Redirect(response.status_code, location)
        raw, truncated = await _read_bounded(response, max_body)
        text = _decode(raw, response)
        if truncated:
            text += _TRUNCATION_MARK.format(n=max_body)
        return HttpResult(
            status=response.status_code,
            body=text,
            truncated=truncated,
            headers=redact_headers(response.headers.multi_items()),
            final_url=_display_url(target),
            peer_ip=str(ip),
        )
    finally:
        await response.aclose()  # unread redirect bodies are dropped with the connection


async def fetch(
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    body: str | bytes | None = None,
    timeout_s: float = 10.0,
    policy: NetPolicy,
    resolver: Resolver | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    max_redirects: int = 0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> HttpResult:
    """Run one ``http`` job request under ``policy``.

    Raises :class:`TargetRefused` before any connection if the URL, or any redirect hop, is
    refused; :class:`TimeoutError` if the whole exchange (DNS, connect, redirects, body)
    exceeds ``timeout_s``; ``httpx.TransportError`` for network failures; ``ValueError`` for
    an unsupported method. Comparing ``status`` with the job's expected status is the caller's.

    With ``max_redirects=0`` a 3xx is returned as is. Otherwise each hop is re-checked, and
    after ``max_redirects`` hops the last 3xx is returned. ``transport`` replaces the default
    per-hop ``httpx.AsyncHTTPTransport`` (tests); it receives requests already pinned to an IP.
    """
    verb = method.upper()
    if verb not in _METHODS:
        raise ValueError(f"HTTP method {method!r} is not supported")
    sent = dict(headers or {})
    if not any(k.lower() == "accept-encoding" for k in sent):
        sent["Accept-Encoding"] = "identity"  # bounds decompression work per chunk read
    content = body.encode() if isinstance(body, str) else body
    async with asyncio.timeout(timeout_s):
        target = await check_url(url, policy, resolver)
        redirects = 0
        while True:
            async with contextlib.AsyncExitStack() as stack:
                active = transport
                if active is None:
                    # A fresh transport per hop: httpcore pools connections by (scheme, IP,
                    # port), and a TLS connection verified for one name must not carry another
                    # name's request. No AsyncClient either, so there is nothing to switch off
                    # (proxies from the environment, cookie jar, automatic redirects).
                    active = await stack.enter_async_context(httpx.AsyncHTTPTransport(retries=0))
                outcome = await _exchange(
                    active,
                    verb,
                    target,
                    sent,
                    content,
                    timeout_s=timeout_s,
                    max_body=max_body,
                    follow=redirects < max_redirects,
                )
            if isinstance(outcome, HttpResult):
                return dataclasses.replace(outcome, redirects=redirects)
            try:
                verb, next_url, content = _next_hop(
                    verb, outcome.status, content, outcome.location, target
                )
                nxt = await check_url(next_url, policy, resolver)
            except TargetRefused as exc:
                if isinstance(exc, Unresolved):  # the network's weather: stays retryable
                    raise Unresolved(f"redirect {redirects + 1}: {exc.reason}") from None
                raise TargetRefused(f"redirect {redirects + 1} refused: {exc.reason}") from None
            if not _same_origin(target, nxt):
                # Credentials were written for the first origin, not wherever it points us.
                sent = {k: v for k, v in sent.items() if k.lower() not in SECRET_HEADERS}
            target = nxt
            redirects += 1
