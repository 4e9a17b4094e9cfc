"""`make bench-signals` (python -m bench.signals): what each observability signal costs.

The app's own request path only (no gunicorn, no nginx), measured in one process as CPU
time per request against a real redis-server: the reference app, the service with every
signal on, and the service built without one signal after another. Variants take turns,
in rounds; the medians are printed with their ratio to the reference.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import logging.config
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO, cast
from unittest import mock

# Metric values live in files in multiprocess mode, as under gunicorn; set before importing.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="bench-signals-"))

from opentelemetry.sdk.trace import TracerProvider
from werkzeug.test import EnvironBuilder

from native.ports import free_port
from service import logs, speedups, telemetry
from tests.harness import redis_executor
from tests.otlp_receiver import start_receiver

# name: (what is left out, sampler, other settings)
VARIANTS = {
    "as shipped (traces: 1/s per process + 1%; the edge writes the access line)": ((), "", {}),
    "and the app's own access line (APP_ACCESS_LOG=true)": ((), "", {"APP_ACCESS_LOG": "true"}),
    "every request traced": ((), "parentbased_always_on", {}),
    "none traced (the sampling decision only)": ((), "always_off", {}),
    "no tracing": (("tracing",), "", {}),
    "no tracing, no request metrics": (("tracing", "metrics"), "", {}),
    "nothing (no request id either)": (("tracing", "metrics", "request id"), "", {}),
}


@contextlib.contextmanager
def leaving_out(parts: tuple[str, ...]) -> Iterator[None]:
    """create_app() without the named parts (for measuring them, never for running); tracing
    is left out by giving no tracer provider."""
    with contextlib.ExitStack() as stack:
        if "request id" in parts:
            stack.enter_context(mock.patch("service.request_id.init_app", lambda app: None))
        if "metrics" in parts:
            stack.enter_context(mock.patch("service.metrics.RequestMetrics.init_app", mock.Mock()))
        yield


def build_apps(
    redis_url: str, provider: TracerProvider | None
) -> dict[str, Callable[..., Iterable[bytes]]]:
    """Each variant's WSGI app, traced by provider unless it leaves tracing out."""
    from service.app import create_app

    os.environ["REFERENCE_REDIS_URL"] = redis_url
    from bench.reference_app import app as reference

    apps: dict[str, Callable[..., Iterable[bytes]]] = {"reference": reference.wsgi_app}
    for name, (parts, sampler, settings) in VARIANTS.items():
        env = {"REDIS_URL": redis_url, "OTEL_TRACES_SAMPLER": sampler, **settings}
        with leaving_out(parts):
            app = create_app(env, None if "tracing" in parts else provider)
        apps[name] = app.wsgi_app
    return apps


def environs(scenario: str, n: int, digest: str) -> list[dict[str, Any]]:
    """n WSGI requests of a scenario, as nginx would pass them on."""
    headers = {"X-Request-ID": "bench-signals"}
    if scenario == "post":
        return [
            EnvironBuilder(
                path="/messages",
                method="POST",
                headers=headers,  # type: ignore[arg-type]  # a dict works: Headers(headers)
                data=json.dumps({"message": f"signals {time.time_ns()} {i}"}),
                content_type="application/json",
            ).get_environ()
            for i in range(n)
        ]
    path = "/messages/" + (digest if scenario == "hit" else "0" * 64)
    return [
        EnvironBuilder(path=path, headers=headers).get_environ()  # type: ignore[arg-type]  # as above
        for _ in range(n)
    ]


def cpu_per_request(app: Callable[..., Iterable[bytes]], requests: list[dict[str, Any]]) -> float:
    """CPU microseconds per request for serving the given requests."""

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: object = None
    ) -> None:
        return None

    started = time.process_time()
    for environ in requests:
        b"".join(app(environ, start_response))
    return (time.process_time() - started) / len(requests) * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.signals", description=__doc__)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--requests", type=int, default=300, help="per variant and round")
    args = p.parse_args(argv)
    logging.config.dictConfig(logs.logging_config())  # as gunicorn.conf.py does
    speedups.lighten_records()
    speedups.cache_pid_for_multiprocess_values()
    sink = start_receiver(keep=False)  # a collector elsewhere: count only
    with tempfile.TemporaryDirectory() as scratch:
        redis = redis_executor(Path(scratch), free_port())
        redis.start()
        try:
            redis_url = f"redis://127.0.0.1:{redis.port}/0"
            os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = sink.endpoint
            provider = telemetry.setup_tracing()
            # Log lines go where gunicorn's stdout would: not this terminal.
            with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
                for handler in logging.getLogger().handlers:
                    # logs.logging_config()'s handlers: StreamHandlers
                    cast("logging.StreamHandler[TextIO]", handler).setStream(devnull)
                apps = build_apps(redis_url, provider)
                digest = _stored_digest(apps["reference"])
                results = _measure(apps, args, digest)
                telemetry.shutdown()  # the last spans, while the sink listens
        finally:
            redis.stop()
            sink.close()
    _print(results)
    return 0


def _stored_digest(reference: Callable[..., Iterable[bytes]]) -> str:
    body: list[bytes] = []
    environ = environs("post", 1, "")[0]
    body.extend(reference(environ, lambda *a: None))
    return cast(str, json.loads(b"".join(body))["digest"])


def _measure(
    apps: dict[str, Callable[..., Iterable[bytes]]], args: argparse.Namespace, digest: str
) -> dict[str, dict[str, list[float]]]:
    results: dict[str, dict[str, list[float]]] = {}
    for scenario in ("post", "hit", "miss"):
        samples: dict[str, list[float]] = {name: [] for name in apps}
        for round_ in range(args.rounds + 1):  # round 0 warms up
            names = list(apps) if round_ % 2 else list(apps)[::-1]
            for name in names:
                cost = cpu_per_request(apps[name], environs(scenario, args.requests, digest))
                if round_:
                    samples[name].append(cost)
        results[scenario] = samples
    return results


def _print(results: dict[str, dict[str, list[float]]]) -> None:
    for scenario, samples in results.items():
        reference = statistics.median(samples["reference"])
        print(f"\n{scenario}: CPU per request, median of {len(samples['reference'])} rounds")
        print("| variant | µs | ratio to reference |\n|---|---|---|")
        for name, values in samples.items():
            cost = statistics.median(values)
            print(f"| {name} | {cost:.0f} | {cost / reference:.2f} |")


if __name__ == "__main__":
    raise SystemExit(main())
