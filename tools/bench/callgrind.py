"""The instructions one run of a Python script costs, counted by callgrind.

The driver of ``tools/bench/accept_callgrind.py``,
``tools/bench/reader_callgrind.py`` and ``tools/hub_callgrind.py``: each
runs its own ``--drive`` mode under ``valgrind --tool=callgrind`` (with
``PYTHONHASHSEED=0``, so that runs compare) and takes the difference of two
runs. Never part of CI.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path


def instructions(script: Path, args: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    """Instructions of ``python script *args`` (callgrind's summary), with ``env`` added."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                str(script),
                *args,
            ],
            check=True,
            capture_output=True,
            env={**os.environ, "PYTHONHASHSEED": "0", **(env or {})},
        )
        found = re.search(r"^summary: (\d+)", out.read_text(), re.M)
        assert found is not None
        return int(found.group(1))
