"""What a configuration reload changes: the difference between two configs, pure.

:func:`plan` compares the configuration pmlb runs on with a newly loaded
one and says what to do: upstreams and listeners to add, remove or replace,
settings that take effect at once, and keys that only a restart can change.
The server (:mod:`pmlb.server`) carries the plan out.

What a reload applies, and how:

- ``[[upstream]]``: compared by address. A new one is started; one gone from
  the file is drained (no new messages, what it was sent is finished, at
  most ``drain_timeout`` seconds), then removed; one whose settings changed
  is drained and removed, then started with the new ones. A ``discovery =
  "dns"`` entry is compared by its name and port: removing it removes the
  upstreams it found. Upstreams added through the admin API are not in the
  file and a reload leaves them alone.
- ``[server]`` and ``[[listener]]`` listeners, compared by name: a new one
  is bound and accepts; a removed one stops accepting (its clients stay
  connected until they leave); a changed one stops accepting and is bound
  anew with its new settings (its connected clients keep the old ones).
- Settings read as they are needed, applied at once: ``activity_window``,
  ``balancing`` (when the file's value changed: a policy set through the
  admin API otherwise stays), ``max_clients_total``, ``client_fin_timeout``,
  the ``drain_*`` timings, ``log.level``; and for what connects or starts
  after the reload: ``client_queue_size``, ``client_queue_bytes``,
  ``slow_client_policy`` and ``slow_client_timeout`` (new clients),
  ``upstream_queue_size`` (new upstreams).
- Only a restart changes ``[management_server]`` (its address, token, TLS
  and options), ``[cluster]``, ``log.format``,
  ``client_queue_bytes_total`` and ``workers``: a reload that changes them
  applies the rest, keeps those as they are and says so (a warning in the
  log, ``restart_required`` in the admin API's answer).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from pmlb.config import Config, ListenerConfig, UpstreamConfig

if TYPE_CHECKING:
    from attrs import AttrsInstance

#: ``[server]`` settings a reload applies (see the module docstring)
RUNTIME_SETTINGS = (
    "activity_window",
    "balancing",
    "max_clients_total",
    "client_fin_timeout",
    "drain_period",
    "drain_timeout",
    "drain_upstream_wait",
    "client_queue_size",
    "client_queue_bytes",
    "slow_client_policy",
    "slow_client_timeout",
    "upstream_queue_size",
)
#: the Config fields a reload compares table by table (the rest are [server] settings)
TABLES = ("listeners", "upstreams", "management", "log", "cluster", "source")


class ReloadUnavailable(Exception):
    """No reload now: nothing to reload from, or pmlb is draining."""


@attrs.frozen
class Plan:
    """What a reload does, in the order the server does it."""

    #: the configuration pmlb runs on afterwards (restart-only keys kept as they were)
    config: Config
    upstreams_added: tuple[UpstreamConfig, ...] = ()
    upstreams_removed: tuple[UpstreamConfig, ...] = ()
    #: (old, new) pairs with the same address
    upstreams_changed: tuple[tuple[UpstreamConfig, UpstreamConfig], ...] = ()
    listeners_added: tuple[ListenerConfig, ...] = ()
    listeners_removed: tuple[ListenerConfig, ...] = ()
    listeners_changed: tuple[tuple[ListenerConfig, ListenerConfig], ...] = ()
    #: the settings whose value changed, as ``server.KEY`` or ``log.level``
    settings: tuple[str, ...] = ()
    #: keys changed in the file that only a restart applies
    restart_required: tuple[str, ...] = ()

    @property
    def changes_anything(self) -> bool:
        return any(
            (
                self.upstreams_added,
                self.upstreams_removed,
                self.upstreams_changed,
                self.listeners_added,
                self.listeners_removed,
                self.listeners_changed,
                self.settings,
            )
        )

    def summary(self) -> dict[str, list[str]]:
        """The plan by names and addresses, as the admin API and the event stream give it."""
        return {
            "upstreams_added": [u.address for u in self.upstreams_added],
            "upstreams_removed": [u.address for u in self.upstreams_removed],
            "upstreams_changed": [new.address for _, new in self.upstreams_changed],
            "listeners_added": [listener.name for listener in self.listeners_added],
            "listeners_removed": [listener.name for listener in self.listeners_removed],
            "listeners_changed": [new.name for _, new in self.listeners_changed],
            "settings": list(self.settings),
            "restart_required": list(self.restart_required),
        }


def upstream_key(upstream: UpstreamConfig) -> tuple[str, int]:
    """What makes two ``[[upstream]]`` entries the same one: host (any case) and port."""
    return (upstream.host.lower(), upstream.port)


def _changed_keys(prefix: str, old: AttrsInstance, new: AttrsInstance) -> list[str]:
    if old == new:
        return []
    keys = []
    for field in attrs.fields(type(old)):
        if field.eq is False:
            continue
        if getattr(old, field.name) != getattr(new, field.name):
            keys.append(f"{prefix}.{field.name}")
    return keys


def plan(old: Config, new: Config) -> Plan:
    """What changes when pmlb, running on ``old``, reloads to ``new``."""
    restart = [
        *_changed_keys("management_server", old.management, new.management),
        *_changed_keys("cluster", old.cluster, new.cluster),
    ]
    if old.log.format != new.log.format:
        restart.append("log.format")
    # A [server] setting a reload does not know how to apply (one added
    # since, or client_queue_bytes_total, whose budget is made at start)
    # keeps its value until a restart.
    kept = {
        field.name: getattr(old, field.name)
        for field in attrs.fields(Config)
        if field.name not in TABLES
        and field.name not in RUNTIME_SETTINGS
        and getattr(old, field.name) != getattr(new, field.name)
    }
    restart += [f"server.{name}" for name in kept]
    effective = attrs.evolve(
        new,
        management=old.management,
        cluster=old.cluster,
        log=attrs.evolve(new.log, format=old.log.format),
        **kept,
    )

    settings = [
        f"server.{name}" for name in RUNTIME_SETTINGS if getattr(old, name) != getattr(new, name)
    ]
    if old.log.level != new.log.level:
        settings.append("log.level")

    before = {upstream_key(u): u for u in old.upstreams}
    after = {upstream_key(u): u for u in new.upstreams}
    added = tuple(u for key, u in after.items() if key not in before)
    removed = tuple(u for key, u in before.items() if key not in after)
    changed = tuple(
        (before[key], u) for key, u in after.items() if key in before and before[key] != u
    )

    old_listeners = {listener.name: listener for listener in old.listeners}
    new_listeners = {listener.name: listener for listener in new.listeners}
    return Plan(
        config=effective,
        upstreams_added=added,
        upstreams_removed=removed,
        upstreams_changed=changed,
        listeners_added=tuple(v for k, v in new_listeners.items() if k not in old_listeners),
        listeners_removed=tuple(v for k, v in old_listeners.items() if k not in new_listeners),
        listeners_changed=tuple(
            (old_listeners[k], v)
            for k, v in new_listeners.items()
            if k in old_listeners and old_listeners[k] != v
        ),
        settings=tuple(settings),
        restart_required=tuple(restart),
    )
