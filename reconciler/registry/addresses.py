"""Which hosts a registry may send us to: host names judged as addresses.

A registry names other hosts: the token realm of its Bearer challenge (which
gets the registry's credentials) and the targets of its redirects (storage).
A hostile or compromised registry on the internet could name an address
inside our own network (the service's status page on 127.0.0.1, a metadata
service on 169.254.169.254, an internal token service that would take the
registry's credentials). So a host is judged by the addresses it stands for,
never by how it is spelled:

- a literal address is read as the C library reads it (`inet_aton`: `127.1`,
  `2130706433`, `0x7f000001`, `0177.0.0.1` are all 127.0.0.1), with brackets,
  an IPv6 zone id (`fe80::1%eth0`) and a trailing dot ignored, and IPv4
  embedded in IPv6 (`::ffff:127.0.0.1`, `::127.0.0.1`, 6to4, NAT64) judged
  as that IPv4 address too;
- a name under `.localhost` is loopback (RFC 6761), without a lookup;
- a name is judged by every address `getaddrinfo` gives for it now; a name
  that does not resolve has no address to judge, and the request to it
  fails as DNS failed (it is not looked up a second time either).

The rule (`HostRule`): a token realm, or the target of a redirect off the
registry's origin, whose host has an internal address is used only if each
such address is one of the registry's own (the same host on another port),
or if the operator listed that host (or host:port) for the registry in the
watchlist's `token_realms`. A redirect is also followed when the registry
itself is on an internal address (an on-premises registry and its storage):
no credentials follow a redirect, and such a registry is already inside.

An address is *internal* unless it is globally routable: private, loopback,
link-local, unspecified, reserved, multicast, shared (100.64/10), site-local.

A name is resolved once: the connection to a host judged this way goes to
the addresses judged (`PinningBackend`, for a minute), not to what a second
lookup would answer, so a name whose DNS answer changes in between (DNS
rebinding) cannot lead the connection inward. What remains: a connection
through an HTTP proxy goes where the proxy resolves the name; and the
registry's own host, and hosts the operator allowed, are not judged.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from typing import Callable, Dict, Iterable, List, Optional, Tuple, Union
from urllib.parse import urlsplit

import httpcore
import httpx

# What httpcore passes to setsockopt: its SOCKET_OPTION, spelled out (not
# part of httpcore's documented API).
_SocketOption = Union[Tuple[int, int, int], Tuple[int, int, Union[bytes, bytearray]], Tuple[int, int, None, int]]

log = logging.getLogger(__name__)

Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
Resolver = Callable[[str], Tuple[Address, ...]]

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_LOOPBACK = ipaddress.IPv4Address("127.0.0.1")
# How long a connection to a judged host goes to the addresses judged: a
# token request or a redirect connects within this, and a later one is
# judged (and resolved) again.
PIN_SECONDS = 60.0


def parse_address(host: str) -> Optional[Address]:
    """The address `host` spells, in any spelling the resolver takes as a
    literal (see the module docstring); None for a name."""
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if ":" in text:
        text = text.split("%", 1)[0]  # an IPv6 zone id (`%eth0`, or `%25eth0` in a URL)
    elif text.endswith("."):
        text = text[:-1]
    if not text:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    if ":" in text:
        return None
    try:
        # glibc's inet_aton: what getaddrinfo, and so httpx, accepts as IPv4.
        return ipaddress.IPv4Address(socket.inet_aton(text))
    except (OSError, ValueError):
        return None


def _embedded_ipv4(ip: Address) -> List[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries (mapped, compatible, 6to4, NAT64, Teredo)."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    found: List[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    value = int(ip)
    if value >> 32 == 0 and value > 1:  # ::a.b.c.d, IPv4-compatible (deprecated, still routed by some stacks)
        found.append(ipaddress.IPv4Address(value))
    if ip in _NAT64:
        found.append(ipaddress.IPv4Address(value & 0xFFFFFFFF))
    return found


def canonical(ip: Address) -> Address:
    """An IPv4-mapped IPv6 address as the IPv4 address it is; others unchanged."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_internal(ip: Address) -> bool:
    """Whether `ip` (or an IPv4 address it embeds) is not globally routable."""
    ip = canonical(ip)  # ::ffff:8.8.8.8 is 8.8.8.8, though ipaddress calls ::ffff:0:0/96 private
    for each in [ip, *_embedded_ipv4(ip)]:
        if (not each.is_global or each.is_private or each.is_loopback or each.is_link_local
                or each.is_unspecified or each.is_reserved or each.is_multicast
                or (isinstance(each, ipaddress.IPv6Address) and each.is_site_local)):
            return True
    return False


def resolve_host(host: str) -> Tuple[Address, ...]:
    """Every address `host` stands for now: itself when it is a literal, else
    what `getaddrinfo` answers. Raises OSError (socket.gaierror) when it
    does not resolve."""
    literal = parse_address(host)
    if literal is not None:
        return (canonical(literal),)
    if _name(host).endswith(".localhost"):
        return (_LOOPBACK,)  # RFC 6761 §6.3: loopback, whatever a resolver says
    try:
        infos = socket.getaddrinfo(host.strip("[]"), None, type=socket.SOCK_STREAM)
    except (UnicodeError, ValueError):
        raise socket.gaierror(socket.EAI_NONAME, "not a valid host name") from None
    found: List[Address] = []
    for info in infos:
        ip = parse_address(str(info[4][0]))
        if ip is not None and canonical(ip) not in found:
            found.append(canonical(ip))
    return tuple(found)


def _name(host: str) -> str:
    return host.strip("[]").rstrip(".").lower()


def url_host(url: str) -> str:
    """The host of `url` as the connection will name it (httpx's ASCII form:
    an international name in punycode), lower case."""
    try:
        return httpx.URL(url).raw_host.decode("ascii").lower()
    except (httpx.InvalidURL, UnicodeError, ValueError):
        return (urlsplit(url).hostname or "").lower()


def _default_port(scheme: str) -> Optional[int]:
    return {"http": 80, "https": 443}.get(scheme)


def host_port(url: str) -> str:
    """`host[:port]` of `url` for a message or a watchlist hint: a literal
    address in its canonical spelling, anything unprintable escaped."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    literal = parse_address(host)
    if literal is not None:
        shown = str(canonical(literal))
        shown = f"[{shown}]" if ":" in shown else shown
    else:
        shown = ascii(host)[1:-1]
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{shown}:{port}" if port else shown


class HostRule:
    """Judges the hosts a registry names (token realms, redirect targets).

    A URL passes when its host has no internal address, or when every
    internal address it has is one of the registry's own (the same host on
    another port: compared as addresses, so `127.1` is `127.0.0.1`), or when
    the operator allowed its host (or host:port) for this registry (watchlist
    `token_realms`; a literal address there matches any spelling of it).
    `inward_ok` lets a registry that is itself on an internal address send
    us to other internal addresses (used for redirects, which never carry
    credentials).
    """

    def __init__(self, registry: str, allowed: Iterable[str] = (), resolver: Optional[Resolver] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.registry_host = urlsplit(f"//{registry}").hostname or registry
        self._allowed = tuple(a.strip().lower() for a in allowed if a.strip())
        self._resolve = resolver or resolve_host
        self._clock = clock
        # host -> (until, the addresses judged, or the error resolving it gave)
        self._pins: Dict[str, Tuple[float, Union[Tuple[Address, ...], OSError]]] = {}
        self._lock = threading.Lock()

    def pinned(self, host: str) -> Union[None, Tuple[Address, ...], OSError]:
        """What `host` was judged by, if that was less than a minute ago: its
        addresses, or the error its lookup failed with; None if not judged."""
        now = self._clock()
        with self._lock:
            found = self._pins.get(host.lower())
            return found[1] if found is not None and now < found[0] else None

    def _pin(self, host: str, judged: Union[Tuple[Address, ...], OSError]) -> None:
        now = self._clock()
        with self._lock:
            for stale in [h for h, (until, _) in self._pins.items() if until <= now]:
                del self._pins[stale]
            self._pins[host] = (now + PIN_SECONDS, judged)

    def registry_addresses(self) -> Tuple[Address, ...]:
        """The addresses of the registry's host, resolved now (none if it does not resolve)."""
        try:
            return self._resolve(self.registry_host)
        except OSError:
            return ()

    def is_allowed(self, url: str) -> bool:
        """Whether the operator listed this URL's host (or host:port) for the registry."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        try:
            port = parts.port or _default_port(parts.scheme)
        except ValueError:  # not a port: httpx refuses the URL anyway
            return False
        address = parse_address(host)
        for entry in self._allowed:
            allowed = urlsplit(f"//{entry}")
            try:
                entry_port = allowed.port
            except ValueError:
                continue
            if entry_port is not None and entry_port != port:
                continue
            entry_host = allowed.hostname or ""
            if _name(entry_host) == _name(host):
                return True
            entry_address = parse_address(entry_host)
            if address is not None and entry_address is not None and canonical(address) == canonical(entry_address):
                return True
        return False

    def foreign_internal(self, url: str, inward_ok: bool = False) -> Tuple[Address, ...]:
        """The internal addresses of `url`'s host that it may not lead to
        (empty: the URL may be used). See the class docstring."""
        host = url_host(url)
        if _name(host) == _name(self.registry_host) or self.is_allowed(url):
            return ()
        try:
            addresses = self._resolve(host)
        except OSError as exc:
            self._pin(host, exc)  # the connection fails as this lookup did, without a second one
            return ()
        inside = tuple(ip for ip in addresses if is_internal(ip))
        if inside:
            own = self.registry_addresses()
            if not (inward_ok and any(is_internal(ip) for ip in own)):
                inside = tuple(ip for ip in inside if ip not in own)
                if inside:
                    return inside
        self._pin(host, addresses)  # the connection goes where we judged
        return ()


class PinningBackend(httpcore.NetworkBackend):
    """httpcore's network backend, connecting to a host judged by `rule` at
    the addresses judged (HostRule.pinned), never resolving it again; other
    hosts as usual. Each address is tried in turn, as `socket.create_connection` does."""

    def __init__(self, rule: HostRule, inner: httpcore.NetworkBackend) -> None:
        self._rule = rule
        self._inner = inner

    def connect_tcp(self, host: str, port: int, timeout: Optional[float] = None,
                    local_address: Optional[str] = None, socket_options: Optional[Iterable[_SocketOption]] = None
                    ) -> httpcore.NetworkStream:
        pinned = self._rule.pinned(host)
        if pinned is None:
            return self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        if isinstance(pinned, OSError) or not pinned:
            failure = pinned if isinstance(pinned, OSError) else socket.gaierror(socket.EAI_NONAME, "no address")
            # As httpcore reports a failed lookup: raised while handling the
            # gaierror, which refusals.unreachable finds in __context__ (httpcore's
            # pool re-raises `from None`, which drops a __cause__).
            try:
                raise failure
            except OSError as exc:
                raise httpcore.ConnectError(str(exc)) from exc
        error: Optional[Exception] = None
        for ip in pinned:
            try:
                return self._inner.connect_tcp(str(ip), port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    def connect_unix_socket(self, path: str, timeout: Optional[float] = None,
                            socket_options: Optional[Iterable[_SocketOption]] = None) -> httpcore.NetworkStream:
        return self._inner.connect_unix_socket(path, timeout, socket_options)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def pin_connections(http: httpx.Client, rule: HostRule) -> bool:
    """Make `http`'s direct connections go to the addresses `rule` judged
    (PinningBackend). False when its transport is not httpx's own (a test's
    mock, a proxy): then connections resolve names as usual."""
    pool = getattr(getattr(http, "_transport", None), "_pool", None)
    # httpx keeps the pool private: look before changing it.
    if type(pool) is not httpcore.ConnectionPool or not isinstance(getattr(pool, "_network_backend", None),
                                                                   httpcore.NetworkBackend):
        log.debug("connections not pinned to judged addresses: transport %r", type(getattr(http, "_transport", None)))
        return False
    pool._network_backend = PinningBackend(rule, pool._network_backend)
    return True
