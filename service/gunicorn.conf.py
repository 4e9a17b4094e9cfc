"""Gunicorn's process model, from the environment (see service/config.py)."""

from service.config import ServerSettings

_server = ServerSettings.from_env()

bind = _server.bind
workers = _server.workers
# gthread keeps nginx's upstream connections alive (sync workers close each one); nginx
# buffers whole requests, so a thread never waits on a slow client.
worker_class = "gthread"
threads = _server.threads
timeout = _server.timeout
graceful_timeout = _server.graceful_timeout  # SIGTERM: finish in-flight requests, then exit
keepalive = 75  # longer than nginx's upstream keepalive_timeout, so nginx closes first
accesslog = None  # nginx writes the access log
# Every log line, gunicorn's and the app's, to stdout (gunicorn's default is stderr).
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "generic": {
            "format": "%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s",
            "datefmt": "[%Y-%m-%d %H:%M:%S %z]",
        }
    },
    "handlers": {
        "stdout": {
            "class": "logging.StreamHandler",
            "formatter": "generic",
            "stream": "ext://sys.stdout",
        }
    },
    "loggers": {"gunicorn.error": {"level": "INFO", "handlers": ["stdout"], "propagate": False}},
    "root": {"level": "INFO", "handlers": ["stdout"]},
}
# Heartbeat files in memory, off the disk and off overlayfs in containers.
worker_tmp_dir = "/dev/shm"  # noqa: S108
control_socket_disable = True  # no runtime control socket under $HOME
forwarded_allow_ips = "*"  # only nginx can reach us; it sets X-Forwarded-*
