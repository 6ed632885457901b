"""Admission: what a connection goes through between accept and its client.

For the TCP, TLS and WebSocket listeners alike, this module owns:

- the limits checked at accept (:class:`Gate`): the listener's
  ``accept_rate`` and ``max_clients``, the server's ``max_clients_total``;
  a refusal is counted and logged, and the connection closed;
- the count of open connections (``Core.connections.open`` and the
  listener's), from admission until the connection is closed;
- the PROXY protocol header, where configured (what came in after it is
  handed on: :class:`PrefixedStream`);
- the TLS handshake, where configured;
- ``handshake_timeout`` over both, and the counters and log lines of a
  handshake that fails or times out.

A listener hands its own part to :func:`admit_tcp` or
:func:`admit_websocket` as a function, run on each admitted connection: the
TCP listener its client, the WebSocket listener the HTTP upgrade (under the
same ``handshake_timeout`` deadline) and then its client. Every refusal and
forced close is counted in ``Core.connections`` (:mod:`pmlb.downstream.port`);
the log lines are rate-limited (:class:`pmlb._log.RateLimited`), since a
peer can repeat them at will.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Awaitable, Callable

import trio

from pmlb._log import RateLimited
from pmlb.codecs.proxy_protocol import ProxyHeaderParser, ProxyProtocolError
from pmlb.config import ListenerConfig, format_address
from pmlb.downstream.limits import TokenBucket
from pmlb.downstream.port import Core

log = logging.getLogger("pmlb.downstream")

# The refusal and handshake lines of every listener; the WebSocket
# listener's refusals and upgrade timeouts have a budget of their own.
_refusal_log = RateLimited(log)
_websocket_refusal_log = RateLimited(log)

#: what the TCP listener runs on an admitted connection: ``run(stream,
#: remote, config, registry, initial, raw)``, with the client's stream (past
#: the PROXY header and TLS), its address, the bytes read past the PROXY
#: header, and the accepted connection under it all
RunClient = Callable[
    [trio.abc.Stream, str, ListenerConfig, Core, bytes, trio.SocketStream], Awaitable[None]
]
#: what the WebSocket listener runs on an admitted connection: ``upgrade(
#: stream, remote, config, registry, deadline, refusal)``, with the client's
#: stream (what came in after a PROXY header first), its address, the
#: handshake's deadline (Trio time) and the limit it is over (to be told so),
#: if any
RunUpgrade = Callable[
    [trio.abc.Stream, str, ListenerConfig, Core, float, str | None], Awaitable[None]
]


class Gate:
    """The limits a listener checks for each new connection (TCP, TLS and WebSocket).

    One per listener. ``courtesy`` is how many connections over
    ``max_clients`` or ``max_clients_total`` may be in their handshake at
    once to be told so (``telling`` of them now; WebSocket only: a close
    code says why); past it, they are closed at once.
    """

    def __init__(self, config: ListenerConfig, registry: Core, *, courtesy: int = 0) -> None:
        self.config = config
        self.registry = registry
        self.open = 0
        self.bucket = TokenBucket(config.accept_rate) if config.accept_rate else None
        self.courtesy = courtesy
        self.telling = 0

    def refusal(self) -> str | None:
        """Why a new connection must be refused now, or ``None`` to admit it."""
        return self.rate_refusal() or self.capacity_refusal()

    def rate_refusal(self) -> str | None:
        """Over ``accept_rate``: why, counted; else ``None`` (and a token is spent)."""
        if self.bucket is not None and not self.bucket.take(time.monotonic()):
            self.registry.connections.refused_accept_rate += 1
            return f"over accept_rate ({self.config.accept_rate:g}/s)"
        return None

    def capacity_refusal(self) -> str | None:
        """At ``max_clients`` or ``max_clients_total``: why, counted; else ``None``."""
        counters = self.registry.connections
        if self.config.max_clients and self.open >= self.config.max_clients:
            counters.refused_max_clients += 1
            return f"listener at max_clients ({self.config.max_clients})"
        total = self.registry.config.max_clients_total
        if total and counters.open >= total:
            counters.refused_max_clients += 1
            return f"server at max_clients_total ({total})"
        return None


async def admit_tcp(
    stream: trio.SocketStream,
    *,
    config: ListenerConfig,
    registry: Core,
    gate: Gate,
    ssl_context: ssl.SSLContext | None = None,
    run: RunClient,
) -> None:
    """Admit one TCP (or TLS) connection and ``run`` its client: limits, handshake, client.

    ``stream`` is closed on return (at once, without a checkpoint: a closed
    connection costs no more scheduling than that).
    """
    if not registry.admit():  # an operator paused new clients
        stream.socket.close()
        return
    try:
        remote = format_address(*stream.socket.getpeername()[:2])
    except OSError:  # the peer is already gone
        stream.socket.close()
        return
    counters = registry.connections
    refusal = gate.refusal()
    if refusal is not None:
        _refusal_log.warning(
            "connection refused", listener=config.name, peer=remote, reason=refusal
        )
        stream.socket.close()
        return
    counters.accepted += 1
    counters.open += 1
    gate.open += 1
    try:
        client_stream, remote, initial = await handshake(
            stream, remote, config, registry, ssl_context
        )
        if client_stream is not None:
            await run(client_stream, remote, config, registry, initial, stream)
    except Exception:
        # A bug in one connection must not end the listener or other clients.
        log.exception("internal error on a client connection", extra={"peer": remote})
    finally:
        counters.open -= 1
        gate.open -= 1
        stream.socket.close()


async def admit_websocket(
    stream: trio.SocketStream,
    *,
    config: ListenerConfig,
    registry: Core,
    gate: Gate,
    ssl_context: ssl.SSLContext | None = None,
    upgrade: RunUpgrade,
) -> None:
    """Admit one WebSocket connection: limits, PROXY header and TLS, then ``upgrade``.

    A connection over ``accept_rate`` is closed before any handshake work,
    which is what the rate limit is for. One over ``max_clients`` or
    ``max_clients_total`` goes on to ``upgrade`` with the limit, to be told
    so, while fewer than the gate's ``courtesy`` are (past that, it is
    closed at once too); it is not counted as accepted or open.
    """
    try:
        remote = format_address(*stream.socket.getpeername()[:2])
    except OSError:  # the peer is already gone
        await trio.aclose_forcefully(stream)
        return
    refusal = gate.rate_refusal()
    at_once = refusal is not None
    if refusal is None:
        refusal = gate.capacity_refusal()
        at_once = refusal is not None and gate.telling >= gate.courtesy
    if at_once:
        assert refusal is not None
        websocket_refused(config, remote, refusal)
        await trio.aclose_forcefully(stream)
        return
    counters = registry.connections
    if refusal is None:
        counters.accepted += 1
        counters.open += 1
        gate.open += 1
    else:
        gate.telling += 1
    try:
        deadline = trio.current_time() + config.handshake_timeout
        client_stream, remote, initial = await handshake(
            stream, remote, config, registry, ssl_context
        )
        if client_stream is None:
            return
        if initial:  # the upgrade request came in with the PROXY header
            client_stream = PrefixedStream(client_stream, initial)
        await upgrade(client_stream, remote, config, registry, deadline, refusal)
    except Exception:
        # A bug in one connection must not end the listener or other clients.
        log.exception("internal error on a client connection", extra={"peer": remote})
    finally:
        if refusal is None:
            counters.open -= 1
            gate.open -= 1
        else:
            gate.telling -= 1
        await trio.aclose_forcefully(stream)


async def handshake(
    stream: trio.SocketStream,
    remote: str,
    config: ListenerConfig,
    registry: Core,
    ssl_context: ssl.SSLContext | None,
) -> tuple[trio.abc.Stream | None, str, bytes]:
    """The PROXY header and TLS handshake, where configured: (stream or None, remote, data).

    ``None`` if the connection is to be closed (counted and logged here);
    the remote address is the PROXY header's source, if it gives one; the
    data is what came in after the header (not with TLS: the TLS stream
    reads it).
    """
    if not config.proxy_protocol and ssl_context is None:
        return stream, remote, b""
    counters = registry.connections
    fields = {"listener": config.name, "peer": remote}
    client_stream: trio.abc.Stream = stream
    initial = b""
    with trio.move_on_after(config.handshake_timeout):
        try:
            if config.proxy_protocol:
                parser = ProxyHeaderParser()
                while (result := parser.feed(await stream.receive_some(4096) or _eof())) is None:
                    pass
                header, initial = result
                if header.source is not None:
                    remote = format_address(*header.source)
                    fields["peer"] = remote
                    fields["via"] = format_address(*stream.socket.getpeername()[:2])
            if ssl_context is not None:
                if initial:
                    client_stream, initial = PrefixedStream(stream, initial), b""
                tls = trio.SSLStream(client_stream, ssl_context, server_side=True)
                try:
                    await tls.do_handshake()
                except trio.BrokenResourceError as exc:
                    counters.tls_handshake_failures += 1
                    _refusal_log.warning("TLS handshake failed", **fields, reason=_tls_reason(exc))
                    return None, remote, b""
                client_stream = tls
            return client_stream, remote, initial
        except ProxyProtocolError as exc:
            counters.proxy_header_errors += 1
            _refusal_log.warning("bad PROXY protocol header", **fields, reason=str(exc))
            return None, remote, b""
        except (trio.BrokenResourceError, _EOF):
            return None, remote, b""
    _timed_out(_refusal_log, config, registry, fields)
    return None, remote, b""


def websocket_refused(config: ListenerConfig, remote: str, reason: str) -> None:
    """Log a WebSocket connection refused (closed at once, or told why in its close frame)."""
    _websocket_refusal_log.warning(
        "connection refused", listener=config.name, peer=remote, reason=reason
    )


def websocket_timed_out(config: ListenerConfig, registry: Core, remote: str) -> None:
    """Count and log a WebSocket connection whose upgrade did not come by the deadline."""
    _timed_out(_websocket_refusal_log, config, registry, {"listener": config.name, "peer": remote})


def _timed_out(
    refusal_log: RateLimited, config: ListenerConfig, registry: Core, fields: dict[str, str]
) -> None:
    registry.connections.handshake_timeouts += 1
    refusal_log.warning(
        "handshake timed out", **fields, reason=f"handshake_timeout ({config.handshake_timeout:g}s)"
    )


class PrefixedStream(trio.abc.Stream):
    """A stream whose first bytes were already read (past a PROXY header)."""

    def __init__(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        self._stream = stream
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            data = self._prefix[:max_bytes] if max_bytes else self._prefix
            self._prefix = self._prefix[len(data) :]
            await trio.lowlevel.checkpoint()
            return data
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stream.aclose()


class _EOF(Exception):
    pass


def _eof() -> bytes:
    raise _EOF


def _tls_reason(exc: BaseException) -> str:
    cause = exc.__cause__
    if isinstance(cause, ssl.SSLError):
        return cause.reason or type(cause).__name__
    return str(cause or exc) or type(exc).__name__
