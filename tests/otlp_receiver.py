"""A real OTLP/HTTP trace receiver, standing in for a collector: decodes the protobuf export
requests the app's OTLP exporter sends, counts the spans, and keeps them for the tests (the
benchmark only counts)."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue


@dataclass
class Span:
    """The parts of a received span the tests look at."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    attributes: dict[str, object]
    resource: dict[str, object]


def _value(v: AnyValue) -> object:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def _attributes(pairs: Iterable[KeyValue]) -> dict[str, object]:
    return {kv.key: _value(kv.value) for kv in pairs}


def _span_count(request: ExportTraceServiceRequest) -> int:
    return sum(len(scope.spans) for rs in request.resource_spans for scope in rs.scope_spans)


def _spans(request: ExportTraceServiceRequest) -> list[Span]:
    """Every span of an export request, with its resource's attributes."""
    return [
        Span(
            trace_id=s.trace_id.hex(),
            span_id=s.span_id.hex(),
            parent_span_id=s.parent_span_id.hex(),
            name=s.name,
            kind=s.kind,
            attributes=_attributes(s.attributes),
            resource=_attributes(rs.resource.attributes),
        )
        for rs in request.resource_spans
        for scope in rs.scope_spans
        for s in scope.spans
    ]


@dataclass
class Receiver:
    """Listens on 127.0.0.1:port for POST /v1/traces."""

    server: ThreadingHTTPServer
    keep: bool = True  # False: count the spans, keep nothing
    count: int = 0
    spans: list[Span] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def endpoint(self) -> str:
        """What OTEL_EXPORTER_OTLP_ENDPOINT should say."""
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        """Stop listening."""
        self.server.shutdown()
        self.server.server_close()


def start_receiver(keep: bool = True) -> Receiver:
    """Start a receiver on a free port, serving from a thread."""
    receiver: Receiver

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            count = _span_count(request)
            kept = _spans(request) if receiver.keep else []  # decoding costs the benchmark
            with receiver.lock:
                receiver.count += count
                if receiver.keep:
                    receiver.raw.append(body)
                    receiver.spans.extend(kept)
            self._answer()

        def _answer(self) -> None:
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver = Receiver(server, keep=keep)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return receiver
