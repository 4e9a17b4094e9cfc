"""What the trace sink (tests/otlp_receiver.py) received: spans, and traced requests (each
traced request makes one server span, beside a span per Redis command)."""

from __future__ import annotations

from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.otlp_receiver import Receiver

SERVER = Span.SpanKind.SPAN_KIND_SERVER


class SpanTally:
    """Counts the spans a keeping receiver got since the last take, and forgets them."""

    def __init__(self, receiver: Receiver) -> None:
        assert receiver.keep, "the receiver must keep spans to tell server spans apart"
        self.receiver = receiver
        self.counted = 0

    def take(self) -> tuple[int, int]:
        """(spans, server spans) received since the last take."""
        r = self.receiver
        with r.lock:
            spans, r.spans = r.spans, []
            r.raw.clear()
            count, self.counted = r.count - self.counted, r.count
        return count, sum(1 for s in spans if s.kind == SERVER)
