"""Hooks the benchmark configures by dotted path."""

from __future__ import annotations

from channels_engines.contrib.opentelemetry import Tracing


class SdkTracing(Tracing):
    """The OpenTelemetry hook with spans recorded by the SDK, as in an application that
    traces; nothing is exported, so the cost measured is the hook's and the SDK's."""

    def __init__(self) -> None:
        from opentelemetry.sdk.trace import TracerProvider

        super().__init__(TracerProvider())
