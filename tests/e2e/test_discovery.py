"""DNS discovery end to end: `pmlb serve` resolving a name at a DNS server in the test.

The DNS server (tests/dns_server.py) runs in the test process on 127.0.0.1;
the upstreams behind the name are real processes on 127.0.0.x addresses.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.dns_server import DnsServer
from tests.helpers import Processes, free_low_port, wait_serving

pytestmark = pytest.mark.e2e

NAME = "upstreams.pmlb.test"


async def test_dns_changes_add_and_remove_upstreams(
    procs: Processes, tmp_path: Path, nursery: trio.Nursery
) -> None:
    dns = DnsServer()
    dns_port = await nursery.start(dns.serve)
    # Every upstream listens on the same port, on its own loopback address,
    # as the pods behind a headless service do.
    port = free_low_port()
    ups = {}
    for name, host in (("A", "127.0.0.1"), ("B", "127.0.0.2"), ("C", "127.0.0.3")):
        ups[host], _ = await procs.upstream(name, port=port, extra=["--host", host])
    dns.records[NAME] = ["127.0.0.1", "127.0.0.2"]
    config = tmp_path / "pmlb.toml"
    config.write_text(
        f"""
[server]
framing = "line"

[[upstream]]
host = "{NAME}"
port = {port}
discovery = "dns"
resolve_interval = 0.2
nameserver = "127.0.0.1:{dns_port}"
"""
    )
    pmlb, client_port = await procs.pmlb("--config", str(config))
    await wait_serving(pmlb, port)  # the first one
    await pmlb.wait_for(rf"upstream serving upstream=127\.0\.0\.2:{port}\b")
    client = await procs.client(client_port)

    async def answered_by(n: int = 6) -> set[str]:
        await client.send(*[f"m{i}" for i in range(n)])
        return {line.split(":")[0] for line in await client.recv_many(n)}

    assert await answered_by() == {"A", "B"}

    # A new address appears: it is added.
    mark = pmlb.mark()
    dns.records[NAME] = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    await pmlb.wait_for(rf"upstream serving upstream=127\.0\.0\.3:{port}\b", after=mark)
    assert await answered_by(9) == {"A", "B", "C"}

    # An address vanishes: that upstream is removed, the others carry on.
    mark = pmlb.mark()
    dns.records[NAME] = ["127.0.0.2", "127.0.0.3"]
    await pmlb.wait_for(rf"upstream removed upstream=127\.0\.0\.1:{port}\b", after=mark)
    assert await answered_by() == {"B", "C"}

    # A name that no longer exists removes them all; messages wait.
    mark = pmlb.mark()
    del dns.records[NAME]
    await pmlb.wait_for(r"upstream removed upstream=127\.0\.0\.2", after=mark)
    await pmlb.wait_for(r"upstream removed upstream=127\.0\.0\.3", after=mark)
    await client.send("held")
    dns.records[NAME] = ["127.0.0.1"]
    await pmlb.wait_for(rf"upstream serving upstream=127\.0\.0\.1:{port}\b", after=mark)
    assert await client.recv() == "A:held"
