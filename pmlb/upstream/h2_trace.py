"""Keep h2 from building a frame's ``repr`` for each frame it receives.

h2 (4.x, ``H2Connection._receive_frame``) calls
``logger.trace("Received frame: %s", repr(frame))``: the ``repr`` is built
before the call, whatever the logger. For a DATA frame that copies and
hex-encodes the whole body (hyperframe's ``serialize_body``), about 11 µs
for a 700-byte frame and more for larger ones, for a trace line that the
default (dummy) logger drops.

:func:`install` shadows the builtin ``repr`` in ``h2.connection`` (its only
use there is that trace line) with :class:`LazyRepr`, which defers the work
to the moment a logger formats it: a logger that does format gets the same
text.
"""

from __future__ import annotations

import builtins

import h2.connection

__all__ = ["LazyRepr", "install"]


class LazyRepr:
    """``repr(obj)``, computed only when formatted with ``%s``/``%r``/``str()``."""

    __slots__ = ("obj",)

    def __init__(self, obj: object) -> None:
        self.obj = obj

    def __str__(self) -> str:
        return builtins.repr(self.obj)

    __repr__ = __str__


def install() -> None:
    """Make ``h2.connection``'s trace call cheap (idempotent)."""
    h2.connection.repr = LazyRepr  # type: ignore[attr-defined]
