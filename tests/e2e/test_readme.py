"""The README's two set-up commands, kept true."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import trio

from tests.helpers import ROOT, Processes

pytestmark = pytest.mark.e2e


def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", section, re.S)]


def test_the_readme_test_command_is_what_ci_runs() -> None:
    install_and_run, *_, tests = quick_start_commands()
    assert install_and_run.endswith("pmlb demo")
    # CI runs .ci/run; it installs what the tests need, then runs pytest.
    assert tests == ".ci/run"
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert ci[-1].split()[0] == ".venv/bin/pytest"  # with coverage options and "$@"


async def test_readme_install_command_gives_a_working_demo(
    procs: Processes, tmp_path: Path
) -> None:
    install_and_run = quick_start_commands()[0]
    *install, run = install_and_run.split(" && ")
    venv = tmp_path / "venv"
    # The same commands, with the venv in tmp_path and this checkout as ".".
    script = " && ".join(install).replace(".venv", str(venv)).replace("-e .", f"-e {ROOT}")
    with trio.fail_after(600):
        await trio.run_process(["bash", "-c", script], capture_stdout=True, capture_stderr=True)
    pmlb = str(venv / "bin" / "pmlb")
    assert run.replace(".venv/bin/pmlb", pmlb) == f"{pmlb} demo"
    # Port 0 rather than 7999, which a developer's own demo may hold.
    demo = await procs.start("README demo", [pmlb, "demo", "--port", "0", "--admin-port", "0"])
    port = int((await demo.wait_for(r"listening .*address=127\.0\.0\.1:(\d+)")).group(1))
    await demo.wait_for("upstream serving")
    client = await procs.client(port)
    await client.stream.send_all(b"hello\n")
    assert await client.recv() == "hello"
