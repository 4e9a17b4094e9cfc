"""Gunicorn's process model: several workers, logs on stdout, graceful stop on SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path

import psutil
import pytest
import requests
from mirakuru import HTTPExecutor

from native.configs import render_nginx
from native.processes import prepare_stack
from native.settings import StackConfig, app_socket
from tests.harness import free_ports_env
from tests.helpers import eventually
from tests.metrics_text import value

COUNT = "flask_http_request_duration_seconds_count"


def env_address(app) -> str:
    return app.env["METRICS_BIND"]


pytestmark = pytest.mark.stack


def test_workers_log_to_stdout_and_stop_on_sigterm(tmp_path):
    env = {**free_ports_env(), "STATE_DIR": str(tmp_path), "WEB_CONCURRENCY": "3"}
    app = next(p for p in prepare_stack(StackConfig.from_env(env)) if p.name == "app")
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("w") as stdout, err.open("w") as stderr:
        health = f"http://127.0.0.1:{app.port}/healthz"
        gunicorn = HTTPExecutor(
            app.argv,
            url=health,
            method="GET",
            envvars=app.env,
            stdout=stdout,
            stderr=stderr,
            timeout=60,
        )
        with gunicorn:
            master = psutil.Process(gunicorn.process.pid)
            # The master forks them one by one: the first may answer before the last exists.
            eventually(lambda: len(master.children()) == 3, 30)
            # No Redis is running: the app logs a warning, and it must reach stdout.
            r = requests.get(f"http://127.0.0.1:{app.port}/readyz", timeout=10)
            assert r.status_code == 503
            # As in make run, nothing set PROMETHEUS_MULTIPROC_DIR: the config did, early
            # enough for the master to sum what the workers counted.
            assert "PROMETHEUS_MULTIPROC_DIR" not in app.env
            scrape = requests.get(f"http://{env_address(app)}/metrics", timeout=10).text
            assert value(scrape, COUNT, path="/readyz", status="503") == 1
        assert gunicorn.process is None  # stopped by SIGTERM, exit code 0
    assert "store unavailable" in out.read_text()
    assert "Shutting down: Master" in out.read_text()
    assert err.read_text() == ""


def test_natively_the_app_also_listens_on_a_unix_socket_that_nginx_uses(tmp_path):
    cfg = StackConfig.from_env({**free_ports_env(), "STATE_DIR": str(tmp_path)})
    app = next(p for p in prepare_stack(cfg) if p.name == "app")
    sock = app_socket(cfg, 1)
    assert app.env["APP_SOCKET"] == str(sock)
    assert f"server unix:{sock} max_conns=16 max_fails=0;" in render_nginx(cfg).read_text()
    health = f"http://127.0.0.1:{app.port}/healthz"
    with HTTPExecutor(app.argv, url=health, method="GET", envvars=app.env, timeout=60):
        with socket.socket(socket.AF_UNIX) as client:  # HTTP/1.0 over the socket
            client.connect(str(sock))
            client.sendall(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            answer = b"".join(iter(lambda: client.recv(4096), b""))
        assert answer.startswith(b"HTTP/1.0 200 ") and b'"status":"ok"' in answer
        # The TCP port still serves: health probes and scrapes use it.
        assert requests.get(f"http://127.0.0.1:{app.port}/healthz", timeout=10).ok


def test_a_state_folder_too_deep_for_a_socket_path_falls_back_to_tcp(tmp_path):
    deep = tmp_path / ("d" * 100)
    cfg = StackConfig.from_env({**free_ports_env(), "STATE_DIR": str(deep)})
    assert app_socket(cfg, 1) is None
    app = next(p for p in prepare_stack(cfg) if p.name == "app")
    assert app.env["APP_SOCKET"] == ""
    assert f"server 127.0.0.1:{app.port} max_conns=16 max_fails=0;" in render_nginx(cfg).read_text()


def test_a_reloaded_master_keeps_its_metrics_and_removes_its_metrics_folder(tmp_path):
    # make reload sends gunicorn SIGHUP, which runs gunicorn.conf.py again in the master:
    # that run finds PROMETHEUS_MULTIPROC_DIR set (by the first) and must still own it.
    env = {**free_ports_env(), "STATE_DIR": str(tmp_path), "WEB_CONCURRENCY": "2"}
    app = next(p for p in prepare_stack(StackConfig.from_env(env)) if p.name == "app")
    health = f"http://127.0.0.1:{app.port}/healthz"
    metrics = f"http://{env_address(app)}/metrics"
    gunicorn = HTTPExecutor(app.argv, url=health, method="GET", envvars=app.env, timeout=60)
    with gunicorn:
        master = psutil.Process(gunicorn.process.pid)
        eventually(lambda: len(master.children()) == 2, 30)
        assert requests.get(health, timeout=10).ok
        # The folder is known by what the workers have open in it (the master's variable
        # is not in /proc/<pid>/environ: gunicorn.conf.py set it after the start).
        opened = {Path(f.path).parent for w in master.children() for f in w.open_files()}
        (folder,) = {f for f in opened if f.name.startswith("messages-metrics-")}
        old = {w.pid for w in master.children()}
        master.send_signal(signal.SIGHUP)

        def replaced() -> bool:
            now = {w.pid for w in master.children()}
            return len(now) == 2 and not now & old

        eventually(replaced, 30)
        eventually(lambda: requests.get(health, timeout=10).ok, 30)
        # The old workers' counts stay in the sum, the new ones' are added.
        scrape = requests.get(metrics, timeout=10).text
        assert value(scrape, COUNT, path="/healthz", status="200") >= 2
        assert folder.is_dir()
    assert not folder.exists()


@pytest.mark.parametrize(
    ("request_head", "status", "text"),
    [
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n", 431, "headers"),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n", 414, "URI too long"),
        (b"NOT A REQUEST LINE\r\n", 400, "Bad request"),
    ],
)
def test_what_gunicorn_refuses_itself_is_json_not_html(tmp_path, request_head, status, text):
    """Over HTTP/2 nginx passes on a header over 8 KiB that compresses under its limit, and
    gunicorn refuses it before the app sees it: with nginx's JSON, not gunicorn's HTML page."""
    env = {**free_ports_env(), "STATE_DIR": str(tmp_path), "WEB_CONCURRENCY": "1"}
    app = next(p for p in prepare_stack(StackConfig.from_env(env)) if p.name == "app")
    health = f"http://127.0.0.1:{app.port}/healthz"
    gunicorn = HTTPExecutor(app.argv, url=health, method="GET", envvars=app.env, timeout=60)
    with gunicorn, socket.create_connection(("127.0.0.1", app.port), timeout=10) as client:
        client.sendall(request_head + b"\r\n")
        answer = b"".join(iter(lambda: client.recv(4096), b""))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), answer[:200]
    assert b"\r\nContent-Type: application/json\r\n" in head
    assert text in json.loads(body)["err_msg"]
