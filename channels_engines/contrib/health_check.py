"""A django-health-check (4.x) check of a channel layer: a real round trip.

Needs django-health-check 4 (``pip install 'channels-engines[health]'``). List it among
the checks of its view::

    path("health/", HealthCheckView.as_view(checks=[
        "health_check.Database",
        "channels_engines.contrib.health_check.ChannelLayer",
        ("channels_engines.contrib.health_check.ChannelLayer", {"alias": "chat"}),
    ]))

It runs :func:`channels_engines.health.check_health` on the view's event loop, with the
process's own layer, and reports a failed round trip as ``ServiceUnavailable``.
"""

from __future__ import annotations

import dataclasses
import datetime

from channels import DEFAULT_CHANNEL_LAYER

from ..health import DEFAULT_TIMEOUT, check_health
from ..requirements import Requirement, not_installed

try:
    from health_check.base import HealthCheck
    from health_check.exceptions import ServiceUnavailable
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError(
        "channels_engines.contrib.health_check "
        + not_installed([Requirement("health_check", "django-health-check", "health")])
    ) from exc

__all__ = ["ChannelLayer"]


@dataclasses.dataclass
class ChannelLayer(HealthCheck):  # type: ignore[misc]  # django-health-check has no types
    """A message sent and received through the layer ``alias`` within ``timeout``."""

    alias: str = DEFAULT_CHANNEL_LAYER
    timeout: datetime.timedelta = dataclasses.field(
        default=datetime.timedelta(seconds=DEFAULT_TIMEOUT), repr=False
    )

    async def run(self) -> None:
        result = await check_health(self.alias, timeout=self.timeout.total_seconds())
        if not result.ok:
            raise ServiceUnavailable(result.error)
