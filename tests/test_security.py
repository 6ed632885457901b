"""TLS and PROXY protocol listeners, and the connection limits, on an embedded pmlb.

Certificates come from trustme. Each test runs pmlb in-process with a real
scripted upstream, so that ``whoami`` proves a connection carries traffic.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trustme

import pmlb
from pmlb.codecs.proxy_protocol import encode_v1, encode_v2
from pmlb.downstream.limits import ConnectionCounters, TokenBucket
from tests.helpers import LineClient, Processes


@attrs.frozen
class Certs:
    ca: trustme.CA
    cert: Path
    key: Path
    ca_file: Path
    client: trustme.LeafCert
    client_cert: Path
    client_key: Path


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    directory = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    cert, key, ca_file = directory / "cert.pem", directory / "key.pem", directory / "ca.pem"
    server.cert_chain_pems[0].write_to_path(cert)
    server.private_key_pem.write_to_path(key)
    ca.cert_pem.write_to_path(ca_file)
    client = ca.issue_cert("client.example")
    client_cert, client_key = directory / "client.pem", directory / "client.key"
    client.cert_chain_pems[0].write_to_path(client_cert)
    client.private_key_pem.write_to_path(client_key)
    return Certs(ca, cert, key, ca_file, client, client_cert, client_key)


def make_config(upstream_port: int, **listener: Any) -> pmlb.Config:
    server = {"host": "127.0.0.1", "port": 0, "framing": "line", **listener}
    globals_ = {k: server.pop(k) for k in ("max_clients_total",) if k in server}
    return pmlb.parse_config(
        {
            "server": {**server, **globals_},
            "management_server": {"enabled": False},
            "upstream": [{"host": "127.0.0.1", "port": upstream_port}],
        }
    )


def client_context(certs: Certs, *, with_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context()
    certs.ca.configure_trust(context)
    if with_cert:
        certs.client.configure_cert(context)
    return context


async def tls_client(
    procs: Processes, port: int, context: ssl.SSLContext, prefix: bytes = b""
) -> LineClient:
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    procs.on_close(tcp)
    if prefix:
        await tcp.send_all(prefix)
    stream = trio.SSLStream(tcp, context, server_hostname="127.0.0.1")
    await stream.do_handshake()
    return LineClient(stream)  # type: ignore[arg-type]


def counters(server: pmlb.Server) -> ConnectionCounters:
    return server.registry.statistics().connections


async def test_tls_listener_carries_traffic(procs: Processes, certs: Certs) -> None:
    _, up = await procs.upstream("A")
    config = make_config(up, transport="tls", tls_cert=str(certs.cert), tls_key=str(certs.key))
    async with trio.open_nursery() as nursery:
        server: pmlb.Server = await nursery.start(pmlb.serve, config)
        client = await tls_client(procs, server.port(), client_context(certs))
        uuid = await client.whoami()
        assert server.registry.clients[uuid].transport == "tls"
        await client.send("hello")
        assert await client.recv() == "A:hello"
        # Plain text on a TLS port is a failed handshake, counted; TLS clients carry on.
        plain = await procs.client(server.port())
        await plain.send("whoami")
        await plain.expect_closed()
        assert counters(server).tls_handshake_failures == 1
        await client.send("still")
        assert await client.recv() == "A:still"
        server.stop()


async def test_mutual_tls_requires_a_client_certificate(procs: Processes, certs: Certs) -> None:
    _, up = await procs.upstream("A")
    config = make_config(
        up,
        transport="tls",
        tls_cert=str(certs.cert),
        tls_key=str(certs.key),
        tls_client_ca=str(certs.ca_file),
    )
    async with trio.open_nursery() as nursery:
        server: pmlb.Server = await nursery.start(pmlb.serve, config)
        client = await tls_client(procs, server.port(), client_context(certs, with_cert=True))
        await client.whoami()
        # TLS 1.3: the client's handshake ends before the server checks the
        # certificate, so the refusal shows as a closed connection.
        anonymous = await tls_client(procs, server.port(), client_context(certs))
        await anonymous.send("whoami")
        with pytest.raises((AssertionError, trio.BrokenResourceError)):
            await anonymous.recv()
        assert counters(server).tls_handshake_failures == 1
        server.stop()


async def test_handshake_timeout_closes_a_silent_connection(procs: Processes, certs: Certs) -> None:
    _, up = await procs.upstream("A")
    config = make_config(
        up,
        transport="tls",
        tls_cert=str(certs.cert),
        tls_key=str(certs.key),
        proxy_protocol=True,
        handshake_timeout=0.5,
    )
    async with trio.open_nursery() as nursery:
        server: pmlb.Server = await nursery.start(pmlb.serve, config)
        silent = await procs.client(server.port())
        assert await silent.expect_closed() == b""
        assert counters(server).handshake_timeouts == 1
        # PROXY header, then TLS, then traffic: the real address is the client's.
        header = encode_v2(("198.51.100.9", 5555), ("192.0.2.1", 443))
        client = await tls_client(procs, server.port(), client_context(certs), prefix=header)
        uuid = await client.whoami()
        assert server.registry.clients[uuid].remote == "198.51.100.9:5555"
        server.stop()


@pytest.mark.parametrize(
    ("header", "remote"),
    [
        (encode_v1(("203.0.113.7", 4242), ("192.0.2.1", 7999)), "203.0.113.7:4242"),
        (encode_v2(("2001:db8::5", 65535), ("2001:db8::1", 7999)), "[2001:db8::5]:65535"),
        (b"PROXY UNKNOWN\r\n", None),
        (encode_v2(None, None), None),
    ],
)
async def test_proxy_protocol_gives_the_real_address(
    procs: Processes, header: bytes, remote: str | None
) -> None:
    _, up = await procs.upstream("A")
    async with trio.open_nursery() as nursery:
        server: pmlb.Server = await nursery.start(pmlb.serve, make_config(up, proxy_protocol=True))
        client = await procs.client(server.port())
        # The header and the first message in one segment: nothing is lost.
        await client.stream.send_all(header + b"whoami\n")
        uuid = await client.recv()
        seen = server.registry.clients[uuid].remote
        if remote is None:  # no address in the header: the socket's stands
            assert seen.startswith("127.0.0.1:")
        else:
            assert seen == remote
        # A malformed header closes only that connection, and is counted.
        bad = await procs.client(server.port())
        await bad.send("GET / HTTP/1.1")
        assert await bad.expect_closed() == b""
        assert counters(server).proxy_header_errors == 1
        await client.send("after")
        assert await client.recv() == "A:after"
        server.stop()


async def test_proxy_header_is_never_trusted_where_not_configured(procs: Processes) -> None:
    _, up = await procs.upstream("A")
    async with trio.open_nursery() as nursery:
        server: pmlb.Server = await nursery.start(pmlb.serve, make_config(up))
        client = await procs.client(server.port())
        await client.stream.send_all(encode_v1(("203.0.113.7", 1), ("192.0.2.1", 2)))
        # The header is just a message from this client, echoed back.
        assert await client.recv() == "A:PROXY TCP4 203.0.113.7 192.0.2.1 1 2\r"
        uuid = await client.whoami()
        assert server.registry.clients[uuid].remote.startswith("127.0.0.1:")
        server.stop()


async def test_max_clients_refuses_exactly_the_extra_connection(procs: Processes) -> None:
    _, up = await procs.upstream("A")
    config = make_config(up, max_clients=2)
    async with trio.open_nursery() as nursery:
        server: pmlb.Server = await nursery.start(pmlb.serve, config)
        first, second = await procs.client(server.port()), await procs.client(server.port())
        await first.whoami()
        await second.whoami()
        third = await procs.client(server.port())
        assert await third.expect_closed() == b""
        assert counters(server).refused_max_clients == 1
        await first.send("x")
        assert await first.recv() == "A:x"
        server.stop()


async def test_max_clients_total_counts_every_listener(procs: Processes) -> None:
    _, up = await procs.upstream("A")
    config = pmlb.parse_config(
        {
            "server": {"max_clients_total": 1, "host": "127.0.0.1", "port": 0},
            "management_server": {"enabled": False},
            "listener": [{"name": "other", "host": "127.0.0.1", "port": 0}],
            "upstream": [{"host": "127.0.0.1", "port": up}],
        }
    )
    async with trio.open_nursery() as nursery:
        server: pmlb.Server = await nursery.start(pmlb.serve, config)
        first = await procs.client(server.port())
        await first.send("whoami")
        await first.recv()
        other = await procs.client(server.port("other"))
        assert await other.expect_closed() == b""
        assert counters(server).refused_max_clients == 1
        server.stop()


async def test_accept_rate_refuses_a_burst(procs: Processes) -> None:
    _, up = await procs.upstream("A")
    # One connection per 100 s, bursts of one: the second one is over.
    async with trio.open_nursery() as nursery:
        server: pmlb.Server = await nursery.start(pmlb.serve, make_config(up, accept_rate=0.01))
        first = await procs.client(server.port())
        await first.whoami()
        second = await procs.client(server.port())
        assert await second.expect_closed() == b""
        assert counters(server).refused_accept_rate == 1
        await first.send("x")
        assert await first.recv() == "A:x"
        server.stop()


async def test_idle_timeout_closes_an_idle_client(procs: Processes) -> None:
    _, up = await procs.upstream("A")
    async with trio.open_nursery() as nursery:
        server: pmlb.Server = await nursery.start(pmlb.serve, make_config(up, idle_timeout=0.3))
        client = await procs.client(server.port())
        await client.whoami()
        assert await client.expect_closed() == b""
        assert counters(server).idle_timeouts == 1
        server.stop()


def test_token_bucket() -> None:
    bucket = TokenBucket(2.0)
    assert [bucket.take(0.0) for _ in range(3)] == [True, True, False]
    assert bucket.take(0.5)
    assert not bucket.take(0.5)
    assert bucket.take(10.0)


async def test_bad_tls_files_are_named_without_their_content(tmp_path: Path) -> None:
    secret = "SECRET-KEY-MATERIAL-0123456789"
    key = tmp_path / "key.pem"
    key.write_text(f"-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n")
    config = pmlb.parse_config(
        {
            "server": {
                "host": "127.0.0.1",
                "port": 0,
                "transport": "tls",
                "tls_cert": str(key),
                "tls_key": str(key),
            },
            "management_server": {"enabled": False},
        }
    )
    with pytest.raises(pmlb.ListenError) as info:
        await pmlb.serve(config)
    message = str(info.value)
    assert str(key) in message
    assert secret not in message


TRANSPORTS = pytest.mark.parametrize("transport", ["native", "grpclib"])


@TRANSPORTS
@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual-tls"])
async def test_tls_to_the_upstream(
    procs: Processes, certs: Certs, mutual: bool, transport: str
) -> None:
    tls_args = ["--tls-cert", str(certs.cert), "--tls-key", str(certs.key)]
    if mutual:
        tls_args += ["--tls-client-ca", str(certs.ca_file)]
    _, up = await procs.upstream("A", extra=tls_args)
    upstream: dict[str, object] = {
        "host": "127.0.0.1",
        "port": up,
        "tls": True,
        "transport": transport,
    }
    upstream["tls_ca"] = str(certs.ca_file)
    if mutual:
        upstream |= {"tls_cert": str(certs.client_cert), "tls_key": str(certs.client_key)}
    config = pmlb.parse_config(
        {
            "server": {"host": "127.0.0.1", "port": 0, "framing": "line"},
            "upstream": [upstream],
            "management_server": {"enabled": False},
        }
    )
    async with trio.open_nursery() as nursery:
        server: pmlb.Server = await nursery.start(pmlb.serve, config)
        client = await procs.client(server.port())
        await client.whoami()
        await client.send("over tls")
        assert await client.recv() == "A:over tls"
        server.stop()


def toml_value(value: object) -> str:
    return "true" if value is True else repr(value).replace("'", '"')


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"tls_ca": ""}, "CERTIFICATE_VERIFY_FAILED"),  # the test CA is not a system CA
        ({"tls_server_name": "other.example"}, "CERTIFICATE_VERIFY_FAILED"),
        ({"tls_cert": "", "tls_key": ""}, "reason="),  # the upstream requires one
    ],
)
@TRANSPORTS
async def test_upstream_tls_failures_are_reported_without_secrets(
    procs: Processes,
    certs: Certs,
    tmp_path: Path,
    change: dict[str, str],
    problem: str,
    transport: str,
) -> None:
    tls_args = ["--tls-cert", str(certs.cert), "--tls-key", str(certs.key)]
    _, up = await procs.upstream("A", extra=[*tls_args, "--tls-client-ca", str(certs.ca_file)])
    upstream: dict[str, object] = {
        "host": "127.0.0.1",
        "port": up,
        "tls": True,
        "tls_ca": str(certs.ca_file),
        "tls_cert": str(certs.client_cert),
        "tls_key": str(certs.client_key),
        "ready_timeout": 2,
        "transport": transport,
    }
    upstream = {k: v for k, v in (upstream | change).items() if v != ""}
    path = tmp_path / "pmlb.toml"
    path.write_text(
        "[server]\ntransport = 'tls'\n"
        f"tls_cert = {str(certs.cert)!r}\ntls_key = {str(certs.key)!r}\n[[upstream]]\n"
        + "".join(f"{k} = {toml_value(v)}\n" for k, v in upstream.items())
    )
    pmlb_proc, port = await procs.pmlb("--config", str(path), "--log-level", "debug")
    await pmlb_proc.wait_for(rf"upstream not ready upstream=127\.0\.0\.1:{up} .*{problem}")
    # A failed client handshake is logged too.
    plain = await procs.client(port)
    await plain.send("hello")
    await plain.expect_closed()
    await pmlb_proc.wait_for("TLS handshake failed")
    # No key material anywhere in the log.
    output = "\n".join(pmlb_proc.lines)
    for key in (certs.key, certs.client_key):
        body = key.read_text().splitlines()[1:-1]
        assert all(line not in output for line in body if len(line) > 16)
