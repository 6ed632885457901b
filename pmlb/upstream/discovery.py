"""DNS discovery: an upstream entry whose host names a set of addresses.

An ``[[upstream]]`` with ``discovery = "dns"`` is a template: its ``host`` is
resolved (A and AAAA records) every ``resolve_interval`` seconds, like a
Kubernetes headless service, and each address becomes an upstream with the
template's port and settings. New addresses are added; an address that
vanished is removed, its queued messages failing over to the others (nothing
accepted is lost). A failed lookup changes nothing; an answer with no
address (or a name that does not exist) removes them all.

``nameserver`` (``"IP"`` or ``"IP:PORT"``) sends the queries to that DNS
server instead of the system resolver (getaddrinfo).
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable

import attrs
import dns.asyncresolver
import dns.exception
import dns.resolver
import trio

from pmlb.config import UpstreamConfig, parse_nameserver

log = logging.getLogger("pmlb.discovery")

#: ``resolve(host, port)``: the addresses now behind ``host``; raises
#: :class:`DiscoveryError` when it cannot tell.
Resolver = Callable[[str, int], Awaitable[set[str]]]


class DiscoveryError(Exception):
    """A lookup failed (timeout, server failure...): the current set is kept."""


async def system_resolve(host: str, port: int) -> set[str]:
    """The addresses getaddrinfo gives for ``host``."""
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
            return set()
        raise DiscoveryError(f"cannot resolve {host}: {exc.strerror or exc}") from None
    return {str(info[4][0]) for info in infos}


def nameserver_resolver(nameserver: str, timeout: float = 5.0) -> Resolver:
    """A resolver asking the DNS server at ``nameserver`` for A and AAAA records."""
    ip, port = parse_nameserver(nameserver)
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [ip]
    resolver.port = port

    async def resolve(host: str, _port: int) -> set[str]:
        found: set[str] = set()
        for kind in ("A", "AAAA"):
            try:
                answer = await resolver.resolve(host, kind, lifetime=timeout, search=False)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            except dns.exception.DNSException as exc:
                raise DiscoveryError(f"cannot resolve {host} ({kind}): {exc}") from None
            found.update(str(record) for record in answer)
        return found

    return resolve


@attrs.define(eq=False)
class Discovery:
    """A running ``discovery = "dns"`` entry and the upstreams it started."""

    config: UpstreamConfig
    #: addresses of the upstreams it added and has not removed
    addresses: set[str] = attrs.Factory(set)
    #: cancelling it stops the lookups (the registry then removes its upstreams)
    cancel_scope: trio.CancelScope = attrs.Factory(trio.CancelScope)

    @property
    def address(self) -> str:
        return self.config.address


async def run_dns_discovery(
    template: UpstreamConfig,
    add: Callable[[UpstreamConfig], object],
    remove: Callable[[str], Awaitable[None]],
    resolve: Resolver,
) -> None:
    """Keep the upstreams behind ``template.host`` in step with DNS, until cancelled.

    ``add(config)`` starts an upstream; ``await remove(address)`` stops one.
    """
    name = template.address
    current: dict[str, str] = {}  # resolved IP -> upstream address
    while True:
        try:
            addresses = await resolve(template.host, template.port)
        except DiscoveryError as exc:
            log.warning("discovery lookup failed", extra={"dns_name": name, "reason": str(exc)})
        else:
            for ip in sorted(addresses - current.keys()):
                config = attrs.evolve(template, host=ip, discovery="static")
                try:
                    add(config)
                except ValueError as exc:  # the address is configured already
                    log.warning(
                        "discovered upstream skipped", extra={"dns_name": name, "reason": str(exc)}
                    )
                    continue
                current[ip] = config.address
                log.info(
                    "upstream discovered", extra={"dns_name": name, "upstream": config.address}
                )
            for ip in sorted(current.keys() - addresses):
                address = current.pop(ip)
                log.info(
                    "upstream vanished from DNS", extra={"dns_name": name, "upstream": address}
                )
                with contextlib.suppress(KeyError):  # removed meanwhile (by the admin API)
                    await remove(address)
        await trio.sleep(template.resolve_interval)
