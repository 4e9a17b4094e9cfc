"""X-Request-ID: kept when well-formed, replaced otherwise, on every response."""

from __future__ import annotations

import pytest


def test_a_well_formed_request_id_is_kept(client):
    r = client.get("/healthz", headers={"X-Request-ID": "abc-123_x.y:z"})
    assert r.headers["X-Request-ID"] == "abc-123_x.y:z"


@pytest.mark.parametrize("given", ["", "has space", "x" * 129, "semi;colon", "ünï"])
def test_a_malformed_request_id_is_replaced(client, given):
    r = client.get("/healthz", headers={"X-Request-ID": given})
    assert r.headers["X-Request-ID"] != given
    assert len(r.headers["X-Request-ID"]) == 32
