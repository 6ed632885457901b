import pickle
import tomllib
from pathlib import Path

import pytest

from pmlb.codecs import Framing
from pmlb.config import (
    ClusterConfig,
    Config,
    ConfigError,
    ListenerConfig,
    LogConfig,
    ManagementConfig,
    ManagementTLSConfig,
    UpstreamConfig,
    apply_overrides,
    load_config,
    parse_config,
    render_config,
)

ORIGINAL = """\
[server]
host = "0.0.0.0"
port = 7999
[[upstream]]
host = "127.0.0.1"
port = 45888
alive_timeout = 30
ready_timeout = 5
[management_server]
host = "0.0.0.0"
port = 8000
[management_server.tls]
cert_path = ""
key_path = ""
"""

MULTI_LISTENER = """\
[server]
host = "0.0.0.0"
port = 7999
framing = "line"
max_message_size = 1024
activity_window = 2.5
client_queue_size = 16
client_queue_bytes = 65536
client_queue_bytes_total = 0
upstream_queue_size = 32

[[listener]]
name = "binary"
host = "::"
port = 7998
framing = "length"

[[listener]]
name = "any-port"
port = 0

[[upstream]]
host = "10.0.0.1"
port = 50051
live_interval = 0.25
max_header_block = 16384
control_frame_burst = 50
control_frame_rate = 5.5
max_reply_size = 1048576

[[upstream]]
host = "::1"
port = 50051

[log]
level = "debug"
format = "json"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pmlb.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return info.value


def test_original_file_loads(tmp_path: Path) -> None:
    path = write(tmp_path, ORIGINAL)
    config = load_config(path)
    assert config.listeners == (
        ListenerConfig(name="default", host="0.0.0.0", port=7999, transport="tcp", framing="raw"),
    )
    assert config.listeners[0].address == "0.0.0.0:7999"
    assert config.upstreams == (
        UpstreamConfig(
            host="127.0.0.1", port=45888, alive_timeout=30.0, ready_timeout=5.0, live_interval=5.0
        ),
    )
    assert isinstance(config.upstreams[0].alive_timeout, float)
    assert isinstance(config.upstreams[0].ready_timeout, float)
    assert config.management == ManagementConfig(
        host="0.0.0.0", port=8000, tls=ManagementTLSConfig(cert_path="", key_path="")
    )
    assert config.log == LogConfig(level="info", format="text")
    assert config.source == str(path)


def test_empty_file_and_empty_data_give_safe_defaults(tmp_path: Path) -> None:
    from_file = load_config(write(tmp_path, ""))
    from_data = parse_config({})
    for config in (from_file, from_data):
        assert config == Config()
        (listener,) = config.listeners
        assert (listener.name, listener.address, listener.framing) == (
            "default",
            "127.0.0.1:7999",
            "raw",
        )
        assert listener.transport == "tcp"
        assert listener.max_message_size == 65536
        assert config.upstreams == ()
        assert (config.management.host, config.management.port) == ("127.0.0.1", 8000)
        assert config.management.tls is None
        assert (config.activity_window, config.client_queue_size) == (60.0, 1024)
        assert config.upstream_queue_size == 4096
    assert from_data.source == "<config>"


def test_a_listener_holds_its_framing_as_the_codecs_enum(tmp_path: Path) -> None:
    # Resolved once, in the config: the listeners never parse the name again.
    config = load_config(write(tmp_path, MULTI_LISTENER))
    assert [listener.framing for listener in config.listeners] == [
        Framing.LINE,
        Framing.LENGTH,
        Framing.RAW,
    ]
    assert all(type(listener.framing) is Framing for listener in config.listeners)
    assert ListenerConfig(framing="line").framing is Framing.LINE


def test_server_and_listener_tables_give_several_listeners(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MULTI_LISTENER))
    assert config.listeners == (
        ListenerConfig(host="0.0.0.0", port=7999, framing="line", max_message_size=1024),
        ListenerConfig(name="binary", host="::", port=7998, framing="length"),
        ListenerConfig(name="any-port", port=0),
    )
    assert [listener.address for listener in config.listeners] == [
        "0.0.0.0:7999",
        "[::]:7998",
        "127.0.0.1:0",
    ]
    assert config.upstreams[0] == UpstreamConfig(
        host="10.0.0.1",
        port=50051,
        live_interval=0.25,
        max_header_block=16384,
        control_frame_burst=50,
        control_frame_rate=5.5,
        max_reply_size=1048576,
    )
    assert config.upstreams[1].address == "[::1]:50051"
    assert (config.activity_window, config.client_queue_size, config.upstream_queue_size) == (
        2.5,
        16,
        32,
    )
    assert (config.client_queue_bytes, config.client_queue_bytes_total) == (65536, 0)
    assert config.log == LogConfig(level="debug", format="json")


def test_server_without_host_or_port_is_no_listener_when_listener_tables_exist(
    tmp_path: Path,
) -> None:
    config = load_config(
        write(
            tmp_path,
            """
            [server]
            activity_window = 5
            [[listener]]
            name = "a"
            port = 7001
            [[listener]]
            name = "b"
            port = 7002
            """,
        )
    )
    assert [(listener.name, listener.port) for listener in config.listeners] == [
        ("a", 7001),
        ("b", 7002),
    ]
    assert config.activity_window == 5.0


def test_port_zero_may_repeat(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            """
            [server]
            port = 0
            [[listener]]
            name = "other"
            port = 0
            """,
        )
    )
    assert [listener.port for listener in config.listeners] == [0, 0]


INVALID_FILES = [
    pytest.param(
        "[server]\nport = 70000",
        "pmlb.toml: server.port: must be an integer from 0 to 65535, got 70000",
        id="port-too-big",
    ),
    pytest.param(
        '[server]\nport = "80"',
        "pmlb.toml: server.port: must be an integer from 0 to 65535, got string '80'",
        id="port-string",
    ),
    pytest.param(
        "[server]\nport = true",
        "pmlb.toml: server.port: must be an integer from 0 to 65535, got boolean true",
        id="port-bool",
    ),
    pytest.param(
        "[server]\nhost = 5",
        "pmlb.toml: server.host: must be a string, got integer 5",
        id="host-integer",
    ),
    pytest.param(
        '[server]\nhost = ""',
        "pmlb.toml: server.host: must not be empty",
        id="host-empty",
    ),
    pytest.param(
        '[server]\nhost = "[::1]"',
        "pmlb.toml: server.host: must be written without brackets, got '[::1]'",
        id="host-brackets",
    ),
    pytest.param(
        '[server]\ncolour = "blue"',
        "pmlb.toml: server.colour: unknown key",
        id="server-unknown-key",
    ),
    pytest.param(
        'colour = "blue"',
        "pmlb.toml: colour: unknown key",
        id="top-level-unknown-key",
    ),
    pytest.param(
        '[[upstream]]\nhost = "h"\nport = 1\nevents = "yes"',
        "pmlb.toml: upstream[0].events: must be true or false, got string 'yes'",
        id="upstream-events-not-boolean",
    ),
    pytest.param(
        '[[upstream]]\nhost = "h"\nport = 1\nacks = 1',
        "pmlb.toml: upstream[0].acks: must be true or false, got integer 1",
        id="upstream-acks-not-boolean",
    ),
    pytest.param(
        '[[upstream]]\nhost = "h"\nport = 1\nmax_unacked = 0',
        "pmlb.toml: upstream[0].max_unacked: must be an integer >= 1, got 0",
        id="upstream-max-unacked-zero",
    ),
    pytest.param(
        '[[upstream]]\nhost = "h"\nport = 1\nack_timeout = -1',
        "pmlb.toml: upstream[0].ack_timeout: must be a number > 0, got -1",
        id="upstream-ack-timeout-negative",
    ),
    pytest.param(
        '[[upstream]]\nhost = "h"\nport = 1\nmax_deliveries = 2.5',
        "pmlb.toml: upstream[0].max_deliveries: must be an integer >= 1, got float 2.5",
        id="upstream-max-deliveries-float",
    ),
    pytest.param(
        '[[upstream]]\nhost = "h"\nport = 1\nhealth = "http"',
        "pmlb.toml: upstream[0].health: must be one of 'contract', 'grpc', got 'http'",
        id="upstream-health-unknown",
    ),
    pytest.param(
        '[[upstream]]\nhost = "h"\nport = 1\ndiscovery = "dns"\nnameserver = "ns.example"',
        "pmlb.toml: upstream[0].nameserver: must be an IP address, optionally with :PORT,"
        " got 'ns.example'",
        id="upstream-nameserver-not-ip",
    ),
    pytest.param(
        '[[upstream]]\nhost = "h"\nport = 1\ndiscovery = "srv"',
        "pmlb.toml: upstream[0].discovery: must be one of 'static', 'dns', got 'srv'",
        id="upstream-discovery-unknown",
    ),
    pytest.param(
        '[server]\nbalancing = "random"',
        "pmlb.toml: server.balancing: must be one of 'round_robin', 'sticky', 'hash',"
        " 'least_loaded', got 'random'",
        id="balancing-unknown",
    ),
    pytest.param(
        '[server]\ntransport = "udp"',
        "pmlb.toml: server.transport: must be one of 'tcp', 'tls', 'websocket', got 'udp'",
        id="transport-unknown",
    ),
    pytest.param(
        '[server]\ntransport = "websocket"\npath = "ws"',
        "pmlb.toml: server.path: must be a URL path starting with '/', got 'ws'",
        id="websocket-path-relative",
    ),
    pytest.param(
        '[server]\nwebsocket_reply = "utf8"',
        "pmlb.toml: server.websocket_reply: must be one of 'auto', 'text', 'binary', got 'utf8'",
        id="websocket-reply-unknown",
    ),
    pytest.param(
        '[server]\ntransport = "tls"\ntls_key = "k.pem"',
        'pmlb.toml: server.tls_cert: required when transport = "tls"',
        id="tls-listener-without-cert",
    ),
    pytest.param(
        '[server]\ntransport = "tls"\ntls_cert = "c.pem"',
        'pmlb.toml: server.tls_key: required when transport = "tls"',
        id="tls-listener-without-key",
    ),
    pytest.param(
        '[server]\ntls_client_ca = "ca.pem"',
        'pmlb.toml: server.tls_client_ca: only applies when transport = "tls" or "websocket"',
        id="tls-client-ca-without-tls",
    ),
    pytest.param(
        "[server]\ntls_cert = 1",
        "pmlb.toml: server.tls_cert: must be a string, got integer 1",
        id="tls-cert-integer",
    ),
    pytest.param(
        '[server]\nproxy_protocol = "yes"',
        "pmlb.toml: server.proxy_protocol: must be true or false, got string 'yes'",
        id="proxy-protocol-string",
    ),
    pytest.param(
        "[server]\nmax_clients = -1",
        "pmlb.toml: server.max_clients: must be an integer >= 0, got -1",
        id="max-clients-negative",
    ),
    pytest.param(
        "[server]\nmax_clients_total = 1.5",
        "pmlb.toml: server.max_clients_total: must be an integer >= 0, got float 1.5",
        id="max-clients-total-float",
    ),
    pytest.param(
        "[server]\naccept_rate = -5",
        "pmlb.toml: server.accept_rate: must be a number >= 0, got integer -5",
        id="accept-rate-negative",
    ),
    pytest.param(
        "[server]\nhandshake_timeout = 0",
        "pmlb.toml: server.handshake_timeout: must be a number > 0, got 0",
        id="handshake-timeout-zero",
    ),
    pytest.param(
        '[server]\nidle_timeout = "5m"',
        "pmlb.toml: server.idle_timeout: must be a number >= 0, got string '5m'",
        id="idle-timeout-string",
    ),
    pytest.param(
        '[server]\nslow_client_policy = "block"',
        "pmlb.toml: server.slow_client_policy: must be one of 'disconnect', 'drop_oldest',"
        " got 'block'",
        id="slow-client-policy-unknown",
    ),
    pytest.param(
        "[server]\nslow_client_timeout = nan",
        "pmlb.toml: server.slow_client_timeout: must be a number >= 0, got float nan",
        id="slow-client-timeout-nan",
    ),
    pytest.param(
        "[server]\ndrain_period = -1",
        "pmlb.toml: server.drain_period: must be a number >= 0, got integer -1",
        id="drain-period-negative",
    ),
    pytest.param(
        "[server]\nclient_fin_timeout = -0.5",
        "pmlb.toml: server.client_fin_timeout: must be a number >= 0, got float -0.5",
        id="client-fin-timeout-negative",
    ),
    pytest.param(
        '[server]\ndrain_upstream_wait = "5s"',
        "pmlb.toml: server.drain_upstream_wait: must be a number >= 0, got string '5s'",
        id="drain-upstream-wait-string",
    ),
    pytest.param(
        "[server]\ndrain_timeout = 0",
        "pmlb.toml: server.drain_timeout: must be a number > 0, got 0",
        id="drain-timeout-zero",
    ),
    pytest.param(
        '[[listener]]\nname = "a"\nmax_clients = 3\n[server]\nmax_clients = 4',
        "pmlb.toml: server.max_clients: only applies when [server] sets host or port",
        id="server-max-clients-without-listener",
    ),
    pytest.param(
        '[[upstream]]\nhost = "a"\nport = 1\ntls = "true"',
        "pmlb.toml: upstream[0].tls: must be true or false, got string 'true'",
        id="upstream-tls-string",
    ),
    pytest.param(
        '[[upstream]]\nhost = "a"\nport = 1\ntls_ca = "ca.pem"',
        "pmlb.toml: upstream[0].tls_ca: only applies when tls = true",
        id="upstream-tls-ca-without-tls",
    ),
    pytest.param(
        '[[upstream]]\nhost = "a"\nport = 1\ntls = true\ntls_cert = "c.pem"',
        "pmlb.toml: upstream[0].tls_key: must be set when tls_cert is set",
        id="upstream-tls-cert-without-key",
    ),
    pytest.param(
        '[[upstream]]\nhost = "a"\nport = 1\ntls = true\ntls_key = "k.pem"',
        "pmlb.toml: upstream[0].tls_cert: must be set when tls_key is set",
        id="upstream-tls-key-without-cert",
    ),
    pytest.param(
        '[[upstream]]\nhost = "a"\nport = 1\ntls = true\ntls_server_name = 7',
        "pmlb.toml: upstream[0].tls_server_name: must be a string, got integer 7",
        id="upstream-tls-server-name-integer",
    ),
    pytest.param(
        '[[listener]]\nname = "a"\nframing = "lines"',
        "pmlb.toml: listener[0].framing: must be one of 'raw', 'line', 'length', got 'lines'",
        id="framing-unknown",
    ),
    pytest.param(
        "[server]\nmax_message_size = 0",
        "pmlb.toml: server.max_message_size: must be an integer from 1 to 67108864, got 0",
        id="max-message-size-zero",
    ),
    pytest.param(
        "[server]\nmax_message_size = 67108865",
        "pmlb.toml: server.max_message_size: must be an integer from 1 to 67108864, got 67108865",
        id="max-message-size-too-big",
    ),
    pytest.param(
        "[server]\nactivity_window = 0",
        "pmlb.toml: server.activity_window: must be a number > 0, got 0",
        id="activity-window-zero",
    ),
    pytest.param(
        "[server]\nactivity_window = true",
        "pmlb.toml: server.activity_window: must be a number > 0, got boolean true",
        id="activity-window-bool",
    ),
    pytest.param(
        "[server]\nclient_queue_size = 0",
        "pmlb.toml: server.client_queue_size: must be an integer >= 1, got 0",
        id="client-queue-size-zero",
    ),
    pytest.param(
        "[server]\nclient_queue_bytes = -1",
        "pmlb.toml: server.client_queue_bytes: must be an integer >= 0, got -1",
        id="client-queue-bytes-negative",
    ),
    pytest.param(
        '[[upstream]]\nhost = "a"\nport = 1\nmax_header_block = 10',
        "pmlb.toml: upstream[0].max_header_block: must be an integer from 1024 to 16777216, got 10",
        id="max-header-block-small",
    ),
    pytest.param(
        '[[upstream]]\nhost = "a"\nport = 1\ncontrol_frame_rate = 0',
        "pmlb.toml: upstream[0].control_frame_rate: must be a number > 0, got 0",
        id="control-frame-rate-zero",
    ),
    pytest.param(
        '[[upstream]]\nhost = "a"\nport = 1\ncontrol_frame_burst = 0',
        "pmlb.toml: upstream[0].control_frame_burst: must be an integer >= 1, got 0",
        id="control-frame-burst-zero",
    ),
    pytest.param(
        '[[upstream]]\nhost = "a"\nport = 1\nmax_reply_size = 1.5',
        "pmlb.toml: upstream[0].max_reply_size: must be an integer from 1024 to 2147483647,"
        " got float 1.5",
        id="max-reply-size-float",
    ),
    pytest.param(
        '[server]\nclient_queue_bytes_total = "256MiB"',
        "pmlb.toml: server.client_queue_bytes_total: must be an integer >= 0, got string '256MiB'",
        id="client-queue-bytes-total-string",
    ),
    pytest.param(
        "[server]\nupstream_queue_size = 1.5",
        "pmlb.toml: server.upstream_queue_size: must be an integer >= 1, got float 1.5",
        id="upstream-queue-size-float",
    ),
    pytest.param(
        '[[upstream]]\nhost = "a"\nport = 1\n[[upstream]]\nhost = "b"\nport = 1\n'
        "ready_timeout = -1",
        "pmlb.toml: upstream[1].ready_timeout: must be a number > 0, got -1",
        id="ready-timeout-negative",
    ),
    pytest.param(
        '[[upstream]]\nhost = "a"\nport = 1\nready_timeout = "5"',
        "pmlb.toml: upstream[0].ready_timeout: must be a number > 0, got string '5'",
        id="ready-timeout-string",
    ),
    pytest.param(
        '[[upstream]]\nhost = "a"\nport = 1\nalive_timeout = inf',
        "pmlb.toml: upstream[0].alive_timeout: must be a finite number > 0, got inf",
        id="alive-timeout-inf",
    ),
    pytest.param(
        '[[upstream]]\nhost = "a"\nport = 1\nstall_timeout = 0',
        "pmlb.toml: upstream[0].stall_timeout: must be a number > 0, got 0",
        id="stall-timeout-zero",
    ),
    pytest.param(
        '[[upstream]]\nhost = "a"\nport = 1\nlive_interval = 1979-05-27',
        "pmlb.toml: upstream[0].live_interval: must be a number > 0, got date/time 1979-05-27",
        id="live-interval-date",
    ),
    pytest.param(
        '[[upstream]]\nhost = "a"\nport = 1\ntransport = "grpcio"',
        "pmlb.toml: upstream[0].transport: must be one of 'native', 'grpclib', got 'grpcio'",
        id="upstream-transport-unknown",
    ),
    pytest.param(
        '[[upstream]]\nhost = "Example.com"\nport = 1\n'
        '[[upstream]]\nhost = "example.com"\nport = 1',
        "pmlb.toml: upstream[1].port: address example.com:1 is already used by upstream[0]",
        id="upstream-duplicate-host-in-other-case",
    ),
    pytest.param(
        "[server]\nhost = [1]",
        "pmlb.toml: server.host: must be a string, got an array",
        id="host-array",
    ),
    pytest.param(
        "[[log.level]]\nname = 1",
        "pmlb.toml: log.level: must be one of 'debug', 'info', 'warning', 'error',"
        " got an array of tables",
        id="log-level-array-of-tables",
    ),
    pytest.param(
        "[[upstream]]\nport = 1",
        "pmlb.toml: upstream[0].host: required, but missing",
        id="upstream-host-missing",
    ),
    pytest.param(
        '[[upstream]]\nhost = "a"',
        "pmlb.toml: upstream[0].port: required, but missing",
        id="upstream-port-missing",
    ),
    pytest.param(
        '[[upstream]]\nhost = "a"\nport = 0',
        "pmlb.toml: upstream[0].port: must be an integer from 1 to 65535, got 0",
        id="upstream-port-zero",
    ),
    pytest.param(
        '[[upstream]]\nhost = "127.0.0.1"\nport = 45888\n'
        '[[upstream]]\nhost = "127.0.0.1"\nport = 45888',
        "pmlb.toml: upstream[1].port: address 127.0.0.1:45888 is already used by upstream[0]",
        id="upstream-duplicate",
    ),
    pytest.param(
        '[[upstream]]\nhost = "a"\nport = 1\nweight = 2',
        "pmlb.toml: upstream[0].weight: unknown key",
        id="upstream-unknown-key",
    ),
    pytest.param(
        '[upstream]\nhost = "a"\nport = 1',
        "pmlb.toml: upstream: must be an array of tables ([[upstream]]), got a table ([upstream])",
        id="upstream-table-not-array",
    ),
    pytest.param(
        "upstream = [1]",
        "pmlb.toml: upstream[0]: must be a table, got integer 1",
        id="upstream-array-of-integers",
    ),
    pytest.param(
        '[[server]]\nhost = "a"',
        "pmlb.toml: server: must be a table ([server]), got an array of tables ([[server]])",
        id="server-array-not-table",
    ),
    pytest.param(
        "server = 5",
        "pmlb.toml: server: must be a table, got integer 5",
        id="server-integer",
    ),
    pytest.param(
        "[[listener]]\nport = 7001",
        "pmlb.toml: listener[0].name: required, but missing",
        id="listener-name-missing",
    ),
    pytest.param(
        '[[listener]]\nname = "a"\nport = 7001\n[[listener]]\nname = "a"\nport = 7002',
        "pmlb.toml: listener[1].name: listener name 'a' is already used by listener[0]",
        id="listener-name-duplicate",
    ),
    pytest.param(
        '[server]\nport = 7000\n[[listener]]\nname = "default"\nport = 7001',
        "pmlb.toml: listener[0].name: listener name 'default' is already used by server",
        id="listener-name-same-as-server-default",
    ),
    pytest.param(
        '[[listener]]\nname = "a"\nhost = "0.0.0.0"\nport = 7001\n'
        '[[listener]]\nname = "b"\nhost = "0.0.0.0"\nport = 7001',
        "pmlb.toml: listener[1].port: address 0.0.0.0:7001 is already used by listener[0]",
        id="listener-address-duplicate",
    ),
    pytest.param(
        '[server]\nport = 7001\n[[listener]]\nname = "a"\nhost = "127.0.0.1"\nport = 7001',
        "pmlb.toml: listener[0].port: address 127.0.0.1:7001 is already used by server",
        id="listener-address-same-as-server",
    ),
    pytest.param(
        '[server]\nframing = "line"\n[[listener]]\nname = "a"',
        "pmlb.toml: server.framing: only applies when [server] sets host or port",
        id="server-listener-key-without-address",
    ),
    pytest.param(
        "[management_server]\nport = -1",
        "pmlb.toml: management_server.port: must be an integer from 0 to 65535, got -1",
        id="management-port-negative",
    ),
    pytest.param(
        '[management_server.tls]\nca_path = "x"',
        "pmlb.toml: management_server.tls.ca_path: unknown key",
        id="tls-unknown-key",
    ),
    pytest.param(
        '[management_server.tls]\ncert_path = "cert.pem"',
        "pmlb.toml: management_server.tls.key_path: must be set when cert_path is set",
        id="tls-cert-without-key",
    ),
    pytest.param(
        '[management_server]\ntls = "yes"',
        "pmlb.toml: management_server.tls: must be a table, got string 'yes'",
        id="tls-string",
    ),
    pytest.param(
        '[log]\nlevel = "verbose"',
        "pmlb.toml: log.level: must be one of 'debug', 'info', 'warning', 'error', got 'verbose'",
        id="log-level-unknown",
    ),
    pytest.param(
        "[log]\nformat = 1",
        "pmlb.toml: log.format: must be one of 'text', 'json', got integer 1",
        id="log-format-integer",
    ),
    pytest.param(
        '[[listener]]\nname = "a"\ncolour = "blue"',
        "pmlb.toml: listener[0].colour: unknown key",
        id="listener-unknown-key",
    ),
    pytest.param(
        '[listener]\nname = "a"',
        "pmlb.toml: listener: must be an array of tables ([[listener]]), got a table ([listener])",
        id="listener-table-not-array",
    ),
    pytest.param(
        '[[listener]]\nname = ""',
        "pmlb.toml: listener[0].name: must not be empty",
        id="listener-name-empty",
    ),
    pytest.param(
        '[[listener]]\nname = "a"\nping_interval = 0',
        "pmlb.toml: listener[0].ping_interval: must be a number > 0, got 0",
        id="listener-ping-interval-zero",
    ),
    pytest.param(
        '[[upstream]]\nhost = "h"\nport = 1\nresolve_interval = 0',
        "pmlb.toml: upstream[0].resolve_interval: must be a number > 0, got 0",
        id="upstream-resolve-interval-zero",
    ),
    pytest.param(
        '[[upstream]]\nhost = "h"\nport = 1\nhealth_service = 1',
        "pmlb.toml: upstream[0].health_service: must be a string, got integer 1",
        id="upstream-health-service-integer",
    ),
    pytest.param(
        '[management_server]\ncolour = "blue"',
        "pmlb.toml: management_server.colour: unknown key",
        id="management-unknown-key",
    ),
    pytest.param(
        "management_server = 1",
        "pmlb.toml: management_server: must be a table, got integer 1",
        id="management-not-a-table",
    ),
    pytest.param(
        '[management_server]\nhost = ""',
        "pmlb.toml: management_server.host: must not be empty",
        id="management-host-empty",
    ),
    pytest.param(
        '[management_server]\nenabled = "no"',
        "pmlb.toml: management_server.enabled: must be true or false, got string 'no'",
        id="management-enabled-string",
    ),
    pytest.param(
        '[management_server]\ntoken = "a b"',
        "pmlb.toml: management_server.token: must be printable ASCII without spaces",
        id="management-token-with-space",
    ),
    pytest.param(
        '[management_server]\nallowed_hosts = "pmlb.internal"',
        "pmlb.toml: management_server.allowed_hosts: must be an array of strings,"
        " got string 'pmlb.internal'",
        id="management-allowed-hosts-not-an-array",
    ),
    pytest.param(
        '[management_server]\nallowed_hosts = ["ok.internal", "not a host"]',
        "pmlb.toml: management_server.allowed_hosts: item 1: must be an IP address or a host name",
        id="management-allowed-hosts-bad-name",
    ),
    pytest.param(
        '[management_server]\nallowed_origins = ["https://ops.example.com/dash"]',
        "pmlb.toml: management_server.allowed_origins: item 0: must be a web origin,"
        " scheme://host[:port] with scheme http or https and no path,"
        " got 'https://ops.example.com/dash'",
        id="management-allowed-origin-with-path",
    ),
    pytest.param(
        '[management_server.tls]\nkey_path = "key.pem"',
        "pmlb.toml: management_server.tls.cert_path: must be set when key_path is set",
        id="tls-key-without-cert",
    ),
    pytest.param(
        '[log]\ncolour = "blue"',
        "pmlb.toml: log.colour: unknown key",
        id="log-unknown-key",
    ),
    pytest.param(
        'log = "debug"',
        "pmlb.toml: log: must be a table, got string 'debug'",
        id="log-not-a-table",
    ),
    pytest.param(
        '[cluster]\nredis_url = "http://127.0.0.1:6379"',
        "pmlb.toml: cluster.redis_url: must start with redis://, rediss:// or unix://, got http://",
        id="cluster-url-scheme",
    ),
    pytest.param(
        '[cluster]\nredis_url = "127.0.0.1:6379"',
        "pmlb.toml: cluster.redis_url: must start with redis://, rediss:// or unix://",
        id="cluster-url-no-scheme",
    ),
    pytest.param(
        '[cluster]\nredis_url = "redis://:6379/0"',
        "pmlb.toml: cluster.redis_url: redis:// needs a host",
        id="cluster-url-no-host",
    ),
    pytest.param(
        '[cluster]\nredis_url = "redis://127.0.0.1:99999/0"',
        "pmlb.toml: cluster.redis_url: bad port: Port out of range 0-65535",
        id="cluster-url-bad-port",
    ),
    pytest.param(
        '[cluster]\nredis_url = "redis://127.0.0.1/x"',
        "pmlb.toml: cluster.redis_url: the database must be a number, got 'x'",
        id="cluster-url-bad-db",
    ),
    pytest.param(
        '[cluster]\nredis_url = "unix://"',
        "pmlb.toml: cluster.redis_url: unix:// needs the socket's path",
        id="cluster-url-unix-no-path",
    ),
    pytest.param(
        '[cluster]\nnode = "a b"',
        "pmlb.toml: cluster.node: must be 1 to 100 letters, digits",
        id="cluster-node-bad-name",
    ),
    pytest.param(
        "[cluster]\nheartbeat_interval = 0",
        "pmlb.toml: cluster.heartbeat_interval: must be a number > 0, got 0",
        id="cluster-heartbeat-zero",
    ),
    pytest.param(
        "[cluster]\nheartbeat_interval = 5\nnode_timeout = 5",
        "pmlb.toml: cluster.node_timeout: must be more than heartbeat_interval (5), got 5",
        id="cluster-timeout-not-above-heartbeat",
    ),
    pytest.param(
        "[cluster]\nnodes = 3",
        "pmlb.toml: cluster.nodes: unknown key",
        id="cluster-unknown-key",
    ),
    pytest.param(
        '[[upstream]]\nhost = "a"\nport = 1\nreply_scope = "global"',
        "pmlb.toml: upstream[0].reply_scope: must be one of 'local', 'cluster', got 'global'",
        id="upstream-reply-scope",
    ),
]


@pytest.mark.parametrize(("text", "expected"), INVALID_FILES)
def test_invalid_file_reports_its_one_problem(tmp_path: Path, text: str, expected: str) -> None:
    error = load_error(tmp_path, text)
    # Exactly one problem: a bad value must not cause follow-on noise.
    assert len(error.problems) == 1, error.problems
    assert expected in error.problems[0]
    assert error.problems[0].startswith(f"{tmp_path / 'pmlb.toml'}: ")


def test_every_problem_is_reported(tmp_path: Path) -> None:
    error = load_error(
        tmp_path,
        """\
[server]
port = 70000
colour = "blue"
[[upstream]]
host = ""
port = 1
ready_timeout = 0
[log]
level = "loud"
""",
    )
    source = str(tmp_path / "pmlb.toml")
    assert error.problems == (
        f"{source}: server.port: must be an integer from 0 to 65535, got 70000",
        f"{source}: server.colour: unknown key",
        f"{source}: upstream[0].host: must not be empty",
        f"{source}: upstream[0].ready_timeout: must be a number > 0, got 0",
        f"{source}: log.level: must be one of 'debug', 'info', 'warning', 'error', got 'loud'",
    )
    assert str(error) == "\n".join(error.problems)


def test_bad_values_cause_no_follow_on_problems(tmp_path: Path) -> None:
    # The defaults standing in for missing or bad values must not look like
    # duplicates of each other.
    error = load_error(
        tmp_path,
        """\
[[listener]]
port = 7001
[[listener]]
port = 7002
[[listener]]
name = "a"
port = "x"
[[listener]]
name = "b"
port = "x"
""",
    )
    assert [problem.split(": ", 2)[1:] for problem in error.problems] == [
        ["listener[0].name", "required, but missing"],
        ["listener[1].name", "required, but missing"],
        ["listener[2].port", "must be an integer from 0 to 65535, got string 'x'"],
        ["listener[3].port", "must be an integer from 0 to 65535, got string 'x'"],
    ]


def test_unknown_keys_are_reported_at_every_level(tmp_path: Path) -> None:
    error = load_error(
        tmp_path,
        """\
colour = 1
[server]
colour = 2
[[upstream]]
host = "a"
port = 1
colour = 3
[management_server]
colour = 4
[management_server.tls]
colour = 5
[log]
colour = 6
""",
    )
    keys = [problem.split(": ")[1] for problem in error.problems]
    assert keys == [
        "colour",
        "server.colour",
        "upstream[0].colour",
        "management_server.colour",
        "management_server.tls.colour",
        "log.colour",
    ]
    assert all(problem.endswith(": unknown key") for problem in error.problems)


def test_parse_config_names_its_source() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"server": {"port": 70000}}, source="env")
    assert info.value.problems == (
        "env: server.port: must be an integer from 0 to 65535, got 70000",
    )


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == (f"{path}: cannot read: No such file or directory",)


def test_toml_syntax_error_gives_the_line(tmp_path: Path) -> None:
    error = load_error(tmp_path, '[server]\nhost = "a"\nport = \n')
    assert error.problems == (f"{tmp_path / 'pmlb.toml'}: line 3: Invalid value (column 8)",)


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "pmlb.toml"
    path.write_bytes(b'[server]\nhost = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == (f"{path}: cannot read: not UTF-8 text (bad byte at offset 17)",)


def test_config_error_survives_pickling() -> None:
    error = ConfigError(["a: b: c", "a: d: e"])
    copy = pickle.loads(pickle.dumps(error))
    assert copy.problems == error.problems
    assert str(copy) == "a: b: c\na: d: e"


def test_addresses_bracket_ipv6_hosts() -> None:
    assert ListenerConfig(host="::1", port=1).address == "[::1]:1"
    assert UpstreamConfig(host="fe80::1%eth0", port=2).address == "[fe80::1%eth0]:2"
    assert UpstreamConfig(host="example.com", port=3).address == "example.com:3"


def test_source_does_not_affect_equality() -> None:
    assert parse_config({}, source="a.toml") == parse_config({}, source="b.toml")


# Command-line overrides


def test_no_overrides_change_nothing() -> None:
    config = parse_config(tomllib.loads(MULTI_LISTENER))
    assert apply_overrides(config) == config


def test_listener_overrides_apply_to_the_first_listener() -> None:
    config = parse_config(tomllib.loads(MULTI_LISTENER))
    changed = apply_overrides(
        config, host="10.1.1.1", port=9000, framing="length", max_message_size=99
    )
    assert changed.listeners[0] == ListenerConfig(
        host="10.1.1.1", port=9000, framing="length", max_message_size=99
    )
    assert changed.listeners[1:] == config.listeners[1:]
    assert changed.upstreams == config.upstreams


@pytest.mark.parametrize(
    ("flag", "value", "field"),
    [
        pytest.param("host", "::", "host", id="host"),
        pytest.param("port", 0, "port", id="port"),
        pytest.param("framing", "line", "framing", id="framing"),
        pytest.param("max_message_size", 10, "max_message_size", id="max-message-size"),
    ],
)
def test_each_listener_flag(flag: str, value: object, field: str) -> None:
    changed = apply_overrides(Config(), **{flag: value})  # type: ignore[arg-type]
    assert getattr(changed.listeners[0], field) == value
    others = {"host", "port", "framing", "max_message_size"} - {field}
    for other in others:
        assert getattr(changed.listeners[0], other) == getattr(ListenerConfig(), other)


def test_activity_window_and_log_flags() -> None:
    changed = apply_overrides(Config(), activity_window=3, log_level="warning", log_format="json")
    assert changed.activity_window == 3.0
    assert isinstance(changed.activity_window, float)
    assert changed.log == LogConfig(level="warning", format="json")
    assert apply_overrides(Config(), log_level="error").log == LogConfig(level="error")


def test_upstream_flags_replace_the_files_upstreams() -> None:
    config = parse_config(
        {"upstream": [{"host": "old", "port": 1, "ready_timeout": 9, "alive_timeout": 9}]}
    )
    changed = apply_overrides(config, upstreams=["example.com:50051", "[::1]:50052"])
    assert changed.upstreams == (
        UpstreamConfig(host="example.com", port=50051),
        UpstreamConfig(host="::1", port=50052),
    )
    assert apply_overrides(config, upstreams=[]).upstreams == ()
    assert apply_overrides(config, upstreams="a:1").upstreams == (UpstreamConfig(host="a", port=1),)


def test_upstream_transport_in_the_file_and_as_a_flag() -> None:
    config = parse_config({"upstream": [{"host": "a", "port": 1, "transport": "grpclib"}]})
    assert config.upstreams[0].transport == "grpclib"
    assert UpstreamConfig(host="a", port=1).transport == "native"
    changed = apply_overrides(config, upstream_transport="native")
    assert changed.upstreams == (UpstreamConfig(host="a", port=1, transport="native"),)
    both = apply_overrides(config, upstreams=["b:2"], upstream_transport="grpclib")
    assert both.upstreams == (UpstreamConfig(host="b", port=2, transport="grpclib"),)
    with pytest.raises(ConfigError, match="--upstream-transport: must be one of"):
        apply_overrides(config, upstream_transport="h3")


def test_overrides_keep_the_source() -> None:
    config = parse_config({}, source="pmlb.toml")
    assert apply_overrides(config, port=1).source == "pmlb.toml"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        pytest.param(
            {"upstreams": ["x"]},
            "command line: --upstream: expected HOST:PORT, got 'x'",
            id="upstream-no-port",
        ),
        pytest.param(
            {"upstreams": ["a:b"]},
            "command line: --upstream: expected HOST:PORT, got 'a:b'",
            id="upstream-port-not-number",
        ),
        pytest.param(
            {"upstreams": [":80"]},
            "command line: --upstream: expected HOST:PORT, got ':80'",
            id="upstream-no-host",
        ),
        pytest.param(
            {"upstreams": ["::1:80"]},
            "command line: --upstream: expected HOST:PORT, got '::1:80'"
            " (write an IPv6 address as [ADDRESS]:PORT)",
            id="upstream-unbracketed-ipv6",
        ),
        pytest.param(
            {"upstreams": ["a:70000"]},
            "command line: --upstream: expected HOST:PORT, got 'a:70000':"
            " must be an integer from 1 to 65535, got 70000",
            id="upstream-port-too-big",
        ),
        pytest.param(
            {"upstreams": ["a:1", "a:1"]},
            "command line: --upstream: a:1 is given twice",
            id="upstream-twice",
        ),
        pytest.param(
            {"host": ""},
            "command line: --host: must not be empty",
            id="host-empty",
        ),
        pytest.param(
            {"port": 70000},
            "command line: --port: must be an integer from 0 to 65535, got 70000",
            id="port-too-big",
        ),
        pytest.param(
            {"framing": "lines"},
            "command line: --framing: must be one of 'raw', 'line', 'length', got 'lines'",
            id="framing-unknown",
        ),
        pytest.param(
            {"max_message_size": 0},
            "command line: --max-message-size: must be an integer from 1 to 67108864, got 0",
            id="max-message-size-zero",
        ),
        pytest.param(
            {"activity_window": -1.5},
            "command line: --activity-window: must be a number > 0, got -1.5",
            id="activity-window-negative",
        ),
        pytest.param(
            {"log_level": "DEBUG"},
            "command line: --log-level: must be one of 'debug', 'info', 'warning', 'error',"
            " got 'DEBUG'",
            id="log-level-unknown",
        ),
        pytest.param(
            {"log_format": "xml"},
            "command line: --log-format: must be one of 'text', 'json', got 'xml'",
            id="log-format-unknown",
        ),
        pytest.param(
            {"port": 7998, "host": "::"},
            "command line: --port: address [::]:7998 is already used by listener 'binary'",
            id="port-used-by-another-listener",
        ),
    ],
)
def test_bad_override(overrides: dict[str, object], expected: str) -> None:
    config = parse_config(tomllib.loads(MULTI_LISTENER))
    with pytest.raises(ConfigError) as info:
        apply_overrides(config, **overrides)  # type: ignore[arg-type]
    assert info.value.problems == (expected,)


def test_every_bad_override_is_reported() -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides(Config(), port=-1, upstreams=["x", "y:1"], log_format="xml")
    assert [problem.split(": ")[1] for problem in info.value.problems] == [
        "--port",
        "--log-format",
        "--upstream",
    ]


# Rendering


def test_cluster_table_and_reply_scope(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            '[cluster]\nredis_url = "unix:///run/redis.sock?db=2"\nnode = "n-1"\n'
            "heartbeat_interval = 1\nnode_timeout = 3\n"
            '[[upstream]]\nhost = "127.0.0.1"\nport = 1\nreply_scope = "cluster"\n',
        )
    )
    assert config.cluster == ClusterConfig(
        redis_url="unix:///run/redis.sock?db=2", node="n-1", heartbeat_interval=1, node_timeout=3
    )
    assert config.cluster.enabled
    assert config.upstreams[0].reply_scope == "cluster"
    assert round_trip(config) == config
    assert not Config().cluster.enabled
    assert UpstreamConfig(host="a", port=1).reply_scope == "local"


def test_cluster_redis_flag() -> None:
    config = apply_overrides(Config(), cluster_redis="redis://:secret@10.0.0.1:6380/1")
    assert config.cluster.redis_url == "redis://:secret@10.0.0.1:6380/1"
    with pytest.raises(ConfigError) as error:
        apply_overrides(Config(), cluster_redis="redis//oops")
    assert error.value.problems == (
        "command line: --cluster-redis: must start with redis://, rediss:// or unix://,"
        " got no scheme",
    )


def round_trip(config: Config) -> Config:
    return parse_config(tomllib.loads(render_config(config)))


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(ORIGINAL, id="original"),
        pytest.param(MULTI_LISTENER, id="multi-listener"),
        pytest.param("", id="empty"),
    ],
)
def test_render_round_trips_a_loaded_file(tmp_path: Path, text: str) -> None:
    config = load_config(write(tmp_path, text))
    assert round_trip(config) == config


def test_ack_settings_load_and_render() -> None:
    config = parse_config(
        tomllib.loads(
            '[[upstream]]\nhost = "h"\nport = 1\nacks = true\nmax_unacked = 7\n'
            "ack_timeout = 2.5\nmax_deliveries = 3\n"
            '[[upstream]]\nhost = "h"\nport = 2\n'
        )
    )
    acked, plain = config.upstreams
    assert (acked.acks, acked.max_unacked, acked.ack_timeout, acked.max_deliveries) == (
        True,
        7,
        2.5,
        3,
    )
    assert (plain.acks, plain.max_unacked, plain.ack_timeout, plain.max_deliveries) == (
        False,
        10_000,
        30.0,
        5,
    )
    text = render_config(config)
    assert "acks = true" in text
    assert "max_deliveries = 3" in text
    assert round_trip(config) == config


def test_render_round_trips_awkward_values() -> None:
    config = Config(
        listeners=(
            ListenerConfig(name='quote " back\\slash\ttab\nnewline \x01 \x7f é', port=1),
            ListenerConfig(name="second", host="::1", port=2, max_message_size=1),
        ),
        upstreams=(UpstreamConfig(host="h", port=3, ready_timeout=1e-05, alive_timeout=1e16),),
        activity_window=0.1,
        management=ManagementConfig(
            tls=ManagementTLSConfig(cert_path="C:\\certs\\a.pem", key_path="k.pem"),
            allowed_hosts=("pmlb.internal", "10.0.0.1"),
            allowed_origins=("https://ops.example.com", "http://[::1]:8000"),
        ),
    )
    assert round_trip(config) == config


def test_render_without_tls_stays_without_tls() -> None:
    config = Config()
    assert "tls" not in render_config(config)
    assert round_trip(config).management.tls is None


def test_render_names_the_source_in_a_comment() -> None:
    text = render_config(parse_config({}, source='odd\n"name'))
    assert text.splitlines()[0] == '# pmlb configuration, loaded from "odd\\n\\"name"'


def test_the_default_drain_ends_well_within_kubernetes_default_grace_period() -> None:
    # SIGKILL follows SIGTERM after terminationGracePeriodSeconds, 30 by
    # default; the README asks for drain_timeout + 10 s at least.
    config = Config()
    assert config.drain_timeout + 10 <= 30
    assert config.drain_upstream_wait < config.drain_timeout


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "[server]\nmax_mesage_size = 1",
            "server.max_mesage_size: unknown key (did you mean 'max_message_size'?)",
        ),
        (
            "[[upstream]]\nhost = 'h'\nport = 1\nevent = true",
            "upstream[0].event: unknown key (did you mean 'events'?)",
        ),
        (
            "[managment_server]\nport = 1",
            "managment_server: unknown key (did you mean 'management_server'?)",
        ),
        ("[server]\ncolour = 1", "server.colour: unknown key"),
    ],
)
def test_an_unknown_key_names_the_closest_known_one(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(tomllib.loads(text), "pmlb.toml")
    assert info.value.problems == (f"pmlb.toml: {problem}",)


def test_stall_timeout_is_read_and_shown_by_check_config() -> None:
    config = parse_config(
        tomllib.loads('[[upstream]]\nhost = "a"\nport = 1\nstall_timeout = 2.5'),
        source="pmlb.toml",
    )
    assert config.upstreams[0].stall_timeout == 2.5
    assert "stall_timeout = 2.5" in render_config(config)
    assert UpstreamConfig(host="a", port=1).stall_timeout == 10.0
    assert "stall_timeout" not in render_config(
        Config(upstreams=(UpstreamConfig(host="a", port=1),))
    )
