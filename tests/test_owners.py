"""One owner per record: no module but ``pmlb/downstream/client.py`` writes a Client's fields.

The rest of pmlb calls :class:`~pmlb.downstream.client.Client`'s methods
(``received``, ``sent``, ``set_dispatching``...). The scan is by name, so it
is conservative: any attribute store or delete, outside ``client.py``, of a
name that is one of Client's slots counts, whatever the object, except on
``self`` (no other class is a Client) and the few stores below on records
that are not Clients and share a field name with it.
"""

from __future__ import annotations

import ast
from pathlib import Path

from pmlb.downstream.client import Client

PMLB = Path(__file__).resolve().parent.parent / "pmlb"
OWNER = PMLB / "downstream" / "client.py"

#: (module, the stored expression): stores of a Client field name on other records
NOT_CLIENTS = {
    ("upstream/acks.py", "request.seq"),  # an InputStreamRequest's sequence number
    ("hub/upstreams.py", "upstream.draining"),  # an Upstream's
    ("_log.py", "setattr(record, name, value)"),  # a logging.LogRecord's extra fields
}


def _is_store(node: ast.AST, fields: frozenset[str]) -> bool:
    if isinstance(node, ast.Attribute):
        return (
            isinstance(node.ctx, ast.Store | ast.Del)
            and node.attr in fields
            and not (isinstance(node.value, ast.Name) and node.value.id == "self")
        )
    # setattr/delattr of a field, or of a name not known here
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in {"setattr", "delattr"}
        and len(node.args) >= 2
        and not (isinstance(node.args[1], ast.Constant) and node.args[1].value not in fields)
    )


def client_stores(source: str, fields: frozenset[str]) -> list[tuple[int, str]]:
    """(line, expression) of each store or delete of a ``fields`` attribute not on ``self``."""
    found = [
        (node.lineno, ast.unparse(node))
        for node in ast.walk(ast.parse(source))
        if _is_store(node, fields)
    ]
    return sorted(found)


FIELDS = frozenset(Client.__slots__)


def test_the_scan_finds_a_store_of_a_client_field() -> None:
    source = """
def f(client, c, x):
    client.bytes_in += 1
    c.dispatching = True
    with scope() as client.dispatch_scope:
        pass
    x.client.seq, y = 1, 2
    setattr(client, "last_active", 0.0)
    del client.close_reason
    self.seq = 1  # some other class's own field
    client.bytes_in == 1
    client.unrelated = 1
"""
    assert [line for line, _ in client_stores(source, FIELDS)] == [3, 4, 5, 7, 8, 9]


def test_no_module_but_client_py_writes_a_client_field() -> None:
    stores = []
    for path in sorted(PMLB.rglob("*.py")):
        if path == OWNER or "_proto" in path.parts:
            continue
        module = path.relative_to(PMLB).as_posix()
        for line, expression in client_stores(path.read_text(), FIELDS):
            if (module, expression) not in NOT_CLIENTS:
                stores.append(f"{module}:{line}: {expression}")
    assert stores == [], "write Client fields through its methods (pmlb/downstream/client.py)"
