"""Prometheus metrics of a channel layer: ``"hooks": ["prometheus"]``.

Needs ``prometheus_client`` (``pip install 'channels-engines[prometheus]'``). Every metric
has the labels ``alias`` (the ``CHANNEL_LAYERS`` key, or ``""``) and ``engine``. Metrics
are registered once per registry and shared by every layer that reports to it, so that
several aliases can use the hook at once.

With several worker processes (gunicorn, uvicorn ``--workers``), use prometheus_client's
multiprocess mode: set ``PROMETHEUS_MULTIPROC_DIR`` before the workers start and serve
``MultiProcessCollector``; counters and histograms add up across processes.
"""

from __future__ import annotations

import threading
from typing import Any

from ..hooks import (
    ConnectionsChanged,
    Counted,
    CredentialsChanged,
    CredentialsRefreshFailed,
    Event,
    GroupSent,
    Hook,
    ListenerLost,
    ListenerRecovered,
    MessageReceived,
    MessageSent,
)
from ..requirements import Requirement

__all__ = ["Metrics"]

_LABELS = ("alias", "engine")
# Seconds: sends take about a millisecond, a receive() may wait for minutes.
_CALL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_WAIT_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 1800.0)
_AWAY_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_FANOUT_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 1000)
# Counts of ``layer.events`` that are messages lost to the receiver, by reason.
_DROPPED = {"send.channel_full": "channel_full", "group_send.dropped": "group_capacity"}

_lock = threading.Lock()
_by_registry: dict[int, tuple[Any, dict[str, Any]]] = {}


class Metrics(Hook):
    """Counts and times what the layer does, in Prometheus metrics.

    ``registry``: a ``prometheus_client.CollectorRegistry`` (default: the global one);
    ``namespace``: the metric name prefix.
    """

    requires = (Requirement("prometheus_client", "prometheus-client", "prometheus"),)
    events = (
        MessageSent,
        GroupSent,
        MessageReceived,
        Counted,
        ListenerLost,
        ListenerRecovered,
        CredentialsChanged,
        CredentialsRefreshFailed,
        ConnectionsChanged,
    )

    def __init__(self, registry: Any = None, namespace: str = "channels_engines") -> None:
        import prometheus_client

        self.registry = registry if registry is not None else prometheus_client.REGISTRY
        self.namespace = namespace
        self._metrics = _metrics_for(self.registry, namespace)

    def handle(self, event: Event) -> None:
        m = self._metrics
        labels = (event.layer.alias or "", event.layer.engine)
        if isinstance(event, MessageSent):
            m["sent"].labels(*labels, "send").inc()
            m["call"].labels(*labels, "send").observe(event.seconds)
            m["size"].labels(*labels, "send").observe(event.size)
        elif isinstance(event, GroupSent):
            m["sent"].labels(*labels, "group_send").inc()
            m["call"].labels(*labels, "group_send").observe(event.seconds)
            m["size"].labels(*labels, "group_send").observe(event.size)
            if event.receivers is not None:
                m["fanout"].labels(*labels).observe(event.receivers)
        elif isinstance(event, MessageReceived):
            m["received"].labels(*labels).inc()
            m["wait"].labels(*labels).observe(event.waited)
        elif isinstance(event, Counted):
            m["events"].labels(*labels, event.name).inc(event.count)
            reason = _DROPPED.get(event.name)
            if reason is not None:
                m["dropped"].labels(*labels, reason).inc(event.count)
            elif event.name == "receive.expired":
                m["expired"].labels(*labels).inc(event.count)
        elif isinstance(event, ListenerLost):
            m["lost"].labels(*labels).inc()
        elif isinstance(event, ListenerRecovered):
            m["away"].labels(*labels).observe(event.away)
            if event.may_have_missed:
                m["missed"].labels(*labels).inc()
        elif isinstance(event, CredentialsChanged):
            m["rotations"].labels(*labels).inc()
        elif isinstance(event, CredentialsRefreshFailed):
            m["refresh_failures"].labels(*labels).inc()
        elif isinstance(event, ConnectionsChanged):
            m["connections"].labels(*labels, event.purpose).set(event.held)


def _metrics_for(registry: Any, namespace: str) -> dict[str, Any]:
    """The metrics of ``namespace`` in ``registry``, made on first use."""
    from prometheus_client import Counter, Gauge, Histogram

    with _lock:
        known = _by_registry.get(id(registry))
        if known is not None and known[0] is registry and namespace in known[1]:
            return known[1][namespace]  # type: ignore[no-any-return]
        common: dict[str, Any] = {"namespace": namespace, "registry": registry}
        metrics = {
            "sent": Counter(
                "messages_sent",
                "Messages stored by send() (kind=send) and group_send() (kind=group_send).",
                (*_LABELS, "kind"),
                **common,
            ),
            "received": Counter(
                "messages_received", "Messages returned by receive().", _LABELS, **common
            ),
            "dropped": Counter(
                "messages_dropped",
                "Messages that missed a receiver for capacity: channel_full (send() "
                "raised ChannelFull), group_capacity (a group member's queue was full).",
                (*_LABELS, "reason"),
                **common,
            ),
            "expired": Counter(
                "messages_expired", "Messages dropped unread at their expiry.", _LABELS, **common
            ),
            "events": Counter(
                "layer_events",
                "Everything the layer refused, dropped or repaired, by layer.events name.",
                (*_LABELS, "event"),
                **common,
            ),
            "call": Histogram(
                "send_duration_seconds",
                "Time a send() or group_send() call took.",
                (*_LABELS, "kind"),
                buckets=_CALL_BUCKETS,
                **common,
            ),
            "size": Histogram(
                "message_size_bytes",
                "Encoded size of sent messages, before encryption.",
                (*_LABELS, "kind"),
                buckets=(64, 256, 1024, 4096, 16384, 65536, 262144, 1048576),
                **common,
            ),
            "wait": Histogram(
                "receive_wait_seconds",
                "Time a receive() call waited for its message.",
                _LABELS,
                buckets=_WAIT_BUCKETS,
                **common,
            ),
            "fanout": Histogram(
                "group_send_receivers",
                "Receiving queues a group_send() wrote its message for.",
                _LABELS,
                buckets=_FANOUT_BUCKETS,
                **common,
            ),
            "lost": Counter(
                "listener_lost",
                "Times the connection bringing messages to the process was lost.",
                _LABELS,
                **common,
            ),
            "away": Histogram(
                "listener_away_seconds",
                "How long that connection was away before it came back.",
                _LABELS,
                buckets=_AWAY_BUCKETS,
                **common,
            ),
            "missed": Counter(
                "listener_may_have_missed",
                "Returns of that connection after which messages sent meanwhile may be "
                "gone (the server restarted and tables are unlogged).",
                _LABELS,
                **common,
            ),
            "rotations": Counter(
                "credential_rotations",
                "Times the credential provider gave new credentials.",
                _LABELS,
                **common,
            ),
            "refresh_failures": Counter(
                "credential_refresh_failures",
                "Times asking the credential provider failed.",
                _LABELS,
                **common,
            ),
            # In multiprocess mode, the sum over the live processes.
            "connections": Gauge(
                "connections",
                "Server connections the layer holds in this process, by purpose (postgres: "
                "pool, counting those being opened, and listen).",
                (*_LABELS, "purpose"),
                multiprocess_mode="livesum",
                **common,
            ),
        }
        if known is None or known[0] is not registry:
            known = (registry, {})
            _by_registry[id(registry)] = known
        known[1][namespace] = metrics
        return metrics
