"""What the admin refuses before its app reads a request: an ASGI layer in front of it.

A request must name, in ``Host``, an address the admin serves (or a name
configured in ``allowed_hosts``): a web page that rebinds its own DNS name to
127.0.0.1 reaches the admin with its own name there, so it is refused (DNS
rebinding). Requests that change state (any method but GET, HEAD and OPTIONS)
and WebSocket upgrades are refused when a browser says they come from another
origin (``Origin``), unless that origin is in ``allowed_origins``: a page on
another site cannot drive the admin with a form or a script. A body sent to a
mutating route must be JSON (which a plain HTML form cannot send). With a
token set, a request without it gets its 401 here.

Every refusal is answered before the body is read: a small body (up to
``REFUSED_BODY_LIMIT``) is read and dropped so that the connection stays
usable; a bigger one, or one of unknown length, is never read, and the
connection is closed after the answer. Refusing here rather than in a Quart
``before_request`` matters: there, hypercorn leaves a connection whose body
was not read open (the app task that would close it is cancelled).
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from pmlb._log import RateLimited, clip

log = logging.getLogger("pmlb.admin")
_refusals = RateLimited(log)

#: The largest body of a refused request that is read (keeping the connection).
REFUSED_BODY_LIMIT = 64 * 1024
#: Methods that do not change state.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# ASGI's types, loosely: hypercorn's and Quart's precise ones do not unify.
Scope = Any
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]
App = Callable[[Any, Any, Any], Awaitable[None]]

_WILDCARDS = frozenset({"", "0.0.0.0", "::"})


class HostCheck:
    """Whether a ``Host`` header names the admin: see :meth:`allows`."""

    def __init__(self, bind_host: str, names: Iterable[str] = ()) -> None:
        self._bind = bind_host.lower()
        self._names = {name.lower().rstrip(".") for name in names}
        try:
            self._ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(
                self._bind
            )
        except ValueError:
            self._ip = None
            self._names.add(self._bind.rstrip("."))
        self._loopback = self._bind == "localhost" or (
            self._ip is not None and self._ip.is_loopback
        )
        if self._loopback or self._bind in _WILDCARDS:
            self._names.add("localhost")

    def allows(self, host: str) -> bool:
        """Whether ``host`` (a ``Host`` header: name or address, maybe a port) is the admin's.

        An IP address is the admin's if the admin listens on it (any loopback
        address when it listens on one, any address when it listens on all);
        a name must be the admin's configured host, ``localhost`` (on a
        loopback or wildcard address) or one of the configured names.
        """
        name = _host_name(host)
        if name is None:
            return False
        try:
            ip = ipaddress.ip_address(name)
        except ValueError:
            return name.rstrip(".") in self._names
        if self._bind in _WILDCARDS:
            return True
        if self._loopback:
            return ip.is_loopback
        return ip == self._ip


def _host_name(host: str) -> str | None:
    """The name or address of a ``Host`` header without its port; ``None`` if malformed."""
    host = host.strip().lower()
    if host.startswith("["):
        inside, bracket, rest = host[1:].partition("]")
        if not bracket or (rest and not rest[1:].isdigit()) or (rest and rest[0] != ":"):
            return None
        return inside
    name, colon, port = host.rpartition(":")
    if not colon:
        return host or None
    if not port.isdigit() or ":" in name:
        return None
    return name or None


def _headers(scope: Scope) -> dict[str, str]:
    # A repeated header keeps its first value; latin-1, as HTTP says.
    found: dict[str, str] = {}
    for name, value in scope.get("headers", ()):
        found.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    return found


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class Guard:
    """The ASGI layer that applies the admin's refusals in front of ``app``.

    ``authorized(header)`` says whether an ``Authorization`` header carries
    the token (always true without one); ``public(path)`` names the paths
    that need no token. The event WebSocket checks its token itself (a
    browser sends it as the first message).
    """

    def __init__(
        self,
        app: App,
        *,
        hosts: HostCheck,
        origins: Iterable[str] = (),
        authorized: Callable[[str | None], bool],
        public: Callable[[str], bool],
    ) -> None:
        self._app = app
        self._hosts = hosts
        self._origins = frozenset(origin.lower().rstrip("/") for origin in origins)
        self._authorized = authorized
        self._public = public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self._app(scope, receive, send)
            return
        headers = _headers(scope)
        refusal = self._refusal(scope, headers)
        if refusal is None:
            await self._app(scope, receive, send)
            return
        status, message = refusal
        _refusals.warning(
            "admin request refused",
            status=status,
            path=clip(scope.get("path", "")),
            reason=clip(message),
            peer=clip(_peer(scope)),
        )
        if kind == "websocket":
            # Before the upgrade is accepted, a close is answered with HTTP 403.
            await send({"type": "websocket.close", "code": 1008, "reason": message})
            return
        await _answer(scope, headers, receive, send, status, message)

    def _refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str] | None:
        host = headers.get("host")
        # No Host at all is HTTP/1.0, which no browser sends.
        if host is not None and not self._hosts.allows(host):
            return 403, f"Host {clip(host, 100)!r} is not an address of this admin"
        method = scope.get("method", "GET")
        websocket = scope["type"] == "websocket"
        if websocket or method not in SAFE_METHODS:
            origin = headers.get("origin")
            if origin is not None and not self._same_origin(scope, origin, host):
                what = "a WebSocket" if websocket else "a state change"
                return 403, f"cross-origin {what} from {clip(origin, 100)!r} refused"
        if websocket:
            return None
        path = scope.get("path", "")
        if not self._public(path) and not self._authorized(headers.get("authorization")):
            return 401, "missing or wrong bearer token"
        if method not in SAFE_METHODS:
            content_type = headers.get("content-type")
            has_body = headers.get("content-length", "0") != "0" or "transfer-encoding" in headers
            if (content_type is not None or has_body) and not _is_json(content_type or ""):
                return 415, "a request body must be JSON (Content-Type: application/json)"
        return None

    def _same_origin(self, scope: Scope, origin: str, host: str | None) -> bool:
        origin = origin.strip().lower().rstrip("/")
        if origin in self._origins:
            return True
        scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
        return host is not None and origin == f"{scheme}://{host.strip().lower()}"


def _peer(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else ""


async def _answer(
    scope: Scope,
    headers: dict[str, str],
    receive: Receive,
    send: Send,
    status: int,
    message: str,
) -> None:
    """Answer a refused HTTP request, reading its body only if it is small."""
    length = headers.get("content-length")
    chunked = "transfer-encoding" in headers
    close = chunked or (
        length is not None and (not length.isdigit() or int(length) > REFUSED_BODY_LIMIT)
    )
    if not close and length not in (None, "0"):
        while True:  # at most REFUSED_BODY_LIMIT bytes, as announced
            event = await receive()
            if event["type"] != "http.request" or not event.get("more_body", False):
                break
    body = json.dumps({"error": message, "fields": []}).encode()
    response = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if status == 401:
        response.append((b"www-authenticate", b'Bearer realm="pmlb"'))
    if close and scope.get("http_version", "1.1").startswith("1"):
        response.append((b"connection", b"close"))  # HTTP/2 has no such header
    await send({"type": "http.response.start", "status": status, "headers": response})
    await send({"type": "http.response.body", "body": body})
