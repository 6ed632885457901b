"""``/api/v1/broadcast``: a message to every, every active or every inactive client,
of every node in a cluster.
"""

from __future__ import annotations

from quart_schema import validate_request, validate_response
from quart_trio import QuartTrio

from pmlb.admin import schemas as s
from pmlb.admin.context import Context, message_payload
from pmlb.cluster.ops import BusDown, encode_payload


def register(app: QuartTrio, ctx: Context) -> None:
    registry, action = ctx.registry, ctx.action

    @app.post("/api/v1/broadcast")
    @validate_request(s.BroadcastIn)
    @validate_response(s.BroadcastOut)
    async def broadcast(data: s.BroadcastIn) -> s.BroadcastOut:
        """Send a message to all, active or inactive clients (of every node, in a cluster).

        ``nodes`` says how many nodes answered of ``nodes_asked``; a node
        that did not answer in time may still have delivered it.
        """
        payload = message_payload(data)
        recipients = registry.broadcast(data.kind, payload)
        answered = asked = 1
        partial = None
        bus = registry.cluster
        if bus is not None:
            timeout = ctx.ask_timeout()
            request = {"op": "broadcast", "kind": data.kind, "payload": encode_payload(payload)}
            try:
                answers, others = await bus.ask_all(request, timeout)
            except BusDown as exc:
                partial = f"this node only: {exc}"
            else:
                recipients += sum(int(a.get("recipients", 0)) for a in answers)
                answered, asked = 1 + len(answers), 1 + others
                if len(answers) < others:
                    partial = f"{others - len(answers)} node(s) did not answer within {timeout:g} s"
        action("broadcast", kind=data.kind, recipients=recipients, nodes=answered)
        return s.BroadcastOut(
            kind=data.kind,
            recipients=recipients,
            nodes=answered,
            nodes_asked=asked,
            partial=partial,
        )
