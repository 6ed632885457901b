"""What the admin routes share: the :class:`Context` the app hands every resource module.

:func:`pmlb.admin.app.create_app` builds one per app; each module of
:mod:`pmlb.admin.routes` takes it in its ``register(app, ctx)``. Beside it,
the helpers more than one resource uses: a message's payload, the words for a
cluster without Redis.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import attrs
from prometheus_client import CollectorRegistry

from pmlb.admin import schemas as s
from pmlb.admin.errors import Invalid
from pmlb.registry import Registry

if TYPE_CHECKING:
    from pmlb.cluster.bus import Bus


class Action(Protocol):
    """Audit a state change of the request being answered: an event and a log line."""

    def __call__(self, what: str, **fields: Any) -> None: ...


@attrs.frozen
class Context:
    """What a route needs besides the request: the registry and the app's settings."""

    registry: Registry
    #: the bound client addresses by listener name
    listeners: dict[str, list[str]]
    #: records ``admin.WHAT`` with the caller (see :mod:`pmlb.admin.audit`)
    action: Action
    #: whether an ``Authorization`` header value carries the token
    authorized: Callable[[str | None], bool]
    #: seconds to wait for another node of the cluster, read at each request
    ask_timeout: Callable[[], float]
    metrics: CollectorRegistry
    #: the wall-clock and monotonic time the app was made
    started_at: float
    started: float
    log_level: Callable[[], str]
    set_log_level: Callable[[str], None]
    ready_requires_upstream: bool

    def this_node(self) -> str | None:
        """This node's name in a cluster (None outside one)."""
        bus = self.registry.cluster
        return None if bus is None else bus.node


def degraded(bus: Bus) -> str:
    """Why ``bus`` is cut off from the other nodes."""
    return f"Redis unreachable: {bus.last_error or 'not connected yet'}"


def message_payload(message: s.Message) -> bytes:
    """The bytes ``message`` carries; :class:`Invalid` if its base64 is not."""
    if message.encoding == "base64":
        try:
            return base64.b64decode(message.payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise Invalid(f"payload is not valid base64: {exc}", "payload") from None
    return message.payload.encode()
