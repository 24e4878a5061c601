"""The service's own OpenTelemetry set-up: a 10% ParentBased sampler (a request carrying a
traceparent follows its sampled flag), OTLP to OTEL_EXPORTER_OTLP_ENDPOINT, the framework's
instrumentation. SHOP_OTEL=0 leaves the service uninstrumented."""

from __future__ import annotations

import os


def configure(framework: str) -> None:
    if os.environ.get("SHOP_OTEL", "1") == "0":
        return
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(resource=Resource.create({"service.name": f"shop-{framework}"}),
                              sampler=ParentBased(TraceIdRatioBased(0.1)))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(insecure=True), schedule_delay_millis=200))
    trace.set_tracer_provider(provider)
    if framework == "django":
        from opentelemetry.instrumentation.django import DjangoInstrumentor

        DjangoInstrumentor().instrument()
