"""Tests for workers.netguard, the SSRF guard for ``http`` jobs (ADR 0010).

Traffic rule: these tests connect to nothing but 127.0.0.1, and only under a policy whose
allow-list admits 127.0.0.1/32. Every other target must be refused before a connection is
attempted, which is proven with a stub resolver and a transport that fails the test if it is
ever asked to send anything. Tests that involve non-loopback addresses and a real socket go
through ``LoopbackOnly``, which refuses to forward a request to any other host.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import pytest_asyncio

from pgsched.workers import netguard
from pgsched.workers.netguard import (
    DEFAULT_MAX_BODY,
    REDACTED,
    HttpResult,
    NetPolicy,
    TargetRefused,
    check_url,
    fetch,
    is_public,
    redact_headers,
    system_resolver,
)

PUBLIC_V4 = "93.184.216.34"
PUBLIC_V6 = "2606:2800:220:1:248:1893:25c8:1946"
CANARY = "c4nary-9f2"

# The only DNS these tests see. Names under .example/.test/.internal never reach a real
# resolver: every check_url/fetch call below passes a StubResolver.
DNS: dict[str, list[str]] = {
    "example.com": [PUBLIC_V4],
    "dual.example": [PUBLIC_V4, PUBLIC_V6],
    "xn--bcher-kva.example": [PUBLIC_V4],
    "localhost": ["127.0.0.1", "::1"],
    "metadata.google.internal": ["169.254.169.254"],
    "mixed.example": [PUBLIC_V4, "10.0.0.5"],
    "v6mixed.example": [PUBLIC_V6, "fd00::1"],
    "mapped.example": ["::ffff:192.168.0.1"],
    "scoped.example": ["fe80::1%eth0"],
    "cgnat.example": ["100.100.100.100"],
    "127.0.0.1.nip.io": ["127.0.0.1"],
    "empty.example": [],
    "garbage.example": ["not-an-ip"],
    "internal.example": ["192.168.1.10"],
    "tenant.internal.example": ["10.20.30.40"],
    "pinned.test": ["127.0.0.1"],
}


class StubResolver:
    """A Resolver backed by a dict; unknown names fail like NXDOMAIN. Records every call."""

    def __init__(self, table: dict[str, list[str]] | None = None) -> None:
        self.table = DNS if table is None else table
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(self.table[host])


@pytest.fixture(autouse=True)
def _no_real_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test must pass a stub resolver or a literal address: real DNS is off limits."""

    async def refuse(host: str, port: int) -> list[str]:
        raise AssertionError(f"real DNS lookup for {host!r}")

    monkeypatch.setattr(netguard, "system_resolver", refuse)


def no_connect_transport() -> tuple[httpx.MockTransport, list[httpx.Request]]:
    """A transport that fails the test if fetch ever hands it a request."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        raise AssertionError(f"connected to {request.url.host}")

    return httpx.MockTransport(handler), seen


DEFAULT = NetPolicy()
WEB_PORTS = NetPolicy(allowed_ports=frozenset({80, 443}))
LOOPBACK_ONLY = NetPolicy(allow=(ipaddress.ip_network("127.0.0.1/32"),))
NO_HTTP = NetPolicy(allowed_schemes=frozenset({"https"}))

# (url, policy, fragment the refusal reason must contain). The fragment pins down *why* a
# target is refused, so a case cannot pass by failing for an unrelated reason.
REFUSED: list[tuple[str, NetPolicy, str]] = [
    # IPv4 loopback, in every spelling inet_aton accepts
    ("http://127.0.0.1/", DEFAULT, "127.0.0.1: loopback"),
    ("http://127.0.0.1./", DEFAULT, "127.0.0.1 (written '127.0.0.1.'): loopback"),
    ("http://127.1/", DEFAULT, "127.0.0.1 (written '127.1'): loopback"),
    ("http://2130706433/", DEFAULT, "127.0.0.1 (written '2130706433'): loopback"),
    ("http://0x7f000001/", DEFAULT, "127.0.0.1 (written '0x7f000001'): loopback"),
    ("http://0X7F000001./", DEFAULT, "127.0.0.1 (written '0x7f000001.'): loopback"),
    ("http://0x7f.0.0.1/", DEFAULT, "127.0.0.1 (written '0x7f.0.0.1'): loopback"),
    ("http://0177.1/", DEFAULT, "127.0.0.1 (written '0177.1'): loopback"),
    ("http://0177.0.0.1/", DEFAULT, "malformed URL"),  # httpx rejects leading zeros in a.b.c.d
    ("http://127.0.0.2/", LOOPBACK_ONLY, "127.0.0.2: loopback"),  # /32 admits only .1
    # this-network, private, link-local, CGNAT and the other special-purpose IPv4 ranges
    ("http://0.0.0.0/", DEFAULT, "0.0.0.0: this-network"),
    ("http://0/", DEFAULT, "0.0.0.0 (written '0'): this-network"),
    ("http://10.0.0.1/", DEFAULT, "10.0.0.1: private"),
    ("http://167772161/", DEFAULT, "10.0.0.1 (written '167772161'): private"),
    ("http://172.16.0.1/", DEFAULT, "172.16.0.1: private"),
    ("http://172.31.255.254/", DEFAULT, "172.31.255.254: private"),
    ("http://192.168.1.1/", DEFAULT, "192.168.1.1: private"),
    ("http://0xc0.0xa8.1.1/", DEFAULT, "192.168.1.1 (written '0xc0.0xa8.1.1'): private"),
    ("http://169.254.169.254/latest/meta-data/", DEFAULT, "169.254.169.254: link-local"),
    ("http://169.254.1.1/", DEFAULT, "169.254.1.1: link-local"),
    ("http://100.64.0.1/", DEFAULT, "100.64.0.1: carrier-grade NAT"),
    ("http://198.18.0.1/", DEFAULT, "198.18.0.1: benchmarking"),
    ("http://192.0.2.1/", DEFAULT, "192.0.2.1: documentation"),
    ("http://192.0.0.9/", DEFAULT, "192.0.0.9: IETF protocol assignments"),
    ("http://192.88.99.1/", DEFAULT, "192.88.99.1: 6to4 relay anycast"),
    ("http://224.0.0.1/", DEFAULT, "224.0.0.1: multicast"),
    ("http://240.0.0.1/", DEFAULT, "240.0.0.1: reserved"),
    ("http://255.255.255.255/", DEFAULT, "255.255.255.255: broadcast"),
    # IPv6 literals, including forms that carry an IPv4 address
    ("http://[::1]/", DEFAULT, "::1: loopback"),
    ("http://[::]/", DEFAULT, "address ::: unspecified"),
    ("http://[::ffff:127.0.0.1]/", DEFAULT, "IPv4-mapped 127.0.0.1, loopback"),
    ("http://[::ffff:7f00:1]/", DEFAULT, "IPv4-mapped 127.0.0.1, loopback"),
    ("http://[::ffff:169.254.169.254]/", DEFAULT, "IPv4-mapped 169.254.169.254, link-local"),
    ("http://[::7f00:1]/", DEFAULT, "IPv4-compatible (deprecated)"),
    ("http://[fe80::1]/", DEFAULT, "fe80::1: link-local"),
    ("http://[fe80::1%25eth0]/", DEFAULT, "fe80::1 (written 'fe80::1%25eth0'): link-local"),
    ("http://[fc00::1]/", DEFAULT, "fc00::1: unique-local"),
    ("http://[fd12::1]/", DEFAULT, "fd12::1: unique-local"),
    ("http://[fec0::1]/", DEFAULT, "fec0::1: site-local"),
    ("http://[ff02::1]/", DEFAULT, "ff02::1: multicast"),
    ("http://[ff0e::1]/", DEFAULT, "ff0e::1: multicast"),  # is_global says True on 3.11.7
    ("http://[2002:7f00:1::]/", DEFAULT, "6to4 127.0.0.1, loopback"),
    ("http://[2002:a9fe:a9fe::1]/", DEFAULT, "6to4 169.254.169.254, link-local"),
    ("http://[64:ff9b::a00:1]/", DEFAULT, "NAT64 10.0.0.1, private"),
    ("http://[64:ff9b::169.254.169.254]/", DEFAULT, "NAT64 169.254.169.254, link-local"),
    ("http://[64:ff9b:1::1]/", DEFAULT, "local-use NAT64"),
    ("http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/", DEFAULT, "Teredo client 127.0.0.1"),
    ("http://[2001:db8::1]/", DEFAULT, "2001:db8::1: documentation"),
    ("http://[100::1]/", DEFAULT, "100::1: discard-only"),
    # hostnames whose (stub) DNS answers include a refused address
    ("http://localhost/", DEFAULT, "'localhost' resolves to 127.0.0.1: loopback"),
    ("http://LOCALHOST./", DEFAULT, "'localhost' resolves to 127.0.0.1: loopback"),
    ("http://localhost/", LOOPBACK_ONLY, "'localhost' resolves to ::1: loopback"),
    ("http://metadata.google.internal/", DEFAULT, "resolves to 169.254.169.254: link-local"),
    ("http://mixed.example/", DEFAULT, "'mixed.example' resolves to 10.0.0.5: private"),
    ("http://v6mixed.example/", DEFAULT, "resolves to fd00::1: unique-local"),
    ("http://mapped.example/", DEFAULT, "IPv4-mapped 192.168.0.1, private"),
    ("http://scoped.example/", DEFAULT, "resolves to fe80::1: link-local"),
    ("http://cgnat.example/", DEFAULT, "resolves to 100.100.100.100: carrier-grade NAT"),
    ("http://127.0.0.1.nip.io/", DEFAULT, "resolves to 127.0.0.1: loopback"),
    ("http://nxdomain.example/", DEFAULT, "'nxdomain.example' did not resolve"),
    ("http://empty.example/", DEFAULT, "'empty.example' resolved to no addresses"),
    ("http://garbage.example/", DEFAULT, "resolver returned a non-address"),
    # schemes, userinfo, ports and malformed hosts
    ("file:///etc/passwd", DEFAULT, "scheme 'file' is not allowed"),
    ("gopher://127.0.0.1:70/_stats", DEFAULT, "scheme 'gopher' is not allowed"),
    ("ftp://example.com/", DEFAULT, "scheme 'ftp' is not allowed"),
    ("dict://127.0.0.1:11211/stats", DEFAULT, "scheme 'dict' is not allowed"),
    ("http://example.com/", NO_HTTP, "scheme 'http' is not allowed"),
    ("//example.com/", DEFAULT, "scheme '' is not allowed"),
    ("http://example.com@127.0.0.1/", DEFAULT, "host '127.0.0.1': URLs with userinfo"),
    ("http://user:pw@example.com/", DEFAULT, "host 'example.com': URLs with userinfo"),
    ("http://example.com\\@127.0.0.1/", DEFAULT, "host '127.0.0.1': URLs with userinfo"),
    ("http://example.com:22/", WEB_PORTS, "port 22 is not allowed"),
    ("http://example.com:0/", DEFAULT, "invalid port 0"),
    ("http://example.com:99999/", DEFAULT, "invalid port 99999"),
    ("http:///no-host", DEFAULT, "URL has no host"),
    ("http://1.2.3.4.5/", DEFAULT, "'1.2.3.4.5' is not a valid IP address"),
    ("http://256.1/x", DEFAULT, "'256.1' is not a valid IP address"),
    ("http://%31%32%37.0.0.1/", DEFAULT, "'%31%32%37.0.0.1' is not a valid IP address"),
    ("http://127.0.0.1%09/", DEFAULT, "is not a valid hostname"),
    ("http://[1.2.3.4]/", DEFAULT, "malformed URL"),
]


def _with_query(url: str) -> str:
    """Every refused URL carries a credential-looking query that reasons must never echo."""
    return f"{url}{'&' if '?' in url else '?'}token={CANARY}"


_POLICY_NAMES = {
    id(DEFAULT): "",
    id(WEB_PORTS): " [ports 80,443]",
    id(LOOPBACK_ONLY): " [allow 127.0.0.1/32]",
    id(NO_HTTP): " [https only]",
}


def _case_id(case: tuple[str, NetPolicy, str]) -> str:
    url, policy, _ = case
    return url + _POLICY_NAMES[id(policy)]


def test_refused_table_is_large_enough() -> None:
    assert len(REFUSED) >= 40
    assert len({(url, id(policy)) for url, policy, _ in REFUSED}) == len(REFUSED)


@pytest.mark.asyncio
@pytest.mark.parametrize(("url", "policy", "fragment"), REFUSED, ids=map(_case_id, REFUSED))
async def test_check_url_refuses(url: str, policy: NetPolicy, fragment: str) -> None:
    resolver = StubResolver()
    with pytest.raises(TargetRefused) as info:
        await check_url(_with_query(url), policy, resolver)
    reason = info.value.reason
    assert fragment in reason
    assert "\n" not in reason
    assert str(info.value) == reason
    assert CANARY not in reason
    assert "pw" not in reason
    assert len(resolver.calls) <= 1  # resolved at most once


@pytest.mark.asyncio
@pytest.mark.parametrize(("url", "policy", "fragment"), REFUSED, ids=map(_case_id, REFUSED))
async def test_fetch_refuses_before_connecting(url: str, policy: NetPolicy, fragment: str) -> None:
    transport, seen = no_connect_transport()
    with pytest.raises(TargetRefused) as info:
        await fetch(
            "GET",
            _with_query(url),
            headers={"Authorization": f"Bearer {CANARY}"},
            timeout_s=5,
            policy=policy,
            resolver=StubResolver(),
            transport=transport,
        )
    assert fragment in info.value.reason
    assert seen == []


@pytest.mark.asyncio
async def test_literal_addresses_never_reach_the_resolver() -> None:
    resolver = StubResolver()
    for url in ("http://2130706433/", "http://[::ffff:7f00:1]/", "http://10.0.0.1/"):
        with pytest.raises(TargetRefused):
            await check_url(url, DEFAULT, resolver)
    assert resolver.calls == []


# ------------------------------------------------------------------------------------------
# Admitted targets (no connection needed: check_url only resolves, through the stub)
# ------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_public_name_is_admitted_and_resolved_once() -> None:
    resolver = StubResolver()
    target = await check_url("https://Example.COM./path?q=1", DEFAULT, resolver)
    assert target.host == "example.com"
    assert target.port == 443
    assert target.scheme == "https"
    assert target.ips == (ipaddress.ip_address(PUBLIC_V4),)
    assert resolver.calls == [("example.com", 443)]


@pytest.mark.asyncio
async def test_every_public_answer_is_kept_for_pinning() -> None:
    target = await check_url("http://dual.example:8080/", DEFAULT, StubResolver())
    assert target.ips == (ipaddress.ip_address(PUBLIC_V4), ipaddress.ip_address(PUBLIC_V6))
    assert target.port == 8080


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "url",
    [
        f"http://{PUBLIC_V4}/",
        f"http://[{PUBLIC_V6}]/",
        "http://1572395042/",  # 93.184.216.34 written as one decimal number
        "http://[::ffff:93.184.216.34]/",
        "http://[2002:5db8:d822::1]/",  # 6to4 around a public IPv4
        "http://[64:ff9b::5db8:d822]/",  # NAT64 around a public IPv4
        "http://BÜCHER.example/",  # IDNA: resolved as xn--bcher-kva.example
        "https://example.com:443/",
    ],
)
async def test_public_targets_are_admitted(url: str) -> None:
    target = await check_url(url, WEB_PORTS if ":443" in url else DEFAULT, StubResolver())
    assert all(is_public(ip) for ip in target.ips)


@pytest.mark.asyncio
async def test_allow_list_admits_private_cidr() -> None:
    policy = NetPolicy.from_env("10.0.0.0/8")
    target = await check_url("http://10.1.2.3:8080/health", policy, StubResolver())
    assert target.ips == (ipaddress.ip_address("10.1.2.3"),)
    # the same address behind a name, and in its IPv4-mapped spelling
    named = await check_url("http://tenant.internal.example/", policy, StubResolver())
    assert named.ips == (ipaddress.ip_address("10.20.30.40"),)
    mapped = await check_url("http://[::ffff:10.1.2.3]/", policy, StubResolver())
    assert mapped.ips == (ipaddress.ip_address("::ffff:10.1.2.3"),)
    # ...but not its neighbours
    with pytest.raises(TargetRefused, match=r"192\.168\.1\.10: private"):
        await check_url("http://internal.example/", policy, StubResolver())


@pytest.mark.asyncio
async def test_allow_hosts_admits_exact_name_only() -> None:
    policy = NetPolicy(allow_hosts=frozenset({"Internal.Example."}))
    assert policy.allow_hosts == frozenset({"internal.example"})
    target = await check_url("http://INTERNAL.example./", policy, StubResolver())
    assert target.ips == (ipaddress.ip_address("192.168.1.10"),)
    with pytest.raises(TargetRefused, match=r"tenant\.internal\.example"):
        await check_url("http://tenant.internal.example/", policy, StubResolver())


@pytest.mark.asyncio
async def test_allow_hosts_use_the_same_idna_encoding_as_urls() -> None:
    # httpx encodes "ß" with IDNA 2008 (xn--fa-hia); the stdlib's IDNA 2003 would say "fass".
    policy = NetPolicy.from_env("faß.example")
    assert policy.allow_hosts == frozenset({"xn--fa-hia.example"})
    resolver = StubResolver({"xn--fa-hia.example": ["10.9.8.7"], "fass.example": ["10.9.8.7"]})
    target = await check_url("http://FAß.example/", policy, resolver)
    assert target.host == "xn--fa-hia.example"
    with pytest.raises(TargetRefused, match=r"'fass\.example' resolves to 10\.9\.8\.7"):
        await check_url("http://fass.example/", policy, resolver)


@pytest.mark.asyncio
async def test_zone_id_refused_even_when_allow_listed() -> None:
    policy = NetPolicy(allow=(ipaddress.ip_network("fe80::/10"),))
    assert (await check_url("http://[fe80::1]/", policy, StubResolver())).ips
    with pytest.raises(TargetRefused, match="zone ids are not supported"):
        await check_url("http://[fe80::1%25eth0]/", policy, StubResolver())


@pytest.mark.parametrize(
    ("address", "public"),
    [
        (PUBLIC_V4, True),
        (PUBLIC_V6, True),
        ("8.8.8.8", True),
        ("::ffff:8.8.8.8", True),
        ("2002:808:808::1", True),
        ("100.63.255.255", True),  # just below CGNAT
        ("100.128.0.0", True),  # just above CGNAT
        ("172.32.0.1", True),  # just above 172.16/12
        ("100.64.0.0", False),
        ("172.16.0.0", False),
        ("169.254.169.254", False),
        ("fe80::1%eth0", False),
        ("fe80::1", False),
        ("::ffff:10.0.0.1", False),
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", False),
        ("2001:0:0a00:0001::1", False),  # Teredo whose server is 10.0.0.1
        ("ff0e::1", False),
        ("233.252.0.1", False),
    ],
)
def test_is_public(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public


# ------------------------------------------------------------------------------------------
# NetPolicy.from_env
# ------------------------------------------------------------------------------------------


def test_from_env_parses_cidrs_ips_and_hosts() -> None:
    policy = NetPolicy.from_env(
        " 10.0.0.0/8, 127.0.0.1/32,internal.example ,, 192.168.5.7, fd12::/16, Other.Example.,"
    )
    assert policy.allow == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("192.168.5.7/32"),
        ipaddress.ip_network("fd12::/16"),
    )
    assert policy.allow_hosts == frozenset({"internal.example", "other.example"})
    assert policy.allowed_schemes == frozenset({"http", "https"})
    assert policy.allowed_ports is None


@pytest.mark.parametrize("value", [None, "", " , "])
def test_from_env_empty_is_default(value: str | None) -> None:
    assert NetPolicy.from_env(value) == NetPolicy()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10.0.0.1/8", r"entry 1 \('10\.0\.0\.1/8'\): host bits set; did you mean 10\.0\.0\.0/8\?"),
        ("10.0.0.0/8,10.0.0.0/33", r"entry 2 \('10\.0\.0\.0/33'\): not a valid CIDR or IP"),
        ("300.1.2.3", r"entry 1 \('300\.1\.2\.3'\): not a valid CIDR or IP"),
        ("0.0.0.0/0", r"a /0 allow-list would switch the SSRF guard off"),
        ("::/0", r"a /0 allow-list would switch the SSRF guard off"),
        ("*.example.com", r"entry 1 \('\*\.example\.com'\): wildcards are not supported"),
        ("bad_host!", r"entry 1 \('bad_host!'\): not a CIDR, IP address or hostname"),
        ("http://internal.example", r"not a valid CIDR or IP address"),
        ("a.b,-bad-.example", r"entry 2 .*not a CIDR, IP address or hostname"),
    ],
)
def test_from_env_rejects_bad_entries(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        NetPolicy.from_env(value)
    assert str(info.value).startswith("PGSCHED_HTTP_ALLOW entry ")


_PUBLIC = r"reaches public addresses; list only private, loopback or link-local networks"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        # A /0 in two halves: every address, the guard switched off.
        ("0.0.0.0/1,128.0.0.0/1", r"entry 1 \('0\.0\.0\.0/1'\): " + _PUBLIC),
        ("10.0.0.0/8,128.0.0.0/1", r"entry 2 \('128\.0\.0\.0/1'\): " + _PUBLIC),
        ("::/1,8000::/1", r"entry 1 \('::/1'\): " + _PUBLIC),
        ("2000::/3", _PUBLIC),
        ("::ffff:0:0/96", _PUBLIC),  # every IPv4 address, mapped
        ("::ffff:0.0.0.0/97", _PUBLIC),
        ("10.0.0.0/7", _PUBLIC),  # 10/8 and the public 11/8
        ("172.0.0.0/8", _PUBLIC),
        ("192.168.0.0/15", _PUBLIC),
        ("8.8.8.0/24", _PUBLIC),  # public anyway: listing it admits nothing but hides a mistake
        ("1.1.1.1", _PUBLIC),
        ("169.254.0.0/16", r"covers the cloud metadata address 169\.254\.169\.254; allow it "),
        ("169.254.169.0/24", r"allow it only by the exact entry 169\.254\.169\.254$"),
        ("::ffff:169.254.0.0/112", r"covers the cloud metadata address 169\.254\.169\.254"),
        ("fd00::/8", r"covers the cloud metadata address fd00:ec2::254"),
    ],
)
def test_from_env_refuses_entries_that_reach_too_far(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        NetPolicy.from_env(value)
    text = str(info.value)
    assert text.startswith("PGSCHED_HTTP_ALLOW entry ") and "\n" not in text


@pytest.mark.parametrize(
    "value",
    [
        "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10",
        "127.0.0.0/8,::1",
        "169.254.169.254",  # the metadata service, by exact entry only
        "169.254.169.254/32,::ffff:169.254.169.254,fd00:ec2::254",
        "169.254.0.0/17",  # link-local without the metadata address
        "fd12:3456::/32,fe80::/10",
        "::ffff:10.0.0.0/104",  # judged as 10.0.0.0/8
    ],
)
def test_from_env_accepts_non_public_networks(value: str) -> None:
    policy = NetPolicy.from_env(value)
    assert len(policy.allow) == value.count(",") + 1
    assert not any(policy.admits(ipaddress.ip_address(a)) for a in ("8.8.8.8", "2606:4700::1"))


def test_a_worker_with_a_too_broad_allow_list_exits_2_with_one_line(dsn: str) -> None:
    """`pgsched worker` reports the refused entry as one line, exit code 2, no traceback."""
    env = {**os.environ, "PGSCHED_HTTP_ALLOW": "10.0.0.0/8,0.0.0.0/1,128.0.0.0/1"}
    env.pop("PGSCHED_TEST_DSN", None)
    done = subprocess.run(
        [sys.executable, "-m", "pgsched", "--database-url", dsn, "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        "pgsched: PGSCHED_HTTP_ALLOW entry 2 ('0.0.0.0/1'): reaches public addresses; list only"
        " private, loopback or link-local networks (the allow-list admits what the guard"
        " refuses, nothing else)"
    ], done.stderr


def test_the_metadata_address_is_admitted_only_when_named() -> None:
    metadata = ipaddress.ip_address("169.254.169.254")
    assert NetPolicy.from_env("169.254.169.254").admits(metadata)
    assert not NetPolicy.from_env("169.254.0.0/17").admits(metadata)


# ------------------------------------------------------------------------------------------
# fetch without a network: request shape, fallback, timeouts
# ------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_https_request_is_pinned_with_original_host_and_sni() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, text="ok")

    async with httpx.MockTransport(handler) as transport:
        result = await fetch(
            "get",
            "https://example.com/api?k=v",
            headers={"Host": "evil.internal", "X-Trace": "1"},
            timeout_s=5,
            policy=DEFAULT,
            resolver=StubResolver(),
            transport=transport,
        )
    (request,) = seen
    assert request.url.host == PUBLIC_V4  # the connection goes to the validated address
    assert request.url.path == "/api"
    assert request.url.query == b"k=v"
    assert request.headers["host"] == "example.com"  # operator's Host header is ignored
    assert request.headers["x-trace"] == "1"
    assert request.extensions["sni_hostname"] == "example.com"  # TLS verified against the name
    assert result.final_url == "https://example.com/api"  # query dropped from the result
    assert result.peer_ip == PUBLIC_V4


@pytest.mark.asyncio
async def test_ip_literal_https_sends_no_sni_and_keeps_port_in_host() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    async with httpx.MockTransport(handler) as transport:
        await fetch(
            "GET",
            f"https://[{PUBLIC_V6}]:8443/",
            timeout_s=5,
            policy=DEFAULT,
            resolver=StubResolver(),
            transport=transport,
        )
    (request,) = seen
    assert "sni_hostname" not in request.extensions
    assert request.headers["host"] == f"[{PUBLIC_V6}]:8443"


@pytest.mark.asyncio
async def test_connect_error_falls_back_to_next_validated_address_only() -> None:
    hosts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        if request.url.host == PUBLIC_V4:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, text="v6")

    async with httpx.MockTransport(handler) as transport:
        result = await fetch(
            "GET",
            "http://dual.example/",
            timeout_s=5,
            policy=DEFAULT,
            resolver=StubResolver(),
            transport=transport,
        )
    assert hosts == [PUBLIC_V4, PUBLIC_V6]
    assert result.peer_ip == PUBLIC_V6
    assert result.body == "v6"


@pytest.mark.asyncio
async def test_whole_exchange_is_bounded_by_timeout() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200)  # pragma: no cover - cancelled first

    async with httpx.MockTransport(handler) as transport:
        with pytest.raises(TimeoutError):
            await fetch(
                "GET",
                "http://example.com/",
                timeout_s=0.05,
                policy=DEFAULT,
                resolver=StubResolver(),
                transport=transport,
            )


@pytest.mark.asyncio
@pytest.mark.parametrize("method", ["CONNECT", "TRACE", "BREW"])
async def test_unsupported_methods_are_rejected(method: str) -> None:
    transport, seen = no_connect_transport()
    with pytest.raises(ValueError, match="not supported"):
        await fetch(method, "http://example.com/", policy=DEFAULT, transport=transport)
    assert seen == []


def test_redact_headers_hides_secret_values() -> None:
    headers = [
        ("Authorization", "Bearer x"),
        ("Cookie", "a=1"),
        ("X-Api-Key", "k"),
        ("Set-Cookie", "s=1"),
        ("Set-Cookie", "t=2"),
        ("Content-Type", "text/plain"),
    ]
    assert redact_headers(headers) == {
        "authorization": REDACTED,
        "cookie": REDACTED,
        "x-api-key": REDACTED,
        "set-cookie": f"{REDACTED}, {REDACTED}",
        "content-type": "text/plain",
    }
    assert redact_headers({"X-AUTH-TOKEN": "t"}) == {"x-auth-token": REDACTED}


@pytest.mark.asyncio
async def test_system_resolver_returns_address_strings() -> None:
    # A numeric host: getaddrinfo answers without sending a DNS query.
    assert await system_resolver("127.0.0.1", 80) == ["127.0.0.1"]


def test_reason_is_always_one_line() -> None:
    assert TargetRefused("a\nb\r\n c").reason == "a b c"


# ------------------------------------------------------------------------------------------
# fetch against a real server on 127.0.0.1, admitted by the allow-list (127.0.0.1/32 only)
# ------------------------------------------------------------------------------------------

BIG_BODY = b"a" * 50_000


class _Handler(BaseHTTPRequestHandler):
    server: _RecordingServer

    def do_GET(self) -> None:
        self.server.requests.append((self.path, self.headers.get("Host", "")))
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if url.path == "/big":
            self._reply(200, BIG_BODY)
        elif url.path.startswith("/status/"):
            code = int(url.path.rsplit("/", 1)[1])
            self._reply(code, f"status {code}".encode())
        elif url.path == "/echo-host":
            self._reply(200, self.headers.get("Host", "").encode())
        elif url.path == "/echo-auth":
            self._reply(200, self.headers.get("Authorization", "none").encode())
        elif url.path == "/cookie":
            self._reply(200, b"ok", [("Set-Cookie", "session=abc"), ("X-Plain", "yes")])
        elif url.path == "/redirect":
            self._reply(302, b"moved", [("Location", query["to"][0])])
        else:
            self._reply(404, b"not found")

    def _reply(self, code: int, body: bytes, extra: list[tuple[str, str]] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra or []:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output clean


class _RecordingServer(ThreadingHTTPServer):
    daemon_threads = True
    requests: list[tuple[str, str]]

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that stops reading a truncated body is expected here


@pytest.fixture
def server() -> Iterator[_RecordingServer]:
    srv = _RecordingServer(("127.0.0.1", 0), _Handler)
    srv.requests = []
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def _port(srv: _RecordingServer) -> int:
    return int(srv.server_address[1])


class LoopbackOnly(httpx.AsyncBaseTransport):
    """A real transport that refuses to send to anything but 127.0.0.1 (test safety net)."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport(retries=0)
        self.hosts: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.hosts.append(request.url.host)
        if request.url.host != "127.0.0.1":
            raise AssertionError(f"test tried to reach {request.url.host}")
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest_asyncio.fixture
async def loopback() -> AsyncIterator[LoopbackOnly]:
    transport = LoopbackOnly()
    try:
        yield transport
    finally:
        await transport.aclose()


@pytest.mark.asyncio
async def test_fetch_truncates_body_at_10_kib(server: _RecordingServer) -> None:
    # The default transport path: URL and policy only ever allow 127.0.0.1.
    result = await fetch(
        "GET", f"http://127.0.0.1:{_port(server)}/big", timeout_s=5, policy=LOOPBACK_ONLY
    )
    assert result.status == 200
    assert result.truncated is True
    assert DEFAULT_MAX_BODY == 10_240
    assert result.body.startswith("a" * DEFAULT_MAX_BODY)
    assert result.body[DEFAULT_MAX_BODY:] == "\n[truncated at 10240 bytes]"
    assert result.peer_ip == "127.0.0.1"


@pytest.mark.asyncio
async def test_fetch_reports_status_and_small_body(server: _RecordingServer) -> None:
    result = await fetch(
        "GET", f"http://127.0.0.1:{_port(server)}/status/418", timeout_s=5, policy=LOOPBACK_ONLY
    )
    assert (result.status, result.body, result.truncated) == (418, "status 418", False)
    assert result.headers["content-type"] == "text/plain; charset=utf-8"


@pytest.mark.asyncio
async def test_pinning_sends_original_host_header(
    server: _RecordingServer, loopback: LoopbackOnly
) -> None:
    # pinned.test exists only in the stub; reaching the server proves we dialled the pinned IP.
    port = _port(server)
    result = await fetch(
        "GET",
        f"http://pinned.test:{port}/echo-host",
        headers={"Host": "evil.internal"},
        timeout_s=5,
        policy=LOOPBACK_ONLY,
        resolver=StubResolver(),
        transport=loopback,
    )
    assert result.body == f"pinned.test:{port}"
    assert result.peer_ip == "127.0.0.1"
    assert loopback.hosts == ["127.0.0.1"]


@pytest.mark.asyncio
async def test_dns_rebinding_cannot_redirect_the_connection(
    server: _RecordingServer, loopback: LoopbackOnly
) -> None:
    answers = iter([["127.0.0.1"], ["169.254.169.254"]])  # a second lookup would rebind

    async def rebinding(host: str, port: int) -> list[str]:
        return next(answers)

    result = await fetch(
        "GET",
        f"http://pinned.test:{_port(server)}/status/200",
        timeout_s=5,
        policy=LOOPBACK_ONLY,
        resolver=rebinding,
        transport=loopback,
    )
    assert result.status == 200
    assert next(answers) == ["169.254.169.254"]  # resolved once; the rebound answer unused


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("location", "fragment"),
    [
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254: link-local"),
        ("http://metadata.google.internal/", "resolves to 169.254.169.254: link-local"),
        ("http://[::1]:{port}/status/200", "::1: loopback"),
        ("http://localhost:{port}/status/200", "resolves to ::1: loopback"),
        ("http://0x7f000002:{port}/", "127.0.0.2 (written '0x7f000002'): loopback"),
        ("file:///etc/passwd", "scheme 'file' is not allowed"),
        ("http://[::1", "redirect Location is malformed"),
    ],
)
async def test_redirect_to_refused_target_is_refused_without_connecting(
    server: _RecordingServer, loopback: LoopbackOnly, location: str, fragment: str
) -> None:
    port = _port(server)
    with pytest.raises(TargetRefused) as info:
        await fetch(
            "GET",
            f"http://127.0.0.1:{port}/redirect?to={location.format(port=port)}",
            timeout_s=5,
            policy=LOOPBACK_ONLY,
            resolver=StubResolver(),
            max_redirects=3,
            transport=loopback,
        )
    assert info.value.reason.startswith("redirect 1 refused: ")
    assert fragment in info.value.reason
    assert loopback.hosts == ["127.0.0.1"]  # only the first hop was sent
    assert [path for path, _ in server.requests] == [server.requests[0][0]]


@pytest.mark.asyncio
async def test_redirects_are_not_followed_by_default(
    server: _RecordingServer, loopback: LoopbackOnly
) -> None:
    result = await fetch(
        "GET",
        f"http://127.0.0.1:{_port(server)}/redirect?to=http://169.254.169.254/",
        timeout_s=5,
        policy=LOOPBACK_ONLY,
        transport=loopback,
    )
    assert (result.status, result.redirects) == (302, 0)
    assert result.headers["location"] == "http://169.254.169.254/"
    assert len(server.requests) == 1


@pytest.mark.asyncio
async def test_admitted_redirect_is_followed_and_secrets_stay_same_origin(
    server: _RecordingServer, loopback: LoopbackOnly
) -> None:
    port = _port(server)

    async def follow(url: str) -> HttpResult:
        return await fetch(
            "GET",
            url,
            headers={"Authorization": f"Bearer {CANARY}"},
            timeout_s=5,
            policy=LOOPBACK_ONLY,
            resolver=StubResolver(),
            max_redirects=2,
            transport=loopback,
        )

    same = await follow(f"http://127.0.0.1:{port}/redirect?to=/echo-auth")
    assert (same.status, same.redirects, same.body) == (200, 1, f"Bearer {CANARY}")
    assert same.final_url == f"http://127.0.0.1:{port}/echo-auth"
    # pinned.test resolves to the same server, but it is another origin: credentials dropped
    other = await follow(f"http://127.0.0.1:{port}/redirect?to=http://pinned.test:{port}/echo-auth")
    assert (other.status, other.redirects, other.body) == (200, 1, "none")


@pytest.mark.asyncio
async def test_redirect_budget_returns_last_3xx(
    server: _RecordingServer, loopback: LoopbackOnly
) -> None:
    port = _port(server)
    loop_url = f"http://127.0.0.1:{port}/redirect?to=/redirect%3Fto%3D/status/200"
    result = await fetch(
        "GET", loop_url, timeout_s=5, policy=LOOPBACK_ONLY, max_redirects=1, transport=loopback
    )
    assert (result.status, result.redirects) == (302, 1)
    assert len(server.requests) == 2


@pytest.mark.asyncio
async def test_secret_response_headers_are_redacted(
    server: _RecordingServer, loopback: LoopbackOnly
) -> None:
    result = await fetch(
        "GET",
        f"http://127.0.0.1:{_port(server)}/cookie",
        timeout_s=5,
        policy=LOOPBACK_ONLY,
        transport=loopback,
    )
    assert result.headers["set-cookie"] == REDACTED
    assert result.headers["x-plain"] == "yes"
    assert "abc" not in repr(result)
