"""What the scripted test upstreams answer: a pure function shared by both servers.

Commands (the payload decoded as UTF-8, one trailing ``\\r`` ignored):

- ``whoami``: one reply to the sender, its own UUID.
- ``time``: one reply to the sender, the ``time`` field of its request.
- ``to <uuid> <text>``: one reply to ``<uuid>`` with ``<text>``.
- ``bcast <all|active|inactive> <text>``: one broadcast of ``<text>``.
- ``silent`` or ``silent ...``: no reply.
- ``multi <uuid>,<uuid>... <text>``: one multicast of ``<text>`` to those clients.
- ``kick <uuid>[,<uuid>...]``: disconnect that client (or those, by multicast).
- ``oversize <name> <n>``: the upstream called ``<name>`` replies to the sender
  with ``n`` bytes of ``x`` (the others echo it).
- ``reset <name>``: the upstream called ``<name>`` resets the stream (done by
  the servers, see there; the others echo it).
- ``attempt <text>``: one reply to the sender, ``<name>:<text>:<n>``, ``n``
  the request's ``delivery_attempt`` (0 unless pmlb's acks are on).
- anything else: echo to the sender as ``<name>:`` + the original payload bytes.

``<text>`` is taken from the payload bytes, so it is forwarded byte for byte.

Lifecycle events (opt-in ``events = true`` in pmlb) get no reply; the
upstreams print each as a line (:func:`event_line`) that tests wait for.
"""

from __future__ import annotations

import argparse
import os
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime

BROADCAST_TARGETS = frozenset({"all", "active", "inactive"})


@dataclass(frozen=True, slots=True)
class Reply:
    """One message an upstream sends back: to one client, or a broadcast."""

    client_uuid: str | None
    broadcast: str | None
    payload: bytes
    multicast: tuple[str, ...] | None = None
    disconnect: bool = False

    def __post_init__(self) -> None:
        targets = (self.client_uuid, self.broadcast, self.multicast)
        if sum(target is not None for target in targets) != 1:
            raise ValueError("set exactly one of client_uuid, broadcast and multicast")
        if self.broadcast is not None and self.broadcast not in BROADCAST_TARGETS:
            raise ValueError(f"unknown broadcast target {self.broadcast!r}")


def respond(
    name: str, client_uuid: str, payload: bytes, time: str = "", attempt: int = 0
) -> list[Reply]:
    """The replies the upstream called ``name`` sends for one client message."""
    line = payload.removesuffix(b"\r")
    if line == b"time":
        return [Reply(client_uuid, None, time.encode())]
    words = line.split(b" ", 2)
    command = words[0].decode("utf-8", errors="replace")
    if line == b"whoami":
        return [Reply(client_uuid, None, client_uuid.encode())]
    if command == "to" and len(words) == 3 and words[1]:
        return [Reply(words[1].decode("utf-8", errors="replace"), None, words[2])]
    if command == "bcast" and len(words) == 3:
        target = words[1].decode("utf-8", errors="replace")
        if target in BROADCAST_TARGETS:
            return [Reply(None, target, words[2])]
    if command == "silent":
        return []
    if command == "attempt" and len(words) >= 2:
        text = line.split(b" ", 1)[1]
        return [Reply(client_uuid, None, b"%s:%s:%d" % (name.encode(), text, attempt))]
    if command == "oversize" and len(words) == 3 and words[1] == name.encode():
        return [Reply(client_uuid, None, b"x" * int(words[2]))]
    if command == "multi" and len(words) == 3 and words[1]:
        uuids = tuple(words[1].decode("utf-8", errors="replace").split(","))
        return [Reply(None, None, words[2], multicast=uuids)]
    if command == "kick" and len(words) == 2 and words[1]:
        uuids = tuple(words[1].decode("utf-8", errors="replace").split(","))
        if len(uuids) == 1:
            return [Reply(uuids[0], None, b"", disconnect=True)]
        return [Reply(None, None, b"", multicast=uuids, disconnect=True)]
    return [Reply(client_uuid, None, name.encode() + b":" + payload)]


def event_line(
    event: int,
    client_uuid: str,
    *,
    remote: str,
    listener: str,
    transport: str,
    reason: str,
    detail: str,
) -> str:
    """The line an upstream prints for a lifecycle event (``event`` 1 or 2; 0 is a message)."""
    if event == 1:
        return f"EVENT connected {client_uuid} {remote} {listener} {transport}"
    return f"EVENT disconnected {client_uuid} {reason} {detail}"


def rfc3339_now() -> str:
    """The current time as an RFC 3339 UTC timestamp, e.g. ``2025-01-31T12:00:00.5Z``."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def parser(description: str) -> argparse.ArgumentParser:
    """The command line both scripted upstreams share."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--name", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--not-ready", action="store_true")
    parser.add_argument("--tls-cert", help="serve TLS with this PEM certificate chain")
    parser.add_argument("--tls-key", help="... and this PEM key")
    parser.add_argument("--tls-client-ca", help="require client certificates from this CA")
    parser.add_argument(
        "--record",
        help="append every client message's payload, one a line, to this file (written"
        " at once, so that it survives SIGKILL); print RECORDED <n> every 100",
    )
    parser.add_argument("--ready-hangs", action="store_true", help="never answer the ready RPC")
    return parser


class Recorder:
    """Writes each received payload to a file as it arrives (see ``--record``)."""

    def __init__(self, path: str | None) -> None:
        self._fd = (
            None if path is None else os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        )
        self.count = 0

    def record(self, payload: bytes) -> None:
        if self._fd is None:
            return
        # One write per message, straight to the kernel: what was recorded
        # is in the file even if the process is killed the next instant.
        os.write(self._fd, payload + b"\n")
        self.count += 1
        if self.count % 100 == 0:
            print(f"RECORDED {self.count}", flush=True)


def server_ssl_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The TLS context the command line asks for, speaking h2; None for plain TCP."""
    if not args.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.tls_cert, args.tls_key)
    if args.tls_client_ca:
        context.load_verify_locations(cafile=args.tls_client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["h2"])
    return context
