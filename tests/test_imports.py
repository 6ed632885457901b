"""What importing parts of pmlb drags in."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "module", ["pmlb", "pmlb.contract", "pmlb._proto.upstream_pb2", "pmlb.config"]
)
def test_upstream_side_modules_do_not_import_trio_asyncio(module: str) -> None:
    # trio-asyncio patches asyncio when imported, which breaks asyncio
    # programs (grpclib and grpcio upstreams) that use pmlb's contract classes.
    code = f"import sys, {module}; print('trio_asyncio' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_public_api_resolves() -> None:
    import pmlb

    assert sorted(pmlb.__all__) == sorted(pmlb._LAZY)
    for name in pmlb.__all__:
        assert getattr(pmlb, name).__name__ == name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = pmlb.nope  # type: ignore[attr-defined]
