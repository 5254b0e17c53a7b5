"""Exports spans and log records to the bridge with the official OpenTelemetry Python SDK.

Usage: otel_sdk_export.py grpc|http ENDPOINT CHILD_SPANS

One root span with CHILD_SPANS children, one INFO log record inside each child (so it carries
the trace context), and one `service.heartbeat` event. Prints the trace id in lowercase hex on
stdout. Exits 1 if any export failed, so the test knows the bridge answered success for all.
"""

import sys

from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult


class Recording:
    """Delegates to an exporter and remembers whether every export succeeded."""

    def __init__(self, inner):
        self.inner = inner
        self.failures = 0

    def export(self, batch):
        result = self.inner.export(batch)
        if getattr(result, "name", str(result)) != "SUCCESS":
            self.failures += 1
        return result

    def shutdown(self, *args, **kwargs):
        return self.inner.shutdown(*args, **kwargs)

    def force_flush(self, *args, **kwargs):
        return self.inner.force_flush(*args, **kwargs) if hasattr(self.inner, "force_flush") else True


class RecordingSpans(Recording, SpanExporter):
    def export(self, batch) -> SpanExportResult:
        return Recording.export(self, batch)


def exporters(mode, endpoint):
    if mode == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return (
            OTLPSpanExporter(endpoint=endpoint, insecure=True, timeout=20),
            OTLPLogExporter(endpoint=endpoint, insecure=True, timeout=20),
        )
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return (
        OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces", timeout=20),
        OTLPLogExporter(endpoint=f"{endpoint}/v1/logs", timeout=20),
    )


def main():
    mode, endpoint, children = sys.argv[1], sys.argv[2], int(sys.argv[3])
    resource = Resource.create(
        {
            "service.name": f"py-interop-{mode}",
            "service.version": "9.9.9",
            "service.instance.id": f"py-interop-{mode}-1",
        }
    )
    span_exporter, log_exporter = exporters(mode, endpoint)
    spans = RecordingSpans(span_exporter)
    logs = Recording(log_exporter)

    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(spans))
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(logs))
    tracer = tracer_provider.get_tracer("interop")
    logger = logger_provider.get_logger("interop")

    with tracer.start_as_current_span("root") as root:
        for i in range(children):
            with tracer.start_as_current_span(f"child-{i}"):
                logger.emit(
                    body=f"child {i} done",
                    severity_number=SeverityNumber.INFO,
                    severity_text="INFO",
                )
        trace_id = format(root.get_span_context().trace_id, "032x")
    logger.emit(event_name="service.heartbeat", body="beat", attributes={"service.status": "UP"})

    flushed = tracer_provider.force_flush(30_000) and logger_provider.force_flush(30_000)
    tracer_provider.shutdown()
    logger_provider.shutdown()
    print(trace_id, flush=True)
    if not flushed or spans.failures or logs.failures:
        print(
            f"flushed={flushed} span export failures={spans.failures} log export failures={logs.failures}",
            file=sys.stderr,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
