"""The built-in hooks, Prometheus and OpenTelemetry, with their real client libraries,
against a real PostgreSQL: two layers stand for two processes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer
from django.test import override_settings
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry

from channels_engines import EngineChannelLayer
from channels_engines.contrib.opentelemetry import CARRIER_KEY, Tracing
from channels_engines.contrib.prometheus import Metrics
from tests.support.pgtools import Admin, engine_of, make_layer, run
from tests.support.polling import await_for

pytestmark = pytest.mark.postgres


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_prometheus_counts_and_times_what_the_layer_does(
    app: str, prefix: str, admin: Admin
) -> None:
    registry = CollectorRegistry()

    async def scenario() -> None:
        sender = make_layer(app, prefix=prefix, hooks=[Metrics(registry=registry)], capacity=5)
        receiver = make_layer(app, prefix=prefix, hooks=[Metrics(registry=registry)], capacity=5)
        channel = await receiver.new_channel()
        await receiver.group_add("metrics", channel)
        for n in range(3):
            await sender.send(channel, {"type": "direct", "n": n})
        await sender.group_send("metrics", {"type": "group"})
        for _ in range(4):
            await asyncio.wait_for(receiver.receive(channel), 10)
        for n in range(5):
            await sender.send("metrics.unread", {"n": n})
        with pytest.raises(ChannelFull):
            await sender.send("metrics.unread", {"n": 5})
        listener = engine_of(receiver).listener
        admin.conn.execute("SELECT pg_terminate_backend(%s)", [listener.backend_pid])
        await await_for(
            lambda: sample(registry, "channels_engines_listener_away_seconds_count", **layer) == 1,
            "the listener's return",
        )
        held["open"] = {
            purpose: sample(registry, "channels_engines_connections", purpose=purpose, **layer)
            for purpose in ("pool", "listen")
        }
        held["server"] = admin.count(app)
        await sender.close()
        await receiver.close()

    layer = {"alias": "", "engine": "postgres"}
    held: dict[str, Any] = {}
    run(scenario())
    # Both layers report to one registry: the gauge is the last count one of them set.
    assert held["open"]["listen"] == 1  # the receiver's, back after the kill
    assert 1 <= held["open"]["pool"] <= 2
    assert held["server"] >= held["open"]["listen"] + held["open"]["pool"]
    for purpose in ("pool", "listen"):
        assert sample(registry, "channels_engines_connections", purpose=purpose, **layer) == 0
    assert sample(registry, "channels_engines_messages_sent_total", kind="send", **layer) == 8
    assert sample(registry, "channels_engines_messages_sent_total", kind="group_send", **layer) == 1
    assert sample(registry, "channels_engines_messages_received_total", **layer) == 4
    assert (
        sample(registry, "channels_engines_messages_dropped_total", reason="channel_full", **layer)
        == 1
    )
    assert (
        sample(registry, "channels_engines_layer_events_total", event="send.channel_full", **layer)
        == 1
    )
    assert (
        sample(registry, "channels_engines_send_duration_seconds_count", kind="send", **layer) == 8
    )
    assert sample(registry, "channels_engines_receive_wait_seconds_count", **layer) == 4
    assert sample(registry, "channels_engines_group_send_receivers_count", **layer) == 1
    assert sample(registry, "channels_engines_listener_lost_total", **layer) == 1
    assert sample(registry, "channels_engines_listener_may_have_missed_total", **layer) == 0


def test_prometheus_metrics_are_shared_by_every_layer_of_a_registry() -> None:
    registry = CollectorRegistry()
    layers = {
        alias: {
            "BACKEND": "channels_engines.EngineChannelLayer",
            "CONFIG": {"ENGINE": "memory", "hooks": [Metrics(registry=registry)]},
        }
        for alias in ("one", "two")
    }
    with override_settings(CHANNEL_LAYERS=layers):
        for alias in ("one", "two"):
            run(get_channel_layer(alias).send("shared.metrics", {"type": "x"}))
    for alias in ("one", "two"):
        labels = {"alias": alias, "engine": "memory", "kind": "send"}
        assert sample(registry, "channels_engines_messages_sent_total", **labels) == 1


def test_prometheus_is_a_built_in_hook_name() -> None:
    layer = EngineChannelLayer(ENGINE="memory", hooks=["prometheus"])
    assert isinstance(layer._hooks.hooks[0], Metrics)


@pytest.fixture
def spans() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def test_opentelemetry_links_the_receivers_span_to_the_senders_across_processes(
    app: str, prefix: str, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    tracer = provider.get_tracer("the application")

    async def scenario() -> list[dict[str, Any]]:
        sender = make_layer(app, prefix=prefix, hooks=[Tracing(provider)])
        receiver = make_layer(app, prefix=prefix, hooks=[Tracing(provider)])
        channel = await receiver.new_channel()
        await receiver.group_add("traced", channel)
        with tracer.start_as_current_span("a view"):
            await sender.send(channel, {"type": "direct"})
            await sender.group_send("traced", {"type": "group"})
        got = [await asyncio.wait_for(receiver.receive(channel), 10) for _ in range(2)]
        await sender.close()
        await receiver.close()
        return got

    got = run(scenario())
    assert got == [{"type": "direct"}, {"type": "group"}]  # the carrier is gone
    finished = {span.name.split(" ")[0]: span for span in exporter.get_finished_spans()}
    view, send, group_send, receive = (
        finished["a"],
        finished["send"],
        finished["group_send"],
        finished["receive"],
    )
    assert send.kind is SpanKind.PRODUCER
    assert send.parent is not None
    assert send.parent.span_id == view.context.span_id
    assert group_send.parent is not None
    assert group_send.parent.span_id == view.context.span_id
    assert send.attributes is not None
    assert send.attributes["messaging.message.body.size"] > 0
    receives = [span for span in exporter.get_finished_spans() if span.kind is SpanKind.CONSUMER]
    assert [[link.context.span_id for link in span.links] for span in receives] == [
        [send.context.span_id],
        [group_send.context.span_id],
    ]
    # Nothing was traced in the receiver: its spans join the sender's trace.
    assert all(span.context.trace_id == view.context.trace_id for span in (send, *receives))
    assert [span.parent.span_id for span in receives if span.parent] == [
        send.context.span_id,
        group_send.context.span_id,
    ]
    assert receive.attributes is not None
    assert receive.attributes["messaging.operation.type"] == "receive"


def test_opentelemetry_marks_a_refused_send_as_an_error(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans

    async def scenario() -> None:
        layer = EngineChannelLayer(ENGINE="memory", hooks=[Tracing(provider)], capacity=1)
        await layer.send("traced.full", {"type": "a"})
        with pytest.raises(ChannelFull):
            await layer.send("traced.full", {"type": "b"})
        message = await layer.receive("traced.full")
        assert CARRIER_KEY not in message

    run(scenario())
    sends = [span for span in exporter.get_finished_spans() if span.name == "send traced.full"]
    assert [span.status.status_code for span in sends] == [StatusCode.UNSET, StatusCode.ERROR]
    assert sends[1].attributes is not None
    assert sends[1].attributes["error.type"] == "ChannelFull"
