"""Who called the admin: the caller's address in audit and access lines.

Every audit line (``admin: upstream_added ...``) and every access line names
the address the request came from (``caller``). Behind a reverse proxy that
address is the proxy's; when the proxy is listed in ``trusted_proxies``, the
client its ``X-Forwarded-For`` (or ``Forwarded: for=``) header names is
logged too, as ``forwarded_for``. From any other caller those headers are
ignored: anyone can send them.

hypercorn's own lines go through pmlb's logging too: its errors as
``pmlb.admin.http``, and each request as an ``admin request`` line of
``pmlb.admin.access`` with fields (method, path, status, duration in
seconds, caller), at info level, except the polled probes and ``/metrics``
at debug level.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from hypercorn.logging import Logger as HypercornLogger

from pmlb.config import format_address

access_log = logging.getLogger("pmlb.admin.access")

#: requests polled by machines, logged at debug level only
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(texts: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(text, strict=False) for text in texts)


def _trusted(host: str, trusted: tuple[Network, ...]) -> bool:
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return any(address in network for network in trusted)


def _forwarded_hops(headers: Mapping[str, str]) -> list[str]:
    """The addresses a ``Forwarded`` or else ``X-Forwarded-For`` header lists, nearest last."""
    hops: list[str] = []
    forwarded = headers.get("forwarded")
    if forwarded:
        for element in forwarded.split(","):
            for pair in element.split(";"):
                name, _, value = pair.strip().partition("=")
                if name.lower() == "for" and value:
                    value = value.strip('"')
                    if value.startswith("["):  # "[v6]:port"
                        value = value[1:].partition("]")[0]
                    elif value.count(":") == 1:  # "v4:port"
                        value = value.partition(":")[0]
                    hops.append(value)
        return hops
    return [h.strip() for h in headers.get("x-forwarded-for", "").split(",") if h.strip()]


def caller_fields(
    client: tuple[str, int] | list[Any] | None,
    headers: Mapping[str, str],
    trusted: tuple[Network, ...],
) -> dict[str, str]:
    """``caller`` (the peer's ``host:port``), and ``forwarded_for`` if the peer is trusted.

    ``headers`` has lower-case names. The forwarded address is the nearest
    one, walking back from the peer, that is not itself a trusted proxy.
    """
    if not client:
        return {"caller": "unknown"}
    host = str(client[0])
    fields = {"caller": format_address(host, int(client[1])) if len(client) > 1 else host}
    if trusted and _trusted(host, trusted):
        for hop in reversed(_forwarded_hops(headers)):
            if not _trusted(hop, trusted):
                fields["forwarded_for"] = hop[:64]
                break
    return fields


def scope_headers(scope: Mapping[str, Any]) -> dict[str, str]:
    return {
        name.decode("latin-1").lower(): value.decode("latin-1")
        for name, value in scope.get("headers", [])
    }


def make_logger_class(trusted: tuple[Network, ...]) -> type[HypercornLogger]:
    """A hypercorn logger class writing its access lines as pmlb log lines with fields."""

    class AccessLogger(HypercornLogger):
        async def access(self, request: Any, response: Any, request_time: float) -> None:
            path = str(request.get("path", ""))
            level = logging.DEBUG if path in QUIET_PATHS else logging.INFO
            if not access_log.isEnabledFor(level):
                return
            kind = request.get("type")
            fields: dict[str, object] = {
                "method": request.get("method", "GET") if kind == "http" else "WEBSOCKET",
                "path": path,
                "status": None if response is None else response.get("status"),
                "duration": round(request_time, 6),
                **caller_fields(request.get("client"), scope_headers(request), trusted),
            }
            access_log.log(level, "admin request", extra=fields)

    return AccessLogger
