"""The distribution's metadata: a name of its own on PyPI, and its license."""

from __future__ import annotations

import tomllib
from pathlib import Path

from pmlb import _version

ROOT = Path(__file__).resolve().parents[1]


def project() -> dict[str, object]:
    data: dict[str, object] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return data


def test_the_distribution_is_not_named_like_the_other_pmlb_on_pypi() -> None:
    # "pmlb" on PyPI is the Penn Machine Learning Benchmark wrapper.
    assert project()["name"] == "pmlb-proxy"
    assert project()["name"] == _version.DISTRIBUTION  # what the admin API reports a version of
    assert "`pip install pmlb-proxy`" in (ROOT / "README.md").read_text()


def test_the_license_is_apache_2_and_shipped() -> None:
    assert project()["license"] == "Apache-2.0"
    assert project()["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text
    assert "Version 2.0, January 2004" in text
