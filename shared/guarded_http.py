"""The one HTTP client for URLs we are given (a caller's ``DlrUrl``, New Message callbacks).

Such a URL is chosen by whoever calls our API, so calling it must not let them reach inside
our network, hold a worker, or fill our memory. :class:`GuardedClient` makes each call so:

- **https only.** Plain http only to a loopback address, and only while the app itself runs on
  localhost (:attr:`CallbackPolicy.local`: no ``WEBSITE_HOSTNAME`` and a loopback
  ``SMARTDIALOG_PUBLIC_BASE_URL``), so ``make run`` and the tests can call local receivers.
- **No internal address.** Loopback, private, link-local, shared (100.64/10), multicast,
  reserved, unspecified and site-local addresses are refused, in IPv4, IPv6 and the IPv6 forms
  that carry an IPv4 address (mapped ``::ffff:a.b.c.d``, compatible, 6to4, NAT64 64:ff9b::/96),
  judged with :mod:`ipaddress` *after* resolving the name at call time. The connection is made
  to the address that was checked (our network backend resolves, checks and connects in one
  step, so a second DNS answer cannot change it); TLS still verifies the certificate against
  the name. ``SMARTDIALOG_CALLBACK_ALLOWED_HOSTS`` (host names, ``*.suffix`` and CIDR ranges)
  lists internal targets that are allowed, e.g. subscribers inside a virtual network.
- **No redirects**, no environment proxy, no connection reuse, no header but printable ASCII.
- **One deadline per call** (``SMARTDIALOG_CALLBACK_TIMEOUT_SECONDS``) for name resolution,
  connect, TLS, request and answer together: every step gets only the time that is left
  (:mod:`shared.deadline`), so a server trickling one byte at a time is cut at the deadline.
- **A few KB of answer.** Reads are at most :data:`READ_CHUNK_BYTES` each; the body is kept up
  to :data:`MAX_ANSWER_BYTES`, then the connection is closed.

:func:`check_callback_url` judges what can be judged without DNS (scheme, literal addresses in
any notation a resolver accepts, ``localhost`` and ``*.localhost``); the send and subscription
actions use it to answer 400 at accept time. Names are judged when called.

Errors::

    CallbackError            (base; .host)
     +-- CallbackRefused     the guard refused the URL, its address or a header: permanent
     +-- CallbackFailed      no answer (name not found, connect, timeout, protocol): may pass later
"""

from __future__ import annotations

import base64
import concurrent.futures
import ipaddress
import json as jsonlib
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol
from urllib.parse import unquote_to_bytes

import httpcore
import httpx

from shared.deadline import Deadline, DeadlineStream
from shared.problems import Problem

__all__ = [
    "MAX_ANSWER_BYTES",
    "READ_CHUNK_BYTES",
    "CallbackAnswer",
    "CallbackError",
    "CallbackFailed",
    "CallbackPolicy",
    "CallbackRefused",
    "CallbackSettings",
    "GuardedClient",
    "Resolver",
    "check_callback_url",
    "literal_address",
    "parse_allowed_hosts",
    "system_resolver",
]

#: Body bytes of an answer we keep; the rest is never read.
MAX_ANSWER_BYTES = 4096
#: The most one socket read may take in.
READ_CHUNK_BYTES = 4096
#: Bytes of one answer (status line, headers, body) after which the call fails.
MAX_RECEIVED_BYTES = 64 * 1024
#: Name resolutions in flight at once (a hung resolver holds a thread, never a caller): more
#: than the calls an instance makes at once (two queue triggers of up to 24 invocations), so
#: names that hang past their calls' deadlines leave threads for the names that answer.
RESOLVER_THREADS = 64

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: ``resolver(host, port)``: the addresses of ``host``; raises ``OSError`` if it has none.
Resolver = Callable[[str, int], Sequence[str]]

_LOCALHOST = "localhost"
# What a header name or value may hold: printable ASCII and tab (no CR, LF or other control).
_HEADER_TEXT = re.compile(r"[\t\x20-\x7e]*")
# The notations inet_aton (and so getaddrinfo) reads as IPv4: 1 to 4 parts, each decimal,
# octal (leading 0) or hex (0x): 2130706433, 0x7f000001, 0177.0.0.1, 127.1.
_LEGACY_IPV4 = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}\.?$", re.I)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# Azure's platform address (WireServer, Azure DNS, health probes), inside every VNet yet "global".
_AZURE_PLATFORM = ipaddress.IPv4Address("168.63.129.16")
_PROPERTIES = (
    ("is_unspecified", "the unspecified address"),
    ("is_loopback", "a loopback address"),
    ("is_link_local", "a link-local address"),
    ("is_multicast", "a multicast address"),
    ("is_private", "a private address"),
    ("is_reserved", "a reserved address"),
    ("is_site_local", "a site-local address"),
)


class CallbackSettings(Protocol):
    """The settings this module reads (:class:`shared.settings.Settings` has them; settings
    validates the allow-list with :func:`parse_allowed_hosts`, so this module cannot import it)."""

    @property
    def callback_allowed_hosts(self) -> str: ...
    @property
    def callback_timeout_seconds(self) -> float: ...
    @property
    def website_hostname(self) -> str | None: ...
    @property
    def public_base_url(self) -> str: ...


# --- errors and answers -------------------------------------------------------------------------


class CallbackError(Exception):
    """A call to a URL we were given did not get an answer. ``str()`` names the host, never
    the URL (a URL may carry its owner's secret)."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"{host}: {reason}")
        self.host = host
        self.reason = reason


class CallbackRefused(CallbackError):
    """The guard refused the URL, the address its name resolved to, or a header no HTTP request
    can carry as it is (a line break, another control character, non-ASCII); nothing was sent."""


class CallbackFailed(CallbackError):
    """No answer: the name did not resolve, the connection failed, or the deadline passed."""

    def __init__(self, host: str, reason: str, *, timed_out: bool = False) -> None:
        super().__init__(host, reason)
        self.timed_out = timed_out


@dataclass(frozen=True)
class CallbackAnswer:
    """What the server answered: status, headers (lower-case names) and the first body bytes."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    #: True if the body was longer than :data:`MAX_ANSWER_BYTES` (the rest was not read).
    truncated: bool
    #: Bytes taken from the socket for this answer, headers included.
    bytes_received: int

    @property
    def is_success(self) -> bool:
        return 200 <= self.status < 300


# --- addresses and the policy ---------------------------------------------------------------------


def literal_address(host: str) -> IPAddress | None:
    """``host`` as an IP address if it is one in any notation a resolver accepts (IPv6 with or
    without brackets, dotted IPv4, or the legacy decimal, octal, hex and short IPv4 forms);
    None for a name."""
    text = host.strip().strip("[]")
    try:
        return ipaddress.ip_address(text.replace("%25", "%"))
    except ValueError:
        pass
    if _LEGACY_IPV4.match(text):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(text.rstrip(".")))
        except OSError:
            # Looks numeric but no resolver reads it: no such name exists either.
            return ipaddress.IPv4Address("0.0.0.0")
    return None


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or (int(address) >> 32 == 0 and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)  # NAT64, IPv4-compatible
    return None


def _is_loopback(address: IPAddress) -> bool:
    inner = _embedded_ipv4(address)
    return address.is_loopback or (inner is not None and inner.is_loopback)


def internal_reason(address: IPAddress) -> str | None:
    """Why ``address`` is not one we call (``"a private address"``, ...), or None if public."""
    inner = _embedded_ipv4(address)
    for candidate in (inner, address) if inner is not None else (address,):
        for attribute, label in _PROPERTIES:
            if getattr(candidate, attribute, False):
                return label
        if not candidate.is_global:
            return "not a public address"
        if candidate == _AZURE_PLATFORM:
            return "Azure's platform address"
    return None


def _is_localhost_name(name: str) -> bool:
    return name == _LOCALHOST or name.endswith("." + _LOCALHOST)


def _normal_name(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


@dataclass(frozen=True)
class AllowedHosts:
    """``SMARTDIALOG_CALLBACK_ALLOWED_HOSTS`` parsed: names, ``*.suffix`` wildcards, ranges."""

    names: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()
    networks: tuple[IPNetwork, ...] = ()

    def allows_name(self, host: str) -> bool:
        name = _normal_name(host)
        return name in self.names or any(name.endswith(s) for s in self.suffixes)

    def allows_address(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)


def parse_allowed_hosts(raw: str) -> AllowedHosts:
    """Parse the allow-list setting; ``ValueError`` naming by its place (never its value: the
    anonymous ``/api/health`` shows it) the entry that is neither a host name, a ``*.suffix``
    nor an IP address or CIDR range."""
    names: set[str] = set()
    suffixes: list[str] = []
    networks: list[IPNetwork] = []
    entries = [e.strip() for e in raw.split(",")]
    for place, entry in enumerate(entries, 1):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            continue
        except ValueError:
            pass
        name = _normal_name(entry.removeprefix("*."))
        if not name or not re.fullmatch(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_-]+)*", name):
            raise ValueError(
                f"entry {place} of {len(entries)} is neither a host name nor an IP address or "
                "CIDR range"
            )
        if entry.startswith("*."):
            suffixes.append("." + name)
        else:
            names.add(name)
    return AllowedHosts(frozenset(names), tuple(suffixes), tuple(networks))


@dataclass(frozen=True)
class CallbackPolicy:
    """Which targets a URL we are given may reach. Build with :meth:`from_settings`."""

    allowed: AllowedHosts = field(default_factory=AllowedHosts)
    #: The app itself runs on localhost: loopback targets (and plain http to them) are allowed.
    local: bool = False

    @classmethod
    def from_settings(cls, settings: CallbackSettings) -> CallbackPolicy:
        try:
            public_base_url = settings.public_base_url
        except Problem:  # no public URL can be told: the app is not known to run locally
            public_base_url = ""
        return _policy(settings.callback_allowed_hosts, settings.website_hostname, public_base_url)

    def refusal(self, host: str, address: IPAddress, *, plain_http: bool) -> str | None:
        """Why a call to ``host`` may not go to ``address``, or None if it may."""
        loopback = self.local and _is_loopback(address)
        if plain_http and not loopback:
            return "plain http is allowed only to this machine while the app runs locally"
        if loopback or self.allowed.allows_name(host) or self.allowed.allows_address(address):
            return None
        reason = internal_reason(address)
        return f"{address} is {reason}" if reason else None

    def check_url(self, url: str) -> httpx.URL:
        """``url`` parsed, if nothing judged without DNS refuses it; else :class:`CallbackRefused`
        (scheme, a literal internal address, ``localhost``)."""
        try:
            parsed = httpx.URL(url.strip())
            host = parsed.host  # decodes an xn-- label: IDNAError (a ValueError) when it is none
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            raise CallbackRefused("?", f"not a valid URL ({exc})") from None
        if parsed.scheme not in ("http", "https") or not host:
            raise CallbackRefused(host or "?", "must be an absolute https URL")
        plain = parsed.scheme == "http"
        address = literal_address(host)
        if address is not None:
            reason = self.refusal(host, address, plain_http=plain)
        elif _is_localhost_name(_normal_name(host)):  # RFC 6761: never leaves the machine
            loopback = ipaddress.IPv4Address("127.0.0.1")
            reason = self.refusal(host, loopback, plain_http=plain) and f"{host} is this machine"
        elif plain:
            reason = "must use https"
        else:
            reason = None
        if reason is not None:
            raise CallbackRefused(host, reason)
        return parsed


@lru_cache(maxsize=8)
def _policy(allowed: str, website_hostname: str | None, public_base_url: str) -> CallbackPolicy:
    try:
        own = _normal_name(httpx.URL(public_base_url).host)
    except (httpx.InvalidURL, TypeError, ValueError):
        own = ""
    own_address = literal_address(own) if own else None
    runs_locally = website_hostname is None and (
        _is_localhost_name(own) or (own_address is not None and _is_loopback(own_address))
    )
    return CallbackPolicy(parse_allowed_hosts(allowed), local=runs_locally)


def check_callback_url(url: str, settings: CallbackSettings) -> str:
    """``url`` stripped, if a call to it is not refused before DNS; else ``ValueError`` saying
    why (for field validators: the action answers 400 naming the field)."""
    try:
        CallbackPolicy.from_settings(settings).check_url(url)
    except CallbackRefused as exc:
        raise ValueError(
            f"Refused: {exc.reason}. Give an https URL of a public host (internal hosts must be "
            "listed in the app setting SMARTDIALOG_CALLBACK_ALLOWED_HOSTS)."
        ) from None
    return url.strip()


def system_resolver(host: str, port: int) -> list[str]:
    """The host's addresses from the operating system's resolver, in its order."""
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in found))


# --- the network backend: resolve, check, connect, and keep the deadline -------------------------


@dataclass
class _Call:
    """One call's state, shared by its backend and streams."""

    policy: CallbackPolicy
    resolver: Resolver
    inner: httpcore.NetworkBackend
    deadline: Deadline
    plain_http: bool
    received: int = 0


class _CappedStream(DeadlineStream):
    """A stream kept within the call's deadline whose reads take at most
    :data:`READ_CHUNK_BYTES` each, and :data:`MAX_RECEIVED_BYTES` in all."""

    def __init__(self, inner: httpcore.NetworkStream, call: _Call) -> None:
        super().__init__(inner, call.deadline.left)
        self._call = call

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data = super().read(min(max_bytes, READ_CHUNK_BYTES), timeout)
        self._call.received += len(data)
        if self._call.received > MAX_RECEIVED_BYTES:
            raise httpcore.ReadError(f"answer over {MAX_RECEIVED_BYTES} bytes")
        return data

    def _again(self, inner: httpcore.NetworkStream) -> DeadlineStream:
        return _CappedStream(inner, self._call)


class _GuardedBackend(httpcore.NetworkBackend):
    def __init__(self, call: _Call) -> None:
        self._call = call

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        call = self._call
        literal = literal_address(host)
        if literal is not None:
            addresses: list[IPAddress] = [literal]
        else:
            # On a worker thread, so a resolver that hangs still ends the call at its deadline.
            question = _resolvers().submit(call.resolver, host, port)
            try:
                found = question.result(
                    timeout=call.deadline.left(timeout, httpcore.ConnectTimeout)
                )
                addresses = [ipaddress.ip_address(a) for a in found]
            except concurrent.futures.TimeoutError:
                question.cancel()  # still queued: dropped, not left to hold a thread later
                raise httpcore.ConnectTimeout(f"{host} did not resolve in time") from None
            except (OSError, ValueError) as exc:
                raise _NotResolved(f"{host} did not resolve ({exc})") from None
            if not addresses:
                raise _NotResolved(f"{host} did not resolve")
        for address in addresses:  # every answer must pass: a mixed answer is a rebinding attempt
            reason = call.policy.refusal(host, address, plain_http=call.plain_http)
            if reason is not None:
                raise _Refused(reason)
        last: Exception | None = None
        for address in addresses:
            try:
                stream = call.inner.connect_tcp(
                    str(address),
                    port,
                    call.deadline.left(timeout, httpcore.ConnectTimeout),
                    local_address,
                    socket_options,
                )
            except httpcore.ConnectError as exc:
                last = exc
                continue
            return _CappedStream(stream, call)
        assert last is not None
        raise last

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("no unix sockets")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class _Refused(httpcore.ConnectError):
    """Raised inside httpcore by the backend, turned into :class:`CallbackRefused`."""


class _NotResolved(httpcore.ConnectError):
    pass


# --- the client ----------------------------------------------------------------------------------


class GuardedClient:
    """Calls URLs we were given, under a :class:`CallbackPolicy` (see the module docstring).

    ``resolver`` and ``network_backend`` are injectable: tests resolve names without DNS and
    produce faults without sending traffic anywhere. Thread-safe: each call has its own
    connection pool of one connection.
    """

    def __init__(
        self,
        policy: CallbackPolicy,
        *,
        deadline_seconds: float,
        resolver: Resolver = system_resolver,
        network_backend: httpcore.NetworkBackend | None = None,
        ssl_context: ssl.SSLContext | None = None,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        self.policy = policy
        self.deadline_seconds = deadline_seconds
        self.max_answer_bytes = max_answer_bytes
        self._resolver = resolver
        self._backend = network_backend or httpcore.SyncBackend()
        self._ssl_context = ssl_context

    @classmethod
    def from_settings(cls, settings: CallbackSettings, **options: Any) -> GuardedClient:
        return cls(
            CallbackPolicy.from_settings(settings),
            deadline_seconds=settings.callback_timeout_seconds,
            **options,
        )

    def get(self, url: str, *, headers: Mapping[str, str] | None = None) -> CallbackAnswer:
        return self.request("GET", url, headers=headers)

    def post(
        self, url: str, *, json: Any = None, headers: Mapping[str, str] | None = None
    ) -> CallbackAnswer:
        content = jsonlib.dumps(json, ensure_ascii=False).encode()
        return self.request("POST", url, headers=headers, content=content)

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        content: bytes = b"",
    ) -> CallbackAnswer:
        """One call: refused (:class:`CallbackRefused`), failed (:class:`CallbackFailed`), or
        the answer, whatever its status (redirects are answers, not followed)."""
        deadline = Deadline.after(self.deadline_seconds)
        target = self.policy.check_url(url)
        for name, value in (headers or {}).items():
            if not (_HEADER_TEXT.fullmatch(name) and _HEADER_TEXT.fullmatch(value)):
                raise CallbackRefused(target.host, f"header {name!r} is not printable ASCII")
        request = httpx.Request(method, target, headers=headers, content=content or None)
        raw_headers = list(request.headers.raw)
        if target.userinfo:  # percent-encoded in the URL: the credentials are the bytes written
            user, _, password = target.userinfo.partition(b":")
            basic = b":".join(unquote_to_bytes(part) for part in (user, password))
            raw_headers.append((b"Authorization", b"Basic " + base64.b64encode(basic)))
        call = _Call(self.policy, self._resolver, self._backend, deadline, target.scheme == "http")
        host = target.host
        try:
            with (
                httpcore.ConnectionPool(
                    ssl_context=None if call.plain_http else self._tls(),
                    max_connections=1,
                    max_keepalive_connections=0,
                    network_backend=_GuardedBackend(call),
                ) as pool,
                pool.stream(
                    method.encode(),
                    httpcore.URL(
                        scheme=target.raw_scheme,
                        host=target.raw_host,
                        port=target.port,
                        target=target.raw_path,
                    ),
                    headers=raw_headers,
                    content=content or None,
                    extensions={"timeout": {"connect": None, "read": None, "write": None}},
                ) as response,
            ):
                body, truncated = self._read_capped(response)
                answer_headers = {
                    k.decode("latin-1").lower(): v.decode("latin-1") for k, v in response.headers
                }
                return CallbackAnswer(
                    response.status, answer_headers, body, truncated, call.received
                )
        except _Refused as exc:
            raise CallbackRefused(host, str(exc)) from None
        except _NotResolved as exc:
            raise CallbackFailed(host, str(exc)) from None
        except httpcore.TimeoutException:
            raise CallbackFailed(
                host, f"no complete answer within {self.deadline_seconds:g} s", timed_out=True
            ) from None
        except (httpcore.NetworkError, httpcore.ProtocolError, ssl.SSLError, OSError) as exc:
            raise CallbackFailed(host, f"{type(exc).__name__}: {exc}") from None

    def _tls(self) -> ssl.SSLContext:
        return self._ssl_context or _default_ssl_context()

    def _read_capped(self, response: httpcore.Response) -> tuple[bytes, bool]:
        body = bytearray()
        for chunk in response.iter_stream():
            body += chunk
            if len(body) > self.max_answer_bytes:
                return bytes(body[: self.max_answer_bytes]), True
        return bytes(body), False


@lru_cache(maxsize=1)
def _resolvers() -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(
        max_workers=RESOLVER_THREADS, thread_name_prefix="guarded-resolve"
    )


@lru_cache(maxsize=1)
def _default_ssl_context() -> ssl.SSLContext:
    import certifi

    return ssl.create_default_context(cafile=certifi.where())
