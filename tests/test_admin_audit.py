"""Who called the admin: caller and forwarded-for fields, trusted proxies only."""

from __future__ import annotations

import json
import logging

import pytest

from pmlb._log import JSONFormatter
from pmlb.admin.audit import caller_fields, networks
from pmlb.config import Config, ConfigError, UpstreamConfig, parse_config
from pmlb.registry import Registry

PROXY = networks(["10.0.0.0/8", "::1"])


def test_the_caller_is_the_peer_and_forwarded_headers_of_strangers_are_ignored() -> None:
    spoofed = {"x-forwarded-for": "203.0.113.7"}
    assert caller_fields(("192.0.2.1", 5000), spoofed, PROXY) == {"caller": "192.0.2.1:5000"}
    assert caller_fields(("192.0.2.1", 5000), spoofed, ()) == {"caller": "192.0.2.1:5000"}
    assert caller_fields(("::2", 80), {}, PROXY) == {"caller": "[::2]:80"}
    assert caller_fields(None, spoofed, PROXY) == {"caller": "unknown"}


def test_a_trusted_proxy_names_the_nearest_untrusted_hop() -> None:
    # the client may prepend anything; the hops the proxies added are on the right
    chain = {"x-forwarded-for": "198.51.100.9, 203.0.113.7, 10.1.1.1"}
    assert caller_fields(("10.0.0.2", 1), chain, PROXY) == {
        "caller": "10.0.0.2:1",
        "forwarded_for": "203.0.113.7",
    }
    forwarded = {"forwarded": 'for=198.51.100.9, for="[2001:db8::1]:4711";proto=https'}
    assert caller_fields(("::1", 1), forwarded, PROXY)["forwarded_for"] == "2001:db8::1"
    v4_port = {"forwarded": "for=192.0.2.60:8080;by=10.0.0.1"}
    assert caller_fields(("10.9.9.9", 1), v4_port, PROXY)["forwarded_for"] == "192.0.2.60"
    assert "forwarded_for" not in caller_fields(("10.0.0.2", 1), {}, PROXY)


def test_trusted_proxies_are_checked_in_the_file() -> None:
    config = parse_config({"management_server": {"trusted_proxies": ["10.1.2.3/8", "::1"]}})
    assert config.management.trusted_proxies == ("10.0.0.0/8", "::1/128")
    with pytest.raises(ConfigError) as caught:
        parse_config({"management_server": {"trusted_proxies": ["proxy.local"]}})
    assert str(caught.value) == (
        "<config>: management_server.trusted_proxies: item 0: must be an IP address or"
        " network (e.g. '10.0.0.0/8'), got 'proxy.local'"
    )


def test_a_stall_logs_how_long_it_waited_as_a_number(caplog: pytest.LogCaptureFixture) -> None:
    registry = Registry(Config())
    upstream = registry.add_upstream(UpstreamConfig(host="127.0.0.1", port=1))
    with caplog.at_level(logging.WARNING, logger="pmlb.registry"):
        registry.set_upstream_stalled(upstream, True, waited=1.23456)
    (record,) = [r for r in caplog.records if "stalled" in r.getMessage()]
    assert json.loads(JSONFormatter().format(record))["waited"] == 1.235


def test_check_config_prints_the_trusted_proxies() -> None:
    from pmlb.config import render_config

    config = parse_config({"management_server": {"trusted_proxies": ["10.0.0.0/8"]}})
    assert 'trusted_proxies = ["10.0.0.0/8"]' in render_config(config)
