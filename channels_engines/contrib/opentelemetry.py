"""OpenTelemetry spans of a channel layer: ``"hooks": ["opentelemetry"]``.

Needs only the API package, ``opentelemetry-api`` (``pip install
'channels-engines[otel]'``); the application configures the SDK and exporters as usual.

- ``send()`` and ``group_send()`` each get a PRODUCER span, ``send <channel>`` or
  ``group_send <group>``, a child of whatever span is current in the caller. Its context
  travels inside the message, under the key ``CARRIER_KEY``, in W3C trace-context form.
- ``receive()`` gets a CONSUMER span, ``receive <channel>``, with a link to the sender's
  span. It is a child of the span current in the consumer, or, when there is none, of
  the sender's span, so that one trace spans both processes. The carrier is removed
  before the consumer sees the message.

Span names use the channel or group name as given; the attributes follow OpenTelemetry's
messaging conventions (``messaging.system``, ``messaging.operation.type``,
``messaging.destination.name``, ``messaging.message.body.size``).
"""

from __future__ import annotations

import contextvars
from typing import Any

from ..hooks import Event, GroupSent, Hook, MessageSent, SendFailed
from ..requirements import Requirement

__all__ = ["CARRIER_KEY", "Tracing"]

#: The message key that carries the sender's trace context.
CARRIER_KEY = "_otel"

# The span of the send() or group_send() running in this context, ended by its outcome.
_sending: contextvars.ContextVar[Any] = contextvars.ContextVar("channels_engines_otel_send")


class Tracing(Hook):
    """A span per send, group_send and receive, linked across processes."""

    requires = (Requirement("opentelemetry.trace", "opentelemetry-api", "otel"),)
    events = (MessageSent, GroupSent, SendFailed)

    def __init__(self, tracer_provider: Any = None) -> None:
        from opentelemetry import propagate, trace

        from .._version import __version__

        self._trace = trace
        self._propagate = propagate
        self._tracer = trace.get_tracer(
            "channels_engines", __version__, tracer_provider=tracer_provider
        )

    def outgoing(self, kind: str, target: str, message: dict[str, Any]) -> dict[str, Any]:
        trace = self._trace
        span = self._tracer.start_span(
            f"{kind} {target}",
            kind=trace.SpanKind.PRODUCER,
            attributes={
                "messaging.system": "channels_engines",
                "messaging.operation.type": "send",
                "messaging.destination.name": target,
            },
        )
        previous = _sending.get(None)
        if previous is not None:
            previous.end()  # a send that raised before the layer encoded its message
        _sending.set(span)
        carrier: dict[str, str] = {}
        self._propagate.inject(carrier, context=trace.set_span_in_context(span))
        return {**message, CARRIER_KEY: carrier}

    def handle(self, event: Event) -> None:
        span = _sending.get(None)
        if span is None:
            return
        _sending.set(None)
        if isinstance(event, (MessageSent, GroupSent)):
            span.set_attribute("messaging.message.body.size", event.size)
            if isinstance(event, GroupSent) and event.receivers is not None:
                span.set_attribute("channels_engines.receivers", event.receivers)
        elif isinstance(event, SendFailed):
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, event.error))
            span.set_attribute("error.type", event.error)
        span.end()

    def incoming(self, channel: str, message: dict[str, Any]) -> dict[str, Any]:
        trace = self._trace
        carrier = message.get(CARRIER_KEY)
        links = []
        parent = None
        if isinstance(carrier, dict):
            message = {key: value for key, value in message.items() if key != CARRIER_KEY}
            extracted = self._propagate.extract(carrier)
            sender = trace.get_current_span(extracted).get_span_context()
            if sender.is_valid:
                links.append(trace.Link(sender))
                if not trace.get_current_span().get_span_context().is_valid:
                    # Nothing traced here yet: the receive joins the sender's trace.
                    parent = extracted
        span = self._tracer.start_span(
            f"receive {channel}",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            links=links,
            attributes={
                "messaging.system": "channels_engines",
                "messaging.operation.type": "receive",
                "messaging.destination.name": channel,
            },
        )
        span.end()
        return message
