"""A tiny authoritative DNS server on 127.0.0.1 (UDP, port 0), for discovery tests.

It answers A and AAAA queries from ``records`` (name -> addresses), which a
test changes as it goes; any other name is NXDOMAIN. ``queries`` counts the
questions per name, so a test can wait until pmlb asked again.
"""

from __future__ import annotations

import ipaddress

import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import trio


class DnsServer:
    def __init__(self) -> None:
        self.records: dict[str, list[str]] = {}
        self.queries: dict[str, int] = {}
        self.port = 0
        self._asked = trio.lowlevel.ParkingLot()

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        with sock:
            await sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
            task_status.started(self.port)
            while True:
                data, peer = await sock.recvfrom(4096)
                try:
                    query = dns.message.from_wire(data)
                except dns.exception.DNSException:
                    continue
                await sock.sendto(self.answer(query).to_wire(), peer)

    def answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        (question,) = query.question
        name = question.name.to_text(omit_final_dot=True).lower()
        self.queries[name] = self.queries.get(name, 0) + 1
        self._asked.unpark_all()
        if name not in self.records:
            response.set_rcode(dns.rcode.NXDOMAIN)
            return response
        version = 4 if question.rdtype == dns.rdatatype.A else 6
        addresses = [a for a in self.records[name] if ipaddress.ip_address(a).version == version]
        if addresses and question.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            response.answer.append(
                dns.rrset.from_text_list(
                    question.name, 1, dns.rdataclass.IN, question.rdtype, addresses
                )
            )
        return response

    async def wait_queries(self, name: str, count: int) -> None:
        """Return once ``name`` has been asked about at least ``count`` times."""
        while self.queries.get(name, 0) < count:
            await self._asked.park()
