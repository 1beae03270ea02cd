"""Slow clients, bounded at the transport: a request-head deadline, a body idle timeout and a per-client-IP
connection limit, as the HTTP protocol uvicorn runs (its `http=` option takes a `GuardedProtocol`).

uvicorn closes idle keep-alive connections, but nothing else: a client that sends a request head one header
line at a time, declares a body and never sends it, sends an HTTP/0.9 request line (h11 waits for a version
that never comes) or connects and sends nothing holds its connection for as long as it likes, and uvicorn's
`limit_concurrency` counts those connections, so 140 such clients made every request a 503. Here:

- the whole request head (request line and headers) must arrive within `head_timeout_s` of the connection
  being made, or of the first byte after the previous request: else 408 and the connection is closed (closed
  without a word when not one byte came);
- while a request body is being read, more of it must arrive at least every `body_timeout_s`: else 408 and
  close (a body the server is not reading yet, its buffer full, does not count against the client);
- at most `max_connections_per_ip` connections from one client address are open at once, so one client cannot
  hold every slot (counted per server process);
- a slot is never held by a stalled connection while a new one waits: when an address is at its cap, or the
  server at uvicorn's `limit_concurrency`, the new connection takes the place of the longest-stalled one
  (waiting for its head, idle between requests, or with a body stalled for `STALLED_BODY_S`), which gets 503
  with Retry-After (or is closed, when it had sent nothing). Only when every connection is busy with a request
  is the new one refused (503 with Retry-After). So slow clients cost each other, not the clients that send
  their requests promptly, even from the same address (all of a loopback server's clients share one).

Refusals are the server's one JSON error shape, written straight to the socket (the app never sees them);
the connection is then half-closed so the client reads the answer instead of a reset. The guard wraps
uvicorn's own h11 and httptools protocols (`parser`); everything else is theirs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from http import HTTPStatus
from typing import Optional

from uvicorn.protocols.http.h11_impl import H11Protocol

from clipforge.errors import UsageError
from clipforge.serve.guards import Limits, error_body

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is optional
    HttpToolsProtocol = None

__all__ = ["GuardedProtocol", "PARSERS", "raw_response"]

PARSERS = ("h11", "httptools")
LINGER_S = 1.0  # after a refusal: how long the client has to read it before the socket is closed
RETRY_AFTER_S = 1
_RETRY = (f"retry-after: {RETRY_AFTER_S}",)
STALLED_BODY_S = 1.0  # a body idle this long may give its connection's slot to a new connection


def raw_response(status: int, message: str, headers: tuple[str, ...] = ()) -> bytes:
    """A whole HTTP/1.1 response carrying the JSON error shape, with `Connection: close`."""
    body = json.dumps(error_body(status, message)).encode()
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "content-type: application/json",
             f"content-length: {len(body)}", "connection: close", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass(frozen=True)
class GuardedProtocol:
    """uvicorn's `http=` option: builds one guarded protocol per connection. A plain (picklable) value, so it
    travels to worker processes with uvicorn's config. `max_connections_per_ip` None or 0: no per-IP limit."""
    head_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    max_connections_per_ip: Optional[int] = 16
    parser: str = "h11"

    def __post_init__(self):
        if self.parser not in PARSERS:
            raise UsageError(f"`parser` must be one of {', '.join(PARSERS)}, got {self.parser!r}")
        if self.parser == "httptools" and HttpToolsProtocol is None:
            raise UsageError("`parser` httptools needs the httptools package (pip install httptools)")
        for name in ("head_timeout_s", "body_timeout_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise UsageError(f"`{name}` must be a positive number of seconds, got {v!r}")
        n = self.max_connections_per_ip
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise UsageError(f"`max_connections_per_ip` must be a whole number >= 0 or None, got {n!r}")

    @classmethod
    def from_limits(cls, limits: Limits, parser: str = "h11") -> "GuardedProtocol":
        return cls(limits.head_timeout_s, limits.body_timeout_s, limits.max_connections_per_ip, parser)

    def __call__(self, config, server_state, app_state, _loop=None):
        cls = _GuardedH11 if self.parser == "h11" else _GuardedHttpTools
        return cls(self, config=config, server_state=server_state, app_state=app_state, _loop=_loop)


def _open_per_ip(server_state) -> dict:
    """Open connections per client address ({address: {protocol: None}}, oldest first), kept on the server's
    shared state (one per server)."""
    per_ip = getattr(server_state, "clipforge_open_per_ip", None)
    if per_ip is None:
        per_ip = server_state.clipforge_open_per_ip = {}
    return per_ip


class _Guard:
    """The guard over one uvicorn HTTP protocol (h11's or httptools'): both keep the request being handled in
    `self.cycle` (a new object once a request head has been parsed; `more_body` while its body arrives)."""

    def __init__(self, guard: GuardedProtocol, **kw):
        super().__init__(**kw)
        self.guard = guard
        self._ip: Optional[str] = None      # counted against the per-IP limit while open
        self._timer = None
        self._refused = False               # a refusal was written: the rest is discarded
        self._seen_cycle = None             # the request whose head was parsed last
        self._head_since: Optional[float] = None  # waiting for a head since (loop time); None: not waiting
        self._head_bytes = False            # some of that head has arrived
        self._last_body = 0.0               # loop time body bytes last arrived
        self._idle_since = 0.0              # loop time the last response ended

    # ---- asyncio.Protocol ----
    def connection_made(self, transport):
        super().connection_made(transport)
        self._head_since = self.loop.time()
        limit, ip = self.guard.max_connections_per_ip, self.client[0] if self.client else None
        if limit and ip is not None:
            peers = _open_per_ip(self.server_state).setdefault(ip, {})
            if len(peers) >= limit and not self._make_room(peers):
                return self._refuse(503, f"{limit} connections from this address are busy with requests (the "
                                         "most one address may hold); try again", _RETRY)
            peers[self] = None
            self._ip = ip
        cap = self.config.limit_concurrency
        if cap is not None and len(self.connections) >= cap:
            self._make_room(self.connections)  # else uvicorn answers this connection's request 503
        self._arm(self.guard.head_timeout_s)

    def connection_lost(self, exc):
        self._cancel()
        self._forget_ip()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        in_body = self._receiving_body()
        super().data_received(data)
        if self._refused or self.transport.is_closing():
            return
        now = self.loop.time()
        new_head = self.cycle is not self._seen_cycle
        if new_head:  # a head was parsed: the head clock stops
            self._seen_cycle, self._head_since, self._head_bytes = self.cycle, None, False
        if in_body or self._receiving_body():
            self._last_body = now
        elif not new_head:  # bytes of the next request's head
            self._head_bytes = True
            if self._head_since is None:
                self._head_since = now
        self._arm_for_state()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._idle_since = self.loop.time()
        if not self._refused and not self.transport.is_closing():
            if self.cycle is not self._seen_cycle:  # h11 parses a pipelined head here
                self._seen_cycle, self._head_since, self._head_bytes = self.cycle, None, False
            self._arm_for_state()

    # ---- slots ----
    def _forget_ip(self):
        if self._ip is not None:
            per_ip = _open_per_ip(self.server_state)
            peers = per_ip.get(self._ip, {})
            peers.pop(self, None)
            if not peers:
                per_ip.pop(self._ip, None)
            self._ip = None

    def stalled_since(self) -> Optional[float]:
        """Since when (loop time) this connection has held its slot without a request for the app to work on:
        waiting for a head, idle between requests, or with its body stalled for `STALLED_BODY_S`; None when
        the app has its request or its body is arriving."""
        if self._refused or self.transport.is_closing():
            return None
        if self._receiving_body():
            if self.flow.read_paused:  # the server is not reading it: not stalled by the client
                return None
            return self._last_body if self.loop.time() - self._last_body >= STALLED_BODY_S else None
        c = self.cycle
        if c is not None and not c.response_complete:
            return None  # the app is working on it
        return self._head_since if self._head_since is not None else self._idle_since

    def _make_room(self, peers) -> bool:
        """Free the slot of the longest-stalled of `peers` (not this one): True when there was one."""
        stalled = [(since, i, p) for i, p in enumerate(list(peers))
                   if p is not self and isinstance(p, _Guard) and (since := p.stalled_since()) is not None]
        if not stalled:
            return False
        victim = min(stalled, key=lambda t: t[:2])[2]
        if victim._receiving_body() or victim._head_bytes:
            victim._refuse(503, "the server needed this connection's slot for another: it had not sent its "
                                "request in time; try again", _RETRY)
        else:  # an idle connection: nothing to answer
            victim._refuse(None, "")
        return True

    # ---- the clocks ----
    def _receiving_body(self) -> bool:
        c = self.cycle
        return c is not None and c.more_body and not c.response_complete and not c.disconnected

    def _arm_for_state(self):
        if self._receiving_body():
            self._arm(self.guard.body_timeout_s)
        elif self._head_since is not None:
            self._arm(max(0.0, self._head_since + self.guard.head_timeout_s - self.loop.time()))
        else:
            self._cancel()  # the app has the request; between requests uvicorn's keep-alive timeout applies

    def _arm(self, delay: float):
        self._cancel()
        self._timer = self.loop.call_later(delay, self._on_timer)

    def _cancel(self):
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self):
        self._timer = None
        if self._refused or self.transport.is_closing() or self.transport.get_protocol() is not self:
            return  # closed, or upgraded to another protocol
        now = self.loop.time()
        if self._receiving_body():
            if self.flow.read_paused:  # the server is not reading (its buffer is full): not the client's delay
                self._last_body = now
            left = self._last_body + self.guard.body_timeout_s - now
            if left > 0:
                return self._arm(left)
            return self._refuse(408, f"the request body stopped arriving for {self.guard.body_timeout_s:g} s")
        if self._head_since is None:
            return
        c = self.cycle
        if self.flow.read_paused or (c is not None and not c.response_complete):
            self._head_since = now  # still answering the previous request: its head waits, through no fault of its own
        left = self._head_since + self.guard.head_timeout_s - now
        if left > 0:
            return self._arm(left)
        if not self._head_bytes:  # an idle connection: nothing to answer
            return self._refuse(None, "")
        self._refuse(408, f"the request head did not arrive within {self.guard.head_timeout_s:g} s")

    def _refuse(self, status: Optional[int], message: str, headers: tuple[str, ...] = ()):
        """Answer `status` (unless a response is already under way; None: close without a word), stop reading
        requests and give up the slot; half-close so the client reads the answer (the socket is closed at the
        client's EOF or after LINGER_S)."""
        self._refused = True
        self._cancel()
        self.connections.discard(self)  # lingering, it no longer counts against uvicorn's `limit_concurrency`
        self._forget_ip()
        if status is None:
            return self.transport.close()
        c = self.cycle
        if c is not None and not c.response_complete:
            started = c.response_started
            c.disconnected = True  # the app, if it is reading this request, sees a disconnect
            c.message_event.set()
        else:
            started = False
        if not started:
            self.transport.write(raw_response(status, message, headers))
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self._timer = self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()


class _GuardedH11(_Guard, H11Protocol):
    pass


if HttpToolsProtocol is not None:
    class _GuardedHttpTools(_Guard, HttpToolsProtocol):
        pass
else:
    _GuardedHttpTools = None
