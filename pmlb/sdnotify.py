"""systemd's service notification protocol (``sd_notify``), for ``Type=notify`` units.

systemd passes the path of a unix datagram socket in ``$NOTIFY_SOCKET``
(``@name`` for one in the abstract namespace); the service sends it
newline-separated ``KEY=VALUE`` assignments: ``READY=1`` once it serves,
``RELOADING=1`` with ``MONOTONIC_USEC`` when a reload starts and ``READY=1``
when it is done, ``STOPPING=1`` when it begins to stop, ``STATUS=...`` for
``systemctl status``, ``WATCHDOG=1`` to say it is alive. See sd_notify(3).

Without ``$NOTIFY_SOCKET`` every call does nothing, so pmlb behaves the same
outside systemd. A notification that cannot be sent is logged once and never
stops pmlb: systemd's view of the service is not worth a failure of it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

import trio

log = logging.getLogger("pmlb.sdnotify")

#: the environment variable systemd sets for Type=notify services
SOCKET_ENV = "NOTIFY_SOCKET"


def _address(path: str) -> str | bytes:
    # An abstract socket is written "@name"; on the wire its name starts with NUL.
    if path.startswith("@"):
        return b"\0" + path[1:].encode()
    return path


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as systemd expects with ``RELOADING=1``."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """Sends notifications to the service manager, or nothing without one.

    ``environ`` defaults to :data:`os.environ`; ``$NOTIFY_SOCKET`` is read
    once, when the notifier is made.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get(SOCKET_ENV, "")
        self._address: str | bytes | None = None
        self._socket: socket.socket | None = None
        self._failed = False
        self._path = path
        if path and (path.startswith(("/", "@"))):
            self._address = _address(path)
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # Never block pmlb's loop on a full socket: a lost status line is better.
            self._socket.setblocking(False)
        elif path:
            log.warning(
                "NOTIFY_SOCKET is neither a path nor an abstract socket (@name): ignored",
                extra={"notify_socket": path},
            )
        #: the watchdog interval systemd asked for (WatchdogSec=), in seconds
        self.watchdog_interval: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        ours = not pid or pid == str(os.getpid())
        if self._socket is not None and usec.isdigit() and int(usec) > 0 and ours:
            self.watchdog_interval = int(usec) / 1_000_000

    @property
    def enabled(self) -> bool:
        """Whether there is a service manager to tell."""
        return self._socket is not None

    def notify(self, **fields: object) -> bool:
        """Send ``KEY=VALUE`` lines (keys upper-cased); whether they were sent."""
        if self._socket is None or self._address is None:
            return False
        lines = []
        for key, value in fields.items():
            # One assignment a line: a newline in a value would start another.
            text = str(value).replace("\n", " ")
            lines.append(f"{key.upper()}={text}")
        try:
            self._socket.sendto("\n".join(lines).encode(), self._address)
        except OSError as error:
            if not self._failed:
                self._failed = True
                log.warning(
                    "cannot notify the service manager",
                    extra={"notify_socket": self._path, "error": str(error)},
                )
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.notify(ready=1, status=status)

    def reloading(self, status: str) -> bool:
        return self.notify(reloading=1, monotonic_usec=monotonic_usec(), status=status)

    def stopping(self, status: str) -> bool:
        return self.notify(stopping=1, status=status)

    def status(self, status: str) -> bool:
        return self.notify(status=status)

    async def run_watchdog(self) -> None:
        """Send ``WATCHDOG=1`` at half the interval systemd asked for, until cancelled."""
        if self.watchdog_interval is None:
            return
        while True:
            self.notify(watchdog=1)
            await trio.sleep(self.watchdog_interval / 2)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
