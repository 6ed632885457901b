"""Noticing that a client hung up while pmlb is not reading its socket.

While no upstream serves (or their queues are full), pmlb stops reading
from clients: that is its backpressure. A client that closes meanwhile
would sit in CLOSE-WAIT, counted and holding a descriptor, until pmlb read
again. :func:`wait_hangup` waits for the peer's FIN (``EPOLLRDHUP``) or a
reset without reading a byte, so what the client sent stays in the kernel
and memory stays bounded.

All waiting sockets share one epoll instance per Trio run: a waiting task
costs no extra descriptor and no polling. One of the waiters waits on the
epoll descriptor for everyone; when it leaves, it hands that on.
"""

from __future__ import annotations

import select

import trio

_MASK = getattr(select, "EPOLLRDHUP", 0) | getattr(select, "EPOLLHUP", 0)


class HangupWatcher:
    """Waits for the peers of many sockets to shut down their sending side."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        # fd -> the event its waiter sleeps on while another task polls
        self._wakeups: dict[int, trio.Event] = {}
        self._hung_up: set[int] = set()
        self._polling = False

    async def wait(self, fd: int) -> None:
        """Return once the peer of socket ``fd`` sent its FIN or reset the connection.

        One task at a time may wait for a given ``fd``.
        """
        self._epoll.register(fd, _MASK)
        try:
            while fd not in self._hung_up:
                if self._polling:
                    wakeup = self._wakeups[fd] = trio.Event()
                    await wakeup.wait()
                    continue
                self._polling = True
                try:
                    await trio.lowlevel.wait_readable(self._epoll.fileno())
                finally:
                    self._polling = False
                self._collect()
        finally:
            self._wakeups.pop(fd, None)
            if fd in self._hung_up:
                self._hung_up.discard(fd)
            else:
                self._epoll.unregister(fd)
            if not self._polling:
                self._hand_on()

    def _collect(self) -> None:
        for fd, _ in self._epoll.poll(0):
            # Level-triggered: a hung-up socket stays ready, so it leaves now.
            self._epoll.unregister(fd)
            self._hung_up.add(fd)
            wakeup = self._wakeups.get(fd)
            if wakeup is not None:
                wakeup.set()

    def _hand_on(self) -> None:
        # The polling task left: wake one waiter, which polls from now on.
        for wakeup in self._wakeups.values():
            if not wakeup.is_set():
                wakeup.set()
                return


_watcher: trio.lowlevel.RunVar[HangupWatcher | None] = trio.lowlevel.RunVar(
    "pmlb_hangup_watcher", default=None
)


def supported() -> bool:
    """Whether hang-ups can be noticed without reading (Linux's epoll)."""
    return hasattr(select, "epoll") and bool(_MASK)


async def wait_hangup(fd: int) -> None:
    """Return once the peer of socket ``fd`` hung up; never returns where unsupported."""
    if not supported():
        await trio.sleep_forever()
    watcher = _watcher.get()
    if watcher is None:
        watcher = HangupWatcher()
        _watcher.set(watcher)
    await watcher.wait(fd)
