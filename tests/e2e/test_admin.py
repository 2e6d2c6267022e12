"""The admin listener: health, readiness and Prometheus text."""

from __future__ import annotations

import httpx
import pytest

from conftest import Sluice

pytestmark = pytest.mark.sluice


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_probes(sluice: Sluice, path: str) -> None:
    assert httpx.get(f"http://{sluice.admin}{path}", timeout=5.0).status_code == 200


def test_metrics_is_prometheus_text(sluice: Sluice) -> None:
    resp = httpx.get(f"http://{sluice.admin}/metrics", timeout=5.0)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain"), resp.headers
