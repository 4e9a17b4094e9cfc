"""The reference app's gunicorn settings; the benchmark tries several to find its best."""

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
