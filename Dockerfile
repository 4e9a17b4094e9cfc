# The app image: gunicorn serving service.wsgi:app on :8000 (nginx terminates TLS in front).
#
# Debian 12's own Python 3.11, on the same base as every other image of the stack
# (monitoring/Dockerfile): security fixes come with Debian's updates, and the image the
# engine tests build here is byte for byte the recipe users build (the official python
# images cannot be pulled on our test machines, so a stand-in would not be what ships).
# make run and the tests use a Python 3.11 too; bump both together.
FROM debian:12.15-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    APP_BIND=0.0.0.0:8000 \
    METRICS_BIND=0.0.0.0:9101

WORKDIR /srv

# Packages are named, not pinned: see monitoring/Dockerfile.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin app

# Dependencies first, so code changes do not reinstall them. hiredis and all others ship
# wheels, so no compiler is needed.
COPY requirements.txt .
RUN pip install --no-compile -r requirements.txt
COPY pyproject.toml .
COPY service/ service/
# The package itself, for its entry points (the samplers OTEL_TRACES_SAMPLER names); its
# dependencies are the ones above. The app runs from /srv/service, as make run runs it.
RUN pip install --no-compile --no-deps . \
 && rm -rf build message_service.egg-info

# Shown by the messages_build_info metric. Last: a new revision rebuilds only this layer.
ARG GIT_REVISION=unknown
ENV GIT_REVISION=$GIT_REVISION
USER 10001

EXPOSE 8000 9101
# Every 5 s: nginx waits for the app to be healthy, so the interval adds to every start.
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]

# Exec form: gunicorn (service/serve.py) is PID 1 and gets SIGTERM from `docker stop` for a
# graceful shutdown. make run starts the app the same way.
CMD ["python", "-m", "service.serve"]
