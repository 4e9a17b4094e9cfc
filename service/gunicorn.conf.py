"""Gunicorn's process model, from the environment (see service/config.py), and the hooks that
make the workers' metrics one set of numbers."""

import os
import shutil
import tempfile

# prometheus_client picks where metric values live when it is first imported, in this master
# process too: the multiprocess folder must be in the environment before anything imports it,
# so before the service's modules below. (on_starting checks that this held.)
# On tmpfs when there is one: workers update these files on every request.
_METRICS_DIR_PREFIX = "messages-metrics-"
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    _shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix=_METRICS_DIR_PREFIX, dir=_shm)
# Made here, known by its name: a reload (SIGHUP) runs this file again in the same master,
# which then finds the folder it made at start already set, and must still remove it on exit.
_own_metrics_dir = os.path.basename(os.environ["PROMETHEUS_MULTIPROC_DIR"]).startswith(
    _METRICS_DIR_PREFIX
)

from service.config import ServerSettings  # noqa: E402
from service.logs import logging_config  # noqa: E402
from service.server_errors import json_server_errors  # noqa: E402
from service.speedups import (  # noqa: E402
    NoAccessLogger,
    cache_pid_for_multiprocess_values,
    lighten_records,
)

cache_pid_for_multiprocess_values()  # before any metric value exists, in any process

_server = ServerSettings.from_env()

bind = _server.binds
workers = _server.workers
# nginx buffers whole requests, so a worker never waits on a slow client (either class).
worker_class = _server.worker_class
threads = _server.threads_per_worker  # more than 1 would make gunicorn pick gthread
timeout = _server.timeout
graceful_timeout = _server.graceful_timeout  # SIGTERM: finish in-flight requests, then exit
# Nginx's header limits (nginx.conf.template: large_client_header_buffers): over HTTP/1.1
# nginx refuses an oversized request first; over HTTP/2 a header over 8 KiB that compresses
# under nginx's limit gets here, and gunicorn refuses it with nginx's JSON 431.
limit_request_line = 8190
limit_request_field_size = 8190
limit_request_fields = 32768
json_server_errors()  # gunicorn's own refusals in JSON, not HTML
keepalive = 75  # gthread: longer than nginx's upstream keepalive_timeout, so nginx closes first
# Connections waiting to be accepted: nginx sends an instance at most EDGE_APP_MAX_CONNS at
# once (32) and sheds the rest itself, so this queue stays short; bounded anyway (the
# default is 2048: seconds of work at this app's rate).
backlog = 128
accesslog = None  # nginx and the app write access lines
logger_class = NoAccessLogger
# Every log line, gunicorn's and the app's, as JSON on stdout.
logconfig_dict = logging_config()
lighten_records()
# Heartbeat files in memory, off the disk and off overlayfs in containers.
worker_tmp_dir = "/dev/shm"
control_socket_disable = True  # no runtime control socket under $HOME
forwarded_allow_ips = "*"  # only nginx can reach us; it sets X-Forwarded-*


def on_starting(server):
    """Start from empty metric files: values left by an earlier run would be added in."""
    from prometheus_client import values

    if values.ValueClass.__name__ != "MmapedValue":
        raise RuntimeError("prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set")
    folder = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):
        os.remove(os.path.join(folder, name))


def when_ready(server):
    """Serve the sum over all workers on the internal metrics port, from the master."""
    from prometheus_flask_exporter.multiprocess import GunicornPrometheusMetrics

    host, _, port = _server.metrics_bind.rpartition(":")
    GunicornPrometheusMetrics.start_http_server_when_ready(int(port), host)
    server.log.info("Serving metrics at http://%s/metrics", _server.metrics_bind)


def post_fork(server, worker):
    """Tracing is set up in each worker, never in the master: its exporter thread and
    connections would not survive the fork."""
    from service import telemetry

    telemetry.setup_tracing()


def worker_exit(server, worker):
    """Send the spans a worker still holds before it goes."""
    from service import telemetry

    telemetry.shutdown()


def child_exit(server, worker):
    """A dead worker's in-flight gauge must stop counting; its counters stay in the sum."""
    from prometheus_flask_exporter.multiprocess import GunicornPrometheusMetrics

    GunicornPrometheusMetrics.mark_process_dead_on_child_exit(worker.pid)


def on_exit(server):
    """Remove the metrics folder if this master made it."""
    if _own_metrics_dir:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
