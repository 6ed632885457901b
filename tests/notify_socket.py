"""A fake systemd notification socket: a real unix datagram socket a test reads."""

from __future__ import annotations

import uuid
from pathlib import Path

import trio

from tests.helpers import TIMEOUT


class NotifySocket:
    """Binds a datagram socket (a file under ``directory``, or abstract) and collects messages.

    ``env`` is what to give the notifying process: ``NOTIFY_SOCKET`` pointing here.
    """

    def __init__(self, directory: Path | None = None) -> None:
        self.sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_DGRAM)
        if directory is None:
            name = f"pmlb-test-{uuid.uuid4().hex}"
            self._bind = "\0" + name
            self.path = "@" + name
        else:
            self._bind = self.path = str(directory / "notify.sock")
        #: every message so far, each as its KEY=VALUE fields
        self.messages: list[dict[str, str]] = []

    async def __aenter__(self) -> NotifySocket:
        await self.sock.bind(self._bind)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.sock.close()
        if not self.path.startswith("@"):
            Path(self.path).unlink(missing_ok=True)  # noqa: ASYNC240 (a local file, at once)

    @property
    def env(self) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.path}

    async def receive(self, timeout: float = TIMEOUT) -> dict[str, str]:
        """The next message, as its fields."""
        with trio.fail_after(timeout):
            data = await self.sock.recv(65536)
        fields = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
        self.messages.append(fields)
        return fields

    async def wait_for(self, key: str, timeout: float = TIMEOUT) -> dict[str, str]:
        """The next message that sets ``key`` (the ones before are kept in ``messages``)."""
        with trio.fail_after(timeout):
            while True:
                fields = await self.receive()
                if key in fields:
                    return fields
