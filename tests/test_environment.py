"""Configuration from environment variables: file < environment < flags, the file's checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from pmlb.config import Config, ConfigError, checks, load_with_environment, read_environment
from pmlb.config.environment import _SECTIONS


def load(environ: dict[str, str], text: str | None = None, tmp_path: Path | None = None) -> Config:
    path = None
    if text is not None:
        assert tmp_path is not None
        file = tmp_path / "pmlb.toml"
        file.write_text(text)
        path = str(file)
    return load_with_environment(path, environ)


def problems(
    environ: dict[str, str], text: str | None = None, tmp_path: Path | None = None
) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(environ, text, tmp_path)
    return list(caught.value.problems)


def test_the_environment_overrides_the_file(tmp_path: Path) -> None:
    file = '[server]\nhost = "127.0.0.1"\nport = 7000\nmax_clients_total = 5\n'
    config = load(
        {"PMLB_SERVER_PORT": "7001", "PMLB_LOG_LEVEL": "debug", "PMLB_ADMIN_TOKEN": "s3cret"},
        file,
        tmp_path,
    )
    assert config.listeners[0].port == 7001
    assert config.max_clients_total == 5  # from the file, untouched
    assert config.log.level == "debug"
    assert config.management.token == "s3cret"
    assert config.source == str(tmp_path / "pmlb.toml")


def test_values_are_read_as_the_key_expects() -> None:
    config = load(
        {
            "PMLB_SERVER_MAX_CLIENTS_TOTAL": "10000",
            "PMLB_SERVER_ACTIVITY_WINDOW": "2.5",
            "PMLB_SERVER_DRAIN_TIMEOUT": "25",
            "PMLB_SERVER_PROXY_PROTOCOL": "yes",
            "PMLB_ADMIN_PUBLIC_METRICS": "TRUE",
            "PMLB_ADMIN_ENABLED": "off",
            "PMLB_ADMIN_ALLOWED_HOSTS": "pmlb.internal, pmlb.example.com",
            "PMLB_ADMIN_TLS_CERT_PATH": "admin.pem",
            "PMLB_ADMIN_TLS_KEY_PATH": "admin.key",
            "PMLB_CLUSTER_REDIS_URL": "redis://127.0.0.1:6379/1",
        }
    )
    assert config.max_clients_total == 10000
    assert config.activity_window == 2.5
    assert config.drain_timeout == 25.0
    assert config.listeners[0].proxy_protocol is True
    assert config.management.public_metrics is True
    assert config.management.enabled is False
    assert config.management.allowed_hosts == ("pmlb.internal", "pmlb.example.com")
    assert config.management.tls is not None
    assert config.management.tls.cert_path == "admin.pem"
    assert config.cluster.redis_url == "redis://127.0.0.1:6379/1"


def test_pmlb_upstreams_replaces_the_file_s_and_upstream_keys_apply_to_each(
    tmp_path: Path,
) -> None:
    file = '[[upstream]]\nhost = "10.0.0.9"\nport = 45888\n'
    config = load(
        {"PMLB_UPSTREAMS": "127.0.0.1:5001, [::1]:5002", "PMLB_UPSTREAM_EVENTS": "true"},
        file,
        tmp_path,
    )
    assert [(u.host, u.port, u.events) for u in config.upstreams] == [
        ("127.0.0.1", 5001, True),
        ("::1", 5002, True),
    ]
    # Without PMLB_UPSTREAMS, the file's upstreams get the key.
    config = load({"PMLB_UPSTREAM_TRANSPORT": "grpclib"}, file, tmp_path)
    assert [u.transport for u in config.upstreams] == ["grpclib"]


def test_a_bad_value_names_its_variable() -> None:
    found = problems({"PMLB_SERVER_PORT": "http", "PMLB_ADMIN_PUBLIC_METRICS": "maybe"})
    assert (
        "environment: PMLB_SERVER_PORT: must be an integer from 0 to 65535, got string 'http'"
        in found
    )
    assert (
        "environment: PMLB_ADMIN_PUBLIC_METRICS: must be true or false, got string 'maybe'" in found
    )


def test_a_bad_upstream_item_is_named() -> None:
    found = problems({"PMLB_UPSTREAMS": "127.0.0.1:5001,backend:http"})
    assert found == [
        "environment: PMLB_UPSTREAMS (item 2): must be an integer from 1 to 65535,"
        " got string 'http'"
    ]


def test_an_unknown_variable_is_an_error_with_the_closest_name() -> None:
    found = problems({"PMLB_SERVER_MAX_CLIENT_TOTAL": "5", "PMLB_LOG_LEVEL": "debug"})
    assert found == [
        "environment: PMLB_SERVER_MAX_CLIENT_TOTAL: unknown variable"
        " (did you mean PMLB_SERVER_MAX_CLIENTS_TOTAL?)"
    ]


def test_empty_and_other_pmlb_variables_are_not_configuration() -> None:
    environ = {"PMLB_SERVER_PORT": "", "PMLB_ADMIN_URL": "http://x", "PMLB_TEST_REQUIRE_NODE": "1"}
    assert read_environment(environ).names == []
    assert load(environ).listeners[0].port == 7999


def test_server_listener_keys_follow_the_file_s_rule(tmp_path: Path) -> None:
    file = '[[listener]]\nname = "a"\nport = 7005\n'
    found = problems({"PMLB_SERVER_FRAMING": "line"}, file, tmp_path)
    assert found == [
        "environment: PMLB_SERVER_FRAMING: only applies when [server] sets host or port"
        " (this file's listeners are its [[listener]] tables)"
    ]


def test_every_file_key_can_be_set_from_the_environment() -> None:
    # Adding a key to the file's checks without the environment fails here.
    tables = {
        "PMLB_ADMIN_TLS_": set(checks._TLS_CHECKS),
        "PMLB_ADMIN_": set(checks._MANAGEMENT_CHECKS),
        "PMLB_SERVER_": set(checks._SERVER_CHECKS),
        "PMLB_LOG_": set(checks._LOG_CHECKS),
        "PMLB_CLUSTER_": set(checks._CLUSTER_CHECKS),
        "PMLB_UPSTREAM_": set(checks._UPSTREAM_CHECKS) - {"host", "port"},
    }
    assert {prefix: set(keys) for prefix, _, keys in _SECTIONS} == tables
