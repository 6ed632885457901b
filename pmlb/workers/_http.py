"""A minimal HTTP/1.1 client over a unix socket: how the front talks to each worker's admin.

The workers' admins are pmlb's own (hypercorn), on sockets in a private
directory: one request per connection, a body of known length, nothing
else is needed. h11 (hypercorn's own HTTP/1.1 engine) does the parsing.
"""

from __future__ import annotations

import attrs
import h11
import trio

#: the most bytes of one answer read from a worker
MAX_ANSWER = 64 * 1024 * 1024


@attrs.frozen
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class WorkerUnreachable(Exception):
    """The worker's admin socket did not answer (the worker is starting, stopping or dead)."""


async def request(
    path: str,
    method: str,
    target: str,
    *,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    wait: float = 10.0,
) -> Answer:
    """One request to the admin on the unix socket ``path``, answered within ``wait`` s."""
    connection = h11.Connection(h11.CLIENT, max_incomplete_event_size=64 * 1024)
    sent = [("host", "127.0.0.1"), ("connection", "close"), ("content-length", str(len(body)))]
    sent += list((headers or {}).items())
    try:
        with trio.fail_after(wait):
            stream = await trio.open_unix_socket(path)
            async with stream:
                await stream.send_all(
                    connection.send(h11.Request(method=method, target=target, headers=sent))
                    + connection.send(h11.Data(data=body))
                    + connection.send(h11.EndOfMessage())
                )
                response: h11.Response | None = None
                chunks: list[bytes] = []
                size = 0
                while True:
                    event = connection.next_event()
                    if event is h11.NEED_DATA:
                        connection.receive_data(await stream.receive_some(65536))
                    elif isinstance(event, h11.Response):
                        response = event
                    elif isinstance(event, h11.Data):
                        size += len(event.data)
                        if size > MAX_ANSWER:
                            raise WorkerUnreachable("answer too large")
                        chunks.append(bytes(event.data))
                    elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                        break
    except (OSError, trio.TooSlowError, trio.BrokenResourceError, h11.ProtocolError) as exc:
        raise WorkerUnreachable(str(exc) or type(exc).__name__) from None
    if response is None:
        raise WorkerUnreachable("no answer")
    return Answer(
        response.status_code,
        {k.decode("latin-1"): v.decode("latin-1") for k, v in response.headers},
        b"".join(chunks),
    )
