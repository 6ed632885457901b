"""h2 no longer builds a frame's repr for the trace line nobody reads (issue 15)."""

from __future__ import annotations

import logging

import h2.config
import h2.connection
import hyperframe.frame
import pytest

from pmlb.upstream import h2_connection, h2_trace  # noqa: F401  (installs the patch)


def _server_and_client(logger: object | None = None) -> tuple[h2.connection.H2Connection, ...]:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    kwargs = {"logger": logger} if logger is not None else {}
    server = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, **kwargs)  # type: ignore[arg-type]
    )
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    client.send_headers(1, [(":method", "POST"), (":path", "/"), (":scheme", "http"),
                            (":authority", "x")])  # fmt: skip
    client.send_data(1, b"x" * 4000)
    return server, client


def test_receiving_frames_never_builds_their_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[str] = []
    original = hyperframe.frame.Frame.__repr__

    def counting(self: hyperframe.frame.Frame) -> str:
        built.append(type(self).__name__)
        return original(self)

    monkeypatch.setattr(hyperframe.frame.Frame, "__repr__", counting)
    server, client = _server_and_client()
    events = server.receive_data(client.data_to_send())
    assert any(isinstance(e, h2.events.DataReceived) for e in events)
    assert built == []


def test_a_logger_that_formats_gets_the_real_repr() -> None:
    lines: list[str] = []

    class Tracing(h2.config.DummyLogger):
        def trace(self, fmtstr: str, *args: object) -> None:
            lines.append(fmtstr % args)

    server, client = _server_and_client(Tracing())
    server.receive_data(client.data_to_send())
    data_lines = [line for line in lines if line.startswith("Received frame: DataFrame")]
    assert data_lines == [
        "Received frame: " + repr(hyperframe.frame.DataFrame(1, data=b"x" * 4000))
    ]


def test_lazy_repr_formats_like_repr() -> None:
    obj = {"a": [1, b"2"]}
    assert str(h2_trace.LazyRepr(obj)) == repr(obj)
    assert f"{h2_trace.LazyRepr(obj)!r}" == repr(obj)
    record = logging.LogRecord("t", logging.DEBUG, "f", 1, "%s", (h2_trace.LazyRepr(obj),), None)
    assert record.getMessage() == repr(obj)
