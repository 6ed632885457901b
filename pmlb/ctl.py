"""``pmlb ctl``: the admin API from a shell, as tables for people or JSON for scripts.

The address comes from ``--url`` or ``PMLB_ADMIN_URL`` (default
``http://127.0.0.1:8000``), the token from ``--token`` or ``PMLB_ADMIN_TOKEN``.
Exit status: 0 done, 1 the API refused or could not be reached, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8000"
#: seconds an admin call may take (a drain answers at once: 202)
TIMEOUT = 10.0


class CtlError(Exception):
    """The admin API answered with an error, or could not be reached."""


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ctl = commands.add_parser("ctl", help="talk to a running pmlb's admin API")
    ctl.add_argument("--url", default=None, help=f"admin URL (env PMLB_ADMIN_URL; {DEFAULT_URL})")
    ctl.add_argument("--token", default=None, help="bearer token (env PMLB_ADMIN_TOKEN)")
    ctl.add_argument("--json", action="store_true", help="print the API's JSON answer")
    ctl.add_argument(
        "--insecure", action="store_true", help="do not verify the admin's TLS certificate"
    )
    what = ctl.add_subparsers(dest="ctl_command", required=True, metavar="WHAT")

    status = what.add_parser("status", help="counters, policy, listeners")
    status.set_defaults(run=_status)

    upstreams = what.add_parser("upstreams", help="list (the default), add, remove or drain")
    upstreams.set_defaults(run=_upstreams_list)
    verbs = upstreams.add_subparsers(dest="verb", metavar="VERB")
    verbs.add_parser("list").set_defaults(run=_upstreams_list)
    add = verbs.add_parser("add", help="add HOST:PORT")
    add.add_argument("address", metavar="HOST:PORT")
    add.add_argument("--ready-timeout", type=float)
    add.add_argument("--alive-timeout", type=float)
    add.add_argument("--live-interval", type=float)
    add.set_defaults(run=_upstreams_add)
    for verb, run, text in (
        ("remove", _upstreams_remove, "remove HOST:PORT"),
        ("drain", _upstreams_drain, "drain HOST:PORT, then remove it"),
    ):
        sub = verbs.add_parser(verb, help=text)
        sub.add_argument("address", metavar="HOST:PORT")
        sub.set_defaults(run=run)
    state = verbs.add_parser(
        "state",
        help="set HOST:PORT ready, drain (no new messages) or maint (out of rotation)",
    )
    state.add_argument("address", metavar="HOST:PORT")
    state.add_argument("state", choices=["ready", "drain", "maint"])
    state.set_defaults(run=_upstreams_state)

    clients = what.add_parser("clients", help="list (the default), get, kick or send to")
    clients.set_defaults(run=_clients_list, state=None, listener=None, limit=100, all=False)
    verbs = clients.add_subparsers(dest="verb", metavar="VERB")
    get = verbs.add_parser("get", help="one client's details")
    get.add_argument("uuid")
    get.set_defaults(run=_clients_get)
    listing = verbs.add_parser("list")
    listing.add_argument("--state", choices=["active", "inactive"])
    listing.add_argument("--listener")
    listing.add_argument("--limit", type=int, default=100, help="clients per page (max 1000)")
    listing.add_argument("--all", action="store_true", help="follow every page")
    listing.set_defaults(run=_clients_list)
    kick = verbs.add_parser("kick", help="disconnect a client")
    kick.add_argument("uuid")
    kick.set_defaults(run=_clients_kick)
    send = verbs.add_parser("send", help="send a message to one client")
    send.add_argument("uuid")
    send.add_argument("message")
    send.set_defaults(run=_clients_send)

    broadcast = what.add_parser("broadcast", help="send a message to many clients")
    broadcast.add_argument("message")
    broadcast.add_argument("--kind", choices=["all", "active", "inactive"], default="all")
    broadcast.set_defaults(run=_broadcast)

    cluster = what.add_parser("cluster", help="the nodes of the cluster")
    cluster.set_defaults(run=_cluster)

    change = what.add_parser("set", help="change the log level, policy or accepting")
    change.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    change.add_argument("--policy")
    change.add_argument("--accepting", action=argparse.BooleanOptionalAction, default=None)
    change.set_defaults(run=_set)

    reload = what.add_parser(
        "reload", help="load the configuration file again and apply it (as SIGHUP)"
    )
    reload.set_defaults(run=_reload)

    drain = what.add_parser("drain", help="drain and stop the whole pmlb")
    drain.set_defaults(run=_drain)

    events = what.add_parser("events", help="tail the live event stream (Ctrl-C stops)")
    events.add_argument("--count", type=_positive, help="stop after N events")
    events.add_argument(
        "--recent", action="store_true", help="print the recent events pmlb kept first"
    )
    events.set_defaults(run=None, stream=_events)
    _json_everywhere(what)


def _json_everywhere(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    # --json after any verb too (`pmlb ctl clients list --json`); SUPPRESS
    # keeps a --json given before the verb from being reset to False.
    for parser in commands.choices.values():
        parser.add_argument(
            "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON"
        )
        for action in parser._subparsers._group_actions if parser._subparsers else ():
            if isinstance(action, argparse._SubParsersAction):
                _json_everywhere(action)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return value


class Api:
    def __init__(self, url: str, token: str | None, *, insecure: bool = False) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self._context = ssl._create_unverified_context() if insecure else None

    @property
    def token(self) -> str | None:
        return self._token

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        """For a wss:// URL: the context (unverified with --insecure)."""
        if not self.url.startswith("https://"):
            return None
        return self._context or ssl.create_default_context()

    def call(self, method: str, path: str, body: object = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self._token:
            request.add_header("Authorization", f"Bearer {self._token}")
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT, context=self._context) as answer:
                return json.load(answer)
        except urllib.error.HTTPError as exc:
            try:
                refusal: Any = json.load(exc)
                message = refusal.get("error", exc.reason)
                # A refused reload lists the file's problems, one a line.
                message += "".join(f"\n  {problem}" for problem in refusal.get("problems", []))
            except (ValueError, AttributeError, TypeError):
                message = exc.reason
            raise CtlError(f"{exc.code}: {message}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CtlError(f"cannot reach the admin API at {self.url}: {reason}") from None


def _quote(address: str) -> str:
    return urllib.parse.quote(address, safe="")


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[("" if row.get(c) is None else str(row.get(c))) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def _status(api: Api, args: argparse.Namespace) -> tuple[Any, str]:
    runtime = api.call("GET", "/api/v1/runtime")
    stats = runtime["stats"]
    lines = [
        f"pmlb {runtime['version']}, up {runtime['uptime']:.0f} s"
        + (", STOPPING" if runtime["stopping"] else ""),
        f"policy {runtime['policy']}, log level {runtime['log_level']}, "
        + ("accepting clients" if runtime["accepting"] else "NOT accepting clients"),
        "listeners: "
        + ", ".join(f"{name} {' '.join(a)}" for name, a in runtime["listeners"].items()),
        f"clients {stats['clients']} ({stats['clients_active']} active), "
        f"{stats['clients_total']} since start",
        f"upstreams {stats['upstreams_serving']}/{stats['upstreams']} serving, "
        f"{stats['awaiting_upstream']} messages awaiting an upstream",
        f"messages from clients {stats['messages_from_clients']}, "
        f"to clients {stats['messages_to_clients']}",
    ]
    return runtime, "\n".join(lines)


def _upstreams_list(api: Api, args: argparse.Namespace) -> tuple[Any, str]:
    answer = api.call("GET", "/api/v1/upstreams")
    rows = [
        {
            **u,
            "state": "draining" if u["draining"] else u["state"],
            "admin": u.get("admin_state", "ready"),
            "to": u["messages_to_upstream"],
            "from": u["messages_from_upstream"],
        }
        for u in answer["upstreams"]
    ]
    return answer, _table(rows, ["address", "state", "admin", "to", "from", "queued", "last_error"])


def _upstreams_state(api: Api, args: argparse.Namespace) -> tuple[Any, str]:
    answer = api.call(
        "PUT", f"/api/v1/upstreams/{_quote(args.address)}/state", {"state": args.state}
    )
    return answer, f"{answer['address']}: {answer['admin_state']} ({answer['state']})"


def _split_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise CtlError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _upstreams_add(api: Api, args: argparse.Namespace) -> tuple[Any, str]:
    host, port = _split_address(args.address)
    body: dict[str, Any] = {"host": host, "port": port}
    for name in ("ready_timeout", "alive_timeout", "live_interval"):
        if getattr(args, name) is not None:
            body[name] = getattr(args, name)
    answer = api.call("POST", "/api/v1/upstreams", body)
    return answer, f"added {answer['address']} ({answer['state']})"


def _upstreams_remove(api: Api, args: argparse.Namespace) -> tuple[Any, str]:
    answer = api.call("DELETE", f"/api/v1/upstreams/{_quote(args.address)}")
    return answer, f"removed {answer['removed']}"


def _upstreams_drain(api: Api, args: argparse.Namespace) -> tuple[Any, str]:
    answer = api.call("POST", f"/api/v1/upstreams/{_quote(args.address)}/drain", {})
    return answer, (
        f"drained and removed {answer['upstream']} ({answer['failed_over']} messages failed over)"
    )


def _clients_list(api: Api, args: argparse.Namespace) -> tuple[Any, str]:
    query: dict[str, Any] = {"limit": args.limit}
    if args.state:
        query["state"] = args.state
    if args.listener:
        query["listener"] = args.listener
    clients: list[dict[str, Any]] = []
    while True:
        page = api.call("GET", "/api/v1/clients?" + urllib.parse.urlencode(query))
        clients += page["clients"]
        if not args.all or page["next_cursor"] is None:
            break
        query["cursor"] = page["next_cursor"]
    answer = {
        "clients": clients,
        "next_cursor": page["next_cursor"],
        "connected": page["connected"],
        "partial": page.get("partial"),
    }
    rows = [
        {**c, "in": c["messages_in"], "out": c["messages_out"], "active": _readable(c["active"])}
        for c in clients
    ]
    columns = ["uuid", "remote", "listener", "active", "in", "out", "connected_at"]
    if any(c.get("node") for c in clients):
        columns.insert(1, "node")
    text = _table(rows, columns)
    if page["next_cursor"] is not None:
        text += f"\n(more: --all, or {page['connected']} connected in all)"
    if page.get("partial"):
        text += f"\nPARTIAL: {page['partial']}"
    return answer, text


def _clients_get(api: Api, args: argparse.Namespace) -> tuple[Any, str]:
    answer = api.call("GET", f"/api/v1/clients/{_quote(args.uuid)}")
    width = max(len(key) for key in answer)
    lines = [f"{key.ljust(width)}  {_readable(value)}" for key, value in answer.items()]
    return answer, "\n".join(lines)


def _readable(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "" if value is None else str(value)


def _clients_kick(api: Api, args: argparse.Namespace) -> tuple[Any, str]:
    answer = api.call("DELETE", f"/api/v1/clients/{_quote(args.uuid)}")
    return answer, f"disconnected {answer['disconnected']}"


def _clients_send(api: Api, args: argparse.Namespace) -> tuple[Any, str]:
    answer = api.call(
        "POST", f"/api/v1/clients/{_quote(args.uuid)}/messages", {"payload": args.message}
    )
    return answer, ("queued" if answer["queued"] else "not queued: the client is closing")


def _broadcast(api: Api, args: argparse.Namespace) -> tuple[Any, str]:
    answer = api.call("POST", "/api/v1/broadcast", {"kind": args.kind, "payload": args.message})
    count = answer["recipients"]
    kind = "" if args.kind == "all" else f"{args.kind} "
    text = f"sent to {count} {kind}client{'' if count == 1 else 's'}"
    if answer.get("nodes_asked", 1) > 1 or answer.get("partial"):
        text += f" on {answer['nodes']} of {answer['nodes_asked']} nodes"
    if answer.get("partial"):
        text += f" ({answer['partial']})"
    return answer, text


def _cluster(api: Api, args: argparse.Namespace) -> tuple[Any, str]:
    answer = api.call("GET", "/api/v1/cluster")
    if not answer["enabled"]:
        return answer, "not in a cluster ([cluster] redis_url is not set)"
    rows = [
        {
            **n,
            "node": n["name"] + (" *" if n["this"] else ""),
            "serving": f"{n['upstreams_serving']}/{n['upstreams']}",
            "heartbeat": "" if n["heartbeat_age"] is None else f"{n['heartbeat_age']:.1f} s ago",
        }
        for n in answer["nodes"]
    ]
    text = _table(rows, ["node", "admin", "clients", "serving", "heartbeat", "version"])
    count = len(answer["nodes"])
    text += f"\n{count} node{'' if count == 1 else 's'}, {answer['clients']} clients (* this one)"
    if answer["degraded"]:
        text += f"\nDEGRADED: {answer['degraded']}"
    return answer, text


def _set(api: Api, args: argparse.Namespace) -> tuple[Any, str]:
    body = {
        key: value
        for key, value in (
            ("log_level", args.log_level),
            ("policy", args.policy),
            ("accepting", args.accepting),
        )
        if value is not None
    }
    if not body:
        raise CtlError("nothing to set: give --log-level, --policy or --accepting/--no-accepting")
    answer = api.call("PATCH", "/api/v1/runtime", body)
    return answer, (
        f"policy {answer['policy']}, log level {answer['log_level']}, "
        + ("accepting clients" if answer["accepting"] else "NOT accepting clients")
    )


def _reload(api: Api, args: argparse.Namespace) -> tuple[Any, str]:
    answer = api.call("POST", "/api/v1/runtime/reload")
    lines = [f"reloaded {answer['source'] or 'the configuration'}"]
    for key, what in (
        ("upstreams_added", "upstreams added"),
        ("upstreams_removed", "upstreams removed (drained)"),
        ("upstreams_changed", "upstreams changed (drained, started anew)"),
        ("listeners_added", "listeners added"),
        ("listeners_removed", "listeners removed (their clients stay)"),
        ("listeners_changed", "listeners changed (bound anew)"),
        ("settings", "settings applied"),
        ("restart_required", "NOT applied, need a restart"),
    ):
        if answer[key]:
            lines.append(f"{what}: {', '.join(answer[key])}")
    if len(lines) == 1:
        lines.append("nothing changed")
    return answer, "\n".join(lines)


def _drain(api: Api, args: argparse.Namespace) -> tuple[Any, str]:
    answer = api.call("POST", "/api/v1/runtime/drain")
    return answer, "draining: pmlb stops accepting, closes its clients and exits"


def event_line(event: dict[str, Any]) -> str:
    """``TIME TYPE key=value ...``: one event, readable."""
    fields = " ".join(
        f"{key}={_readable(value) if ' ' not in _readable(value) else json.dumps(value)}"
        for key, value in event.items()
        if key not in ("time", "type")
    )
    return f"{event.get('time', '')} {event.get('type', '?')} {fields}".rstrip()


def _events(api: Api, args: argparse.Namespace, out: Any) -> None:
    """Print events as they come, until Ctrl-C, ``--count`` of them, or the stream ends."""
    # Imported here: only this verb needs trio and a WebSocket client.
    import trio
    from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

    url = "ws" + api.url.removeprefix("http") + "/api/v1/events"
    left = args.count

    def show(event: dict[str, Any]) -> bool:
        nonlocal left
        print(json.dumps(event) if args.json else event_line(event), file=out, flush=True)
        if left is not None:
            left -= 1
        return left is not None and left <= 0

    async def tail() -> None:
        try:
            async with open_websocket_url(
                url, ssl_context=api.ssl_context, connect_timeout=TIMEOUT
            ) as ws:
                # The token as the first message (the dashboard's way): a
                # wrong one is refused at once, not after a wait.
                await ws.send_message(api.token or "")
                with trio.move_on_after(TIMEOUT) as waiting:
                    hello = json.loads(await ws.get_message())
                if waiting.cancelled_caught:
                    raise CtlError(f"no answer from the event stream at {url}")
                print(f"tailing events from {url} (Ctrl-C stops)", file=sys.stderr, flush=True)
                if args.recent and any(show(e) for e in hello.get("recent", [])):
                    return
                while True:
                    if show(json.loads(await ws.get_message())):
                        return
        except ConnectionClosed as exc:
            reason = exc.reason
            detail = f"{reason.code} {reason.reason or ''}".strip() if reason else "closed"
            raise CtlError(f"the event stream closed: {detail}") from None
        except HandshakeError as exc:
            raise CtlError(f"cannot open the event stream at {url}: {exc}") from None
        except OSError as exc:
            raise CtlError(f"cannot reach the admin API at {api.url}: {exc}") from None

    # Ctrl-C: the way to stop tailing. Trio raises it in the task that runs
    # when the signal comes: trio-websocket's reader task, at times, whose
    # nursery then raises it in an exception group.
    try:
        trio.run(tail)
    except* KeyboardInterrupt:
        pass


def run(args: argparse.Namespace, out: Any = None) -> int:
    out = out or sys.stdout
    url = args.url or os.environ.get("PMLB_ADMIN_URL") or DEFAULT_URL
    token = args.token or os.environ.get("PMLB_ADMIN_TOKEN")
    api = Api(url, token, insecure=args.insecure)
    if getattr(args, "stream", None) is not None:
        try:
            args.stream(api, args, out)
        except CtlError as exc:
            print(f"pmlb ctl: {exc}", file=sys.stderr)
            return 1
        return 0
    try:
        answer, text = args.run(api, args)
    except CtlError as exc:
        print(f"pmlb ctl: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2) if args.json else text, file=out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pmlb")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(argv))
