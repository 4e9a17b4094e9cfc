"""The reference app's and the instrumented peer's gunicorn settings; the benchmark tries
several models to find each one's best."""

import os

# As the service's (service/config.py binds): its TCP address, and the Unix socket that nginx
# uses when make run's stack gives one (APP_SOCKET), so both sit behind the same nginx.
_socket = os.environ.get("APP_SOCKET", "")
bind = [os.environ["APP_BIND"], *([f"unix:{_socket}"] if _socket else [])]
workers = int(os.environ["WEB_CONCURRENCY"])
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "sync")
threads = int(os.environ.get("GUNICORN_THREADS", "1")) if worker_class == "gthread" else 1
keepalive = 75  # as the service's: nginx keeps upstream connections open (gthread only)
accesslog = None
control_socket_disable = True  # as the service's: none under $HOME, shared by every gunicorn

if os.environ.get("PEER_METRICS_PORT"):  # the peer: prometheus-flask-exporter's two hooks
    from prometheus_flask_exporter.multiprocess import GunicornPrometheusMetrics

    def when_ready(server):
        GunicornPrometheusMetrics.start_http_server_when_ready(
            int(os.environ["PEER_METRICS_PORT"]), host="127.0.0.1"
        )

    def child_exit(server, worker):
        GunicornPrometheusMetrics.mark_process_dead_on_child_exit(worker.pid)
