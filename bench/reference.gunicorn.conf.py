"""The reference app's gunicorn settings; the benchmark tries several to find its best."""

import os

bind = os.environ["APP_BIND"]
workers = int(os.environ["WEB_CONCURRENCY"])
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "sync")
threads = int(os.environ.get("GUNICORN_THREADS", "1")) if worker_class == "gthread" else 1
keepalive = 75  # as the service's: nginx keeps upstream connections open (gthread only)
accesslog = None
