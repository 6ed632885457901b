"""pmlb.reload.plan: what a reload changes, from two configurations."""

from __future__ import annotations

from typing import Any

import attrs

import pmlb
from pmlb.config import parse_config
from pmlb.reload import RUNTIME_SETTINGS, TABLES, plan


def cfg(**tables: Any) -> pmlb.Config:
    return parse_config(tables, "pmlb.toml")


UP_A = {"host": "127.0.0.1", "port": 5001}
UP_B = {"host": "127.0.0.1", "port": 5002}


def test_the_same_file_changes_nothing() -> None:
    config = cfg(upstream=[UP_A], listener=[{"name": "x", "port": 0}])
    change = plan(config, cfg(upstream=[UP_A], listener=[{"name": "x", "port": 0}]))
    assert not change.changes_anything
    assert change.restart_required == ()
    assert change.config == config


def test_upstreams_are_added_removed_and_changed_by_address() -> None:
    old = cfg(upstream=[UP_A, UP_B])
    new = cfg(upstream=[{**UP_A, "events": True}, {"host": "127.0.0.1", "port": 5003}])
    change = plan(old, new)
    assert [u.address for u in change.upstreams_added] == ["127.0.0.1:5003"]
    assert [u.address for u in change.upstreams_removed] == ["127.0.0.1:5002"]
    [(before, after)] = change.upstreams_changed
    assert (before.events, after.events) == (False, True)
    assert change.summary()["upstreams_changed"] == ["127.0.0.1:5001"]


def test_an_upstream_host_differing_in_case_only_is_the_same_one() -> None:
    old = cfg(upstream=[{"host": "Backend.internal", "port": 5001}])
    change = plan(old, cfg(upstream=[{"host": "backend.internal", "port": 5001}]))
    assert change.upstreams_added == change.upstreams_removed == ()
    assert len(change.upstreams_changed) == 1


def test_listeners_are_compared_by_name() -> None:
    old = cfg(listener=[{"name": "a", "port": 7001}, {"name": "b", "port": 7002}])
    new = cfg(
        listener=[{"name": "a", "port": 7001, "framing": "line"}, {"name": "c", "port": 7003}]
    )
    change = plan(old, new)
    assert [x.name for x in change.listeners_added] == ["c"]
    assert [x.name for x in change.listeners_removed] == ["b"]
    assert [(o.framing, n.framing) for o, n in change.listeners_changed] == [("raw", "line")]


def test_runtime_settings_are_listed_and_applied() -> None:
    change = plan(
        cfg(),
        cfg(server={"activity_window": 5, "balancing": "hash"}, log={"level": "debug"}),
    )
    assert change.settings == ("server.activity_window", "server.balancing", "log.level")
    assert change.config.activity_window == 5
    assert change.config.log.level == "debug"


def test_keys_that_need_a_restart_keep_their_old_values() -> None:
    old = cfg()
    new = cfg(
        management_server={"port": 9000, "public_metrics": True},
        log={"format": "json"},
        cluster={"redis_url": "redis://127.0.0.1:6379/0"},
    )
    change = plan(old, new)
    assert change.restart_required == (
        "management_server.port",
        "management_server.public_metrics",
        "cluster.redis_url",
        "log.format",
    )
    assert change.config.management == old.management
    assert change.config.cluster == old.cluster
    assert change.config.log.format == "text"
    assert not change.changes_anything


def test_a_server_setting_reload_cannot_apply_needs_a_restart() -> None:
    old = cfg()
    change = plan(old, cfg(server={"client_queue_bytes_total": 1 << 20}))
    assert change.restart_required == ("server.client_queue_bytes_total",)
    assert change.config.client_queue_bytes_total == old.client_queue_bytes_total


def test_every_server_setting_is_either_applied_or_needs_a_restart() -> None:
    # A new Config field fails this: decide whether a reload applies it.
    fields = {f.name for f in attrs.fields(pmlb.Config)} - set(TABLES)
    assert fields - set(RUNTIME_SETTINGS) == {"client_queue_bytes_total", "workers"}
