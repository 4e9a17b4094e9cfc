"""Liveness and readiness."""

from __future__ import annotations

from native.ports import free_port
from service.app import create_app


def test_healthz_and_readyz_when_redis_is_up(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    assert client.get("/readyz").get_json() == {"status": "ready"}


def test_liveness_does_not_depend_on_redis():
    client = create_app({"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}).test_client()
    assert client.get("/healthz").status_code == 200
    r = client.get("/readyz")
    assert r.status_code == 503
    assert r.get_json() == {"err_msg": "Store unavailable, try again later"}
