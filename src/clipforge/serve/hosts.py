"""The Host allowlist (DNS rebinding): a server answers only to the host names it is meant to be reached by.

A web page on attacker.example can rebind its own DNS name to 127.0.0.1 and then read a key-less server on the
visitor's loopback as if same-origin; its requests still carry `Host: attacker.example`. `HostAllowlist`
refuses every request whose Host is not allowed (400, before anything else runs), and
`default_allowed_hosts` gives the loopback names for a loopback bind: what `clipforge serve` uses unless told
otherwise. Other binds accept any Host by default (only their operator knows their names).
"""
from __future__ import annotations

import ipaddress
from typing import Optional

from clipforge.errors import UsageError
from clipforge.serve.guards import error_response

__all__ = ["LOOPBACK_HOSTS", "HostAllowlist", "allowed_host_names", "default_allowed_hosts", "host_name",
           "is_loopback"]

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def host_name(value: str) -> Optional[str]:
    """The host of a Host header value ("name", "name:port", "[v6]" or "[v6]:port"), lower-cased, without a
    trailing dot; None when it is not of that form."""
    value = value.strip().lower()
    if value.startswith("["):
        name, sep, rest = value[1:].partition("]")
        if not sep or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
    else:
        name, sep, port = value.rpartition(":")
        if not sep or ":" in name:  # no port, or a bare IPv6 address
            name = value
        elif not port.isdigit():
            return None
    name = name[:-1] if name.endswith(".") else name
    return name if name and not any(c in name for c in " \t/\\@[]") else None


def is_loopback(host: str) -> bool:
    """Whether `host` (a bind address or name, "[::1]" too) is a loopback address or localhost."""
    name = host_name(host) or host
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return name == "localhost"


def default_allowed_hosts(bind_host: str) -> Optional[tuple[str, ...]]:
    """The Host names a server bound to `bind_host` answers to by default: the loopback names (and the bind
    address itself) for a loopback bind; None (any Host) for any other bind."""
    if not is_loopback(bind_host):
        return None
    name = host_name(bind_host) or bind_host
    return LOOPBACK_HOSTS + (() if name in LOOPBACK_HOSTS else (name,))


def allowed_host_names(allowed_hosts) -> tuple[str, ...]:
    """`allowed_hosts` checked and normalised (lower case, no brackets or trailing dot): host names or IP
    addresses without a port, `*.example.org` for the subdomains of example.org, `*` for any Host."""
    if isinstance(allowed_hosts, str) or not allowed_hosts:
        raise UsageError(f"`allowed_hosts` must be a non-empty list of host names, got {allowed_hosts!r}")
    names = []
    for entry in allowed_hosts:
        name = host_name(entry) if isinstance(entry, str) else None
        plain = isinstance(entry, str) and entry.strip().strip("[]").lower().rstrip(".") == name
        if name is None or not plain:
            raise UsageError(f"`allowed_hosts`: {entry!r} is not a host name or IP address (give no port)")
        names.append(name)
    return tuple(names)


class HostAllowlist:
    """ASGI middleware, outermost: a request whose Host header is not one of `allowed_hosts` (see
    `allowed_host_names`) answers 400 before anything else runs; so does a request without a Host header."""

    def __init__(self, app, allowed_hosts):
        names = allowed_host_names(allowed_hosts)
        self.app, self.any = app, "*" in names
        self.exact = frozenset(n for n in names if not n.startswith("*."))
        self.suffixes = tuple(n[1:] for n in names if n.startswith("*."))
        self.shown = ", ".join(names)

    def allows(self, header: Optional[bytes]) -> bool:
        if self.any:
            return True
        name = host_name(header.decode("latin-1")) if header else None
        return name is not None and (name in self.exact or name.endswith(self.suffixes))

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        header = next((v for k, v in scope.get("headers", []) if k == b"host"), None)
        if not self.allows(header):
            what = f"Host {header.decode('latin-1')[:100]!r}" if header else "a request without a Host header"
            return await error_response(400, f"this server does not answer to {what}; it answers to "
                                             f"{self.shown}")(scope, receive, send)
        return await self.app(scope, receive, send)
