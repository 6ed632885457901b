"""Acknowledgements end to end: an acking upstream SIGKILLed under load loses nothing.

Two upstreams pmlb did not write, grpc-js and grpcio, started with ``--acks``:
each acknowledges a request once it has answered it (grpcio on its reply,
grpc-js in a message of acks alone). Clients send several thousand
``attempt`` messages, each answered with the request's ``delivery_attempt``;
one upstream is SIGKILLed mid-stream. Every message must be answered at
least once, and every extra answer must come from a redelivery.
"""

from __future__ import annotations

import re
import signal
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import pytest
import trio

from tests.helpers import TIMEOUT, LineClient, Processes, admin_url, needs_node, wait_serving

pytestmark = [pytest.mark.e2e, needs_node]

CLIENTS = 8
PER_CLIENT = 600
KILL_AFTER = 1200  # answers received, all clients together, before the kill
_ANSWER = re.compile(r"^(A|B):(\d+)-(\d+):(\d+)$")


def acked_config(path: Path, ports: list[int]) -> Path:
    lines = ["[server]", 'framing = "line"']
    for port in ports:
        lines += ["[[upstream]]", 'host = "127.0.0.1"', f"port = {port}", "acks = true"]
        # a quick liveness, so that the dead one is noticed by its connection
        lines += ["live_interval = 1", "alive_timeout = 5"]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(("victim", "transport"), [("grpcio", "native"), ("grpcjs", "grpclib")])
async def test_an_acking_upstream_killed_under_load_loses_nothing(
    procs: Processes, tmp_path: Path, victim: str, transport: str
) -> None:
    procs.upstream_transport = transport
    a, a_port = await procs.upstream("A", kind="grpcjs", extra=["--acks"])
    b, b_port = await procs.upstream("B", kind="grpcio", extra=["--acks"])
    dead = a if victim == "grpcjs" else b
    config = acked_config(tmp_path / "pmlb.toml", [a_port, b_port])
    pmlb, port = await procs.pmlb("--config", str(config))
    url = await admin_url(pmlb)
    await wait_serving(pmlb, a_port)
    await wait_serving(pmlb, b_port)
    clients = [await procs.client(port) for _ in range(CLIENTS)]

    # answers[(client, n)] = the delivery attempts the answers carried
    answers: dict[tuple[int, int], list[int]] = defaultdict(list)
    received = 0
    enough = trio.Event()
    all_answered = [trio.Event() for _ in clients]

    async def send(i: int, client: LineClient) -> None:
        for start in range(0, PER_CLIENT, 50):
            await client.send(*(f"attempt {i}-{n}" for n in range(start, start + 50)))

    async def read(i: int, client: LineClient) -> None:
        nonlocal received
        mine = 0
        while mine < PER_CLIENT:
            line = await client.recv(timeout=TIMEOUT * 2)
            match = _ANSWER.match(line)
            assert match, line
            assert int(match[2]) == i, line
            key = (i, int(match[3]))
            if not answers[key]:
                mine += 1
            answers[key].append(int(match[4]))
            received += 1
            if received >= KILL_AFTER:
                enough.set()
        all_answered[i].set()

    with trio.fail_after(TIMEOUT * 4):
        async with trio.open_nursery() as nursery:
            for i, client in enumerate(clients):
                nursery.start_soon(send, i, client)
                nursery.start_soon(read, i, client)
            await enough.wait()
            dead.signal(signal.SIGKILL)
        await dead.wait()

    async with httpx.AsyncClient() as http:
        stats = (await http.get(f"{url}/api/v1/runtime")).json()["stats"]
    sent = {(i, n) for i in range(CLIENTS) for n in range(PER_CLIENT)}
    lost = sent - set(answers)
    duplicates = {key: attempts for key, attempts in answers.items() if len(attempts) > 1}
    first_tries = Counter(a for attempts in answers.values() for a in attempts if a == 1)
    print(
        f"\n[acks:kill {victim}, {transport}] sent={len(sent)} answered={len(answers)}"
        f" lost={len(lost)} duplicated={len(duplicates)} redelivered={stats.get('redelivered')}"
    )
    assert not lost, f"{len(lost)} messages never answered, e.g. {sorted(lost)[:5]}"
    # each message went out once as attempt 1; any further answer is a redelivery
    for key, attempts in answers.items():
        assert attempts.count(1) <= 1, (key, attempts)
        assert all(attempt >= 1 for attempt in attempts), (key, attempts)
    assert all(
        attempts.count(1) + sum(a >= 2 for a in attempts) == len(attempts)
        for attempts in duplicates.values()
    )
    assert sum(first_tries.values()) <= len(sent)
    assert stats["unacked"] == 0
