"""Guards for service/speedups.py: each checks, against the installed library, the internals
one speedup relies on, and fails naming the library and its version. After upgrading Flask,
Werkzeug, gunicorn, prometheus_client, redis-py or an OpenTelemetry instrumentation, a failure
here says which speedup to revisit (or drop) before anything else breaks."""

from __future__ import annotations

import contextvars
import inspect
import logging
import sys
from collections.abc import Callable
from importlib.metadata import version

import flask
import redis
from flask import Flask
from flask.json.provider import DefaultJSONProvider, JSONProvider
from gunicorn.glogging import Logger as GunicornLogger
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import values
from redis.cluster import RedisCluster
from werkzeug.local import LocalProxy

from service import speedups
from service.jsonio import OrjsonProvider
from tests.helpers import run_in_multiprocess_mode


def holds(assumption: bool, library: str, broken: str) -> None:
    """Fail, naming the library, its installed version and what no longer holds."""
    assert assumption, f"{library} {version(library)}: {broken}; see service/speedups.py"


def parameters(function: Callable[..., object]) -> list[str]:
    return list(inspect.signature(function).parameters)


# FlaskEnsureSyncOnce


def test_flask_ensure_sync_takes_one_function_and_answers_by_it_alone():
    holds(
        parameters(Flask.ensure_sync) == ["self", "func"],
        "flask",
        "Flask.ensure_sync no longer takes (self, func)",
    )

    def view() -> str:
        return "ok"

    async def async_view() -> str:
        return "ok"

    adapted = object()

    class App(Flask):
        def async_to_sync(self, func):  # Flask's needs asgiref, not installed here
            return adapted

    app = App(__name__)
    holds(
        app.ensure_sync(view) is view,
        "flask",
        "Flask.ensure_sync no longer answers a plain function with itself",
    )
    holds(
        app.ensure_sync(async_view) is adapted,
        "flask",
        "Flask.ensure_sync no longer adapts a coroutine function by async_to_sync",
    )


def test_flask_asks_ensure_sync_for_every_hook_and_view_on_every_request():
    asked: list[str] = []

    class Counting(Flask):
        def ensure_sync(self, func):
            asked.append(getattr(func, "__name__", ""))
            return super().ensure_sync(func)

    app = Counting(__name__)
    app.before_request(lambda: None)

    @app.get("/")
    def index() -> str:
        return "ok"

    app.test_client().get("/")
    holds(
        {"<lambda>", "index"} <= set(asked),
        "flask",
        f"requests no longer go through Flask.ensure_sync (asked for {asked})",
    )


def test_ensure_sync_is_asked_of_flask_once_per_function():
    calls: list[object] = []

    class Recording(Flask):
        def ensure_sync(self, func):
            calls.append(func)
            return super().ensure_sync(func)

    class App(speedups.FlaskEnsureSyncOnce, Recording):
        pass

    app = App(__name__)

    @app.get("/")
    def index() -> str:
        return "ok"

    client = app.test_client()
    assert client.get("/").status_code == client.get("/").status_code == 200
    assert calls.count(index) == 1


# current_request


def test_flask_request_is_a_werkzeug_proxy_that_unwraps_to_the_request():
    holds(
        type(flask.request) is LocalProxy,
        "flask",
        "flask.request is no longer a werkzeug.local.LocalProxy",
    )
    app = Flask(__name__)
    with app.test_request_context("/x") as context:
        unwrapped = speedups.current_request()
        holds(
            unwrapped is context.request,
            "werkzeug",
            "LocalProxy._get_current_object() no longer returns the object behind it",
        )
        assert type(unwrapped) is flask.Request


# json_response


def test_json_provider_keeps_its_app_and_prepares_jsonify_arguments():
    app = Flask(__name__)
    provider = JSONProvider(app)
    holds(
        getattr(provider, "_app", None) == app,
        "flask",
        "JSONProvider no longer keeps its app as _app",
    )
    prepare = getattr(provider, "_prepare_response_obj", None)
    holds(callable(prepare), "flask", "JSONProvider._prepare_response_obj is gone")
    assert prepare is not None
    holds(
        prepare((), {"a": 1}) == {"a": 1}
        and prepare(([1],), {}) == [1]
        and prepare((1, 2), {}) == (1, 2)
        and prepare((), {}) is None,
        "flask",
        "JSONProvider._prepare_response_obj no longer makes jsonify()'s object",
    )


def test_orjson_responses_are_flasks_own_byte_for_byte():
    app = Flask(__name__)
    with app.app_context():
        for args, kwargs in [((), {"digest": "ab", "n": 1}), (([1, "é"],), {})]:
            ours = OrjsonProvider(app).response(*args, **kwargs)
            flasks = DefaultJSONProvider(app).response(*args, **kwargs)
            holds(
                ours.get_data() == flasks.get_data().decode("unicode_escape").encode(),
                "flask",
                "jsonify()'s body is no longer compact JSON with a final newline",
            )
            assert (type(ours), ours.mimetype) == (type(flasks), flasks.mimetype)


# cache_pid_for_multiprocess_values

MULTIPROCESS_ASSUMPTIONS = """
import contextvars
import inspect
from prometheus_client import Counter, values
from service import speedups
assert values.ValueClass._multiprocess is True, "in multiprocess mode, ValueClass._multiprocess"
params = inspect.signature(values.MultiProcessValue).parameters
assert "process_identifier" in params, "MultiProcessValue takes process_identifier"
speedups.cache_pid_for_multiprocess_values()
counter = Counter("guarded", "A counter made after the class was replaced")
assert type(counter._value) is values.ValueClass, "metrics make values from values.ValueClass"
counter.inc()
print("ok")
"""


def test_prometheus_client_multiprocess_values_are_made_as_the_pid_cache_assumes(tmp_path):
    run = run_in_multiprocess_mode(MULTIPROCESS_ASSUMPTIONS, tmp_path)
    broken = run.stderr.strip().splitlines()[-1:] or ["?"]
    holds(
        run.returncode == 0 and run.stdout.strip() == "ok",
        "prometheus_client",
        f"no longer as assumed ({broken[0]})",
    )


def test_without_multiprocess_mode_the_pid_cache_changes_nothing():
    holds(
        values.MutexValue._multiprocess is False,
        "prometheus_client",
        "values.MutexValue._multiprocess is no longer False",
    )
    before = values.ValueClass
    speedups.cache_pid_for_multiprocess_values()  # this process has no multiprocess folder
    assert values.ValueClass is before


# lighten_records


class Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def record_logged() -> logging.LogRecord:
    logger = logging.getLogger("tests.speedups")
    keep = Keep()
    logger.addHandler(keep)
    logger.propagate = False
    try:
        logger.warning("x")
    finally:
        logger.removeHandler(keep)
    return keep.records[0]


def test_logging_switches_leave_out_the_caller_and_the_thread_and_process_names():
    python = f"Python {sys.version.split()[0]}"
    assert hasattr(logging, "_srcfile"), f"{python}: logging._srcfile is gone"
    saved = (logging._srcfile, logging.logThreads, logging.logMultiprocessing)
    try:
        assert record_logged().pathname == __file__  # as logging comes
        speedups.lighten_records()
        record = record_logged()
    finally:
        logging._srcfile, logging.logThreads, logging.logMultiprocessing = saved
    found = (record.pathname, record.funcName, record.threadName, record.processName)
    assert found == ("(unknown file)", "(unknown function)", None, None), (
        f"{python}: logging no longer skips these: {found}; see service/speedups.py"
    )


# NoAccessLogger


def test_gunicorn_logs_access_through_logger_access():
    holds(
        parameters(GunicornLogger.access) == ["self", "resp", "req", "environ", "request_time"],
        "gunicorn",
        "Logger.access no longer takes (resp, req, environ, request_time)",
    )
    assert parameters(speedups.NoAccessLogger.access) == parameters(GunicornLogger.access)


# RedisClientPerTracing (in service/redis_clients.py: the store's concern; its assumption here)


def test_instrumenting_one_redis_client_leaves_other_clients_and_the_class_alone():
    holds(
        "tracer_provider" in parameters(RedisInstrumentor.instrument_client),
        "opentelemetry-instrumentation-redis",
        "RedisInstrumentor.instrument_client no longer takes tracer_provider",
    )
    traced, plain = redis.Redis(), redis.Redis()  # no connection until a command
    RedisInstrumentor.instrument_client(traced, tracer_provider=TracerProvider())
    holds(
        "execute_command" in vars(traced)
        and "execute_command" not in vars(plain)
        and not hasattr(redis.Redis.execute_command, "__wrapped__"),
        "opentelemetry-instrumentation-redis",
        "instrument_client no longer instruments just the client it is given",
    )


def test_instrumenting_a_cluster_client_leaves_its_nodes_alone():
    cluster = RedisCluster.__new__(RedisCluster)  # not connected: no nodes to look at
    RedisInstrumentor.instrument_client(cluster, tracer_provider=TracerProvider())
    holds(
        "execute_command" in vars(cluster) and "pipeline" in vars(cluster),
        "opentelemetry-instrumentation-redis",
        "instrument_client no longer wraps a cluster client's own commands",
    )
    holds(
        parameters(RedisCluster.get_node_from_key)[:2] == ["self", "key"]
        and "node" in parameters(RedisCluster.get_redis_connection),
        "redis",
        "RedisCluster.get_node_from_key(key) or get_redis_connection(node) changed",
    )


# trace_sampled_requests_only


def instrumented_app() -> tuple[Flask, InMemorySpanExporter]:
    app = Flask(__name__)

    @app.get("/<name>")
    def page(name: str) -> str:
        return name

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    FlaskInstrumentor.instrument_app(app, tracer_provider=provider)
    return app, exporter


def test_flask_instrumentor_leaves_the_hooks_and_the_wsgi_app_we_look_for():
    app, _ = instrumented_app()
    library = "opentelemetry-instrumentation-flask"
    holds(
        speedups.ORIGINAL_WSGI_APP in vars(app),
        library,
        f"instrument_app() no longer keeps app.{speedups.ORIGINAL_WSGI_APP}",
    )
    for attribute, prefix in speedups.FLASK_INSTRUMENTOR_HOOKS.items():
        names = [f.__qualname__ for f in getattr(app, attribute).get(None, [])]
        found = [name for name in names if name.startswith(prefix)]
        holds(
            len(found) == 1, library, f"app.{attribute} has {names}, not one hook named {prefix}*"
        )


def test_only_sampled_requests_are_traced():
    app, exporter = instrumented_app()
    traced = contextvars.ContextVar("traced", default=False)
    speedups.trace_sampled_requests_only(app, lambda env: env["PATH_INFO"] == "/yes", traced)
    client = app.test_client()
    assert client.get("/yes").text == "yes"
    assert client.get("/no").text == "no"
    holds(
        [
            span.attributes.get("url.path", span.attributes.get("http.target"))
            for span in exporter.get_finished_spans()
        ]
        == ["/yes"],
        "opentelemetry-instrumentation-flask",
        "requests around the instrumentation are traced, or sampled ones are not",
    )
