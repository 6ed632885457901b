"""The admin's log lines end to end: hypercorn's through pmlb's JSON logging, audit callers."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_admin import AUTH, TOKEN
from tests.helpers import TIMEOUT, Processes

pytestmark = pytest.mark.e2e


async def test_json_mode_keeps_hypercorn_lines_json_and_audit_lines_name_the_caller(
    procs: Processes, tmp_path: Path
) -> None:
    config = tmp_path / "pmlb.toml"
    config.write_text('[management_server]\ntrusted_proxies = ["127.0.0.1"]\n')
    cmd = [sys.executable, "-m", "pmlb", "serve", "--config", str(config), "--port", "0"]
    cmd += ["--admin-port", "0", "--log-format", "json", "--log-level", "debug"]
    pmlb = await procs.start("pmlb", cmd, env={"PMLB_ADMIN_TOKEN": TOKEN})
    url = json.loads((await pmlb.wait_for(r'"msg": "admin listening"')).string)["url"]
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=TIMEOUT) as http:
        mark = pmlb.mark()
        sent = await http.post(
            "/api/v1/broadcast",
            json={"payload": "hi"},
            headers={"X-Forwarded-For": "198.51.100.1, 203.0.113.7"},
        )
        assert sent.status_code == 200
        audit = json.loads((await pmlb.wait_for(r'"msg": "admin: broadcast"', after=mark)).string)
        assert re.fullmatch(r"127\.0\.0\.1:\d+", audit["caller"])
        assert audit["forwarded_for"] == "203.0.113.7"
        access = json.loads(
            (await pmlb.wait_for(r'"msg": "admin request".*"/api/v1/broadcast"')).string
        )
        assert access["logger"] == "pmlb.admin.access"
        assert (access["method"], access["status"]) == ("POST", 200)
        assert isinstance(access["duration"], float)
        assert 0 <= access["duration"] < 10
        assert access["caller"] == audit["caller"]  # the same connection
        # a probe is logged too, at debug level
        await http.get("/healthz")
        await pmlb.wait_for(r'"level": "debug".*"msg": "admin request".*"/healthz"')
        # hypercorn's own error log line, a request it cannot parse
        async with httpx.AsyncClient(base_url=url) as raw:
            await raw.get("/", headers={"Host": "bad host name"})
        lines = [line for line in pmlb.lines if line.strip()]
        assert any('"logger": "pmlb.admin.http"' in line for line in lines)  # "Running on"
        for line in lines:  # nothing but JSON, hypercorn's lines included
            json.loads(line)
