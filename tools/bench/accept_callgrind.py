"""Instructions per connection accepted and closed, under callgrind: each kind of listener.

Run: ``python tools/bench/accept_callgrind.py [--connections 300] [--kinds tcp,proxy]``;
never part of CI, a few minutes. It runs this file's ``--drive`` mode under
``valgrind --tool=callgrind`` with ``--connections 0`` and with
``--connections N``, for each kind, and prints (Ir(N) - Ir(0)) / N: the
instructions of the pmlb process one connection costs, startup excluded.

The drive mode runs a real listener and registry in process (no upstream,
``client_fin_timeout = 0``, pmlb's GC thresholds, logs at ``warning`` as the
benchmark runs them) and a client process, not traced, that makes N
connections, 16 at a time. Each connection:

- ``tcp``: plain TCP; connects, half-closes, reads until pmlb closes;
- ``proxy``: the same with a PROXY protocol v1 header first;
- ``tls``: a TLS listener (a self-signed certificate made with ``openssl``);
  the TLS handshake, then as ``tcp``;
- ``ws``: a WebSocket listener; the HTTP upgrade, then as ``tcp``.
"""

from __future__ import annotations

import argparse
import socket
import ssl
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import trio
import trio.testing

sys.path.insert(0, str(Path(__file__).resolve().parent))

from callgrind import instructions

HERE = Path(__file__).resolve()
KINDS = ("tcp", "proxy", "tls", "ws")
AT_ONCE = 16

_UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def _drive(kind: str, connections: int, cert_dir: str) -> None:
    import gc

    from pmlb import _log
    from pmlb.__main__ import GC_THRESHOLDS
    from pmlb.config import Config, ListenerConfig
    from pmlb.downstream import tcp, websocket
    from pmlb.registry import Registry

    gc.set_threshold(*GC_THRESHOLDS)
    _log.configure("warning")
    options: dict[str, object] = {"port": 0, "host": "127.0.0.1", "framing": "line"}
    if kind == "proxy":
        options["proxy_protocol"] = True
    if kind == "tls":
        options.update(
            transport="tls", tls_cert=f"{cert_dir}/cert.pem", tls_key=f"{cert_dir}/key.pem"
        )
    if kind == "ws":
        options["transport"] = "websocket"
    config = ListenerConfig(**options)  # type: ignore[arg-type]
    registry = Registry(Config(client_fin_timeout=0))
    serve = websocket.serve_websocket_listener if kind == "ws" else tcp.serve_tcp_listener
    async with trio.open_nursery() as nursery:
        listeners = await tcp.open_listeners(config)
        [address] = await nursery.start(serve, config, listeners, registry)
        port = address.rsplit(":", 1)[1]
        client = [sys.executable, str(HERE), "--client", kind, "--port", port]
        await trio.run_process([*client, "--connections", str(connections)])
        await trio.testing.wait_all_tasks_blocked()
        counters = registry.connections
        assert counters.accepted == connections, (counters, connections)
        assert counters.open == 0, counters
        assert not registry.clients
        nursery.cancel_scope.cancel()


def _connect(kind: str, port: int) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    if kind == "proxy":
        sock.sendall(b"PROXY TCP4 10.0.0.1 10.0.0.2 40000 7000\r\n")
    elif kind == "tls":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        sock = context.wrap_socket(sock)
    elif kind == "ws":
        sock.sendall(_UPGRADE)
        reply = b""
        while b"\r\n\r\n" not in reply:
            data = sock.recv(4096)
            assert data, reply
            reply += data
        assert reply.startswith(b"HTTP/1.1 101"), reply
    # The socket's own shutdown: SSLSocket.shutdown would drop its TLS first.
    socket.socket.shutdown(sock, socket.SHUT_WR)
    try:
        while sock.recv(4096):
            pass
    except (ConnectionResetError, ssl.SSLError):
        pass
    sock.close()


def _client(kind: str, port: int, connections: int) -> None:
    with ThreadPoolExecutor(AT_ONCE) as pool:
        list(pool.map(lambda _: _connect(kind, port), range(connections)))


def _instructions(kind: str, connections: int, cert_dir: str) -> int:
    args = ["--drive", kind, "--connections", str(connections), "--cert-dir", cert_dir]
    return instructions(HERE, args)


def _make_cert(cert_dir: str) -> None:
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-keyout", f"{cert_dir}/key.pem"),
            *("-out", f"{cert_dir}/cert.pem"),
        ],
        check=True,
        capture_output=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--drive", choices=KINDS)
    parser.add_argument("--client", choices=KINDS)
    parser.add_argument("--port", type=int)
    parser.add_argument("--cert-dir", default="")
    args = parser.parse_args()
    if args.drive:
        trio.run(_drive, args.drive, args.connections, args.cert_dir)
        return
    if args.client:
        _client(args.client, args.port, args.connections)
        return
    import pmlb

    print(f"pmlb from {Path(pmlb.__file__).parent}")
    with tempfile.TemporaryDirectory() as cert_dir:
        _make_cert(cert_dir)
        for kind in args.kinds.split(","):
            base = _instructions(kind, 0, cert_dir)
            full = _instructions(kind, args.connections, cert_dir)
            per = (full - base) / args.connections
            print(f"{kind:5} connections={args.connections}: {per:,.0f} instructions/connection")


if __name__ == "__main__":
    main()
