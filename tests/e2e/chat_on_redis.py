"""The chat example's settings with one change: the channel layer's ENGINE is redis."""

import os

from chatsite.settings import *  # noqa: F403 - the example, unchanged but for the layer

CHANNEL_LAYERS = {
    "default": {"ENGINE": "redis", "CONFIG": {"url": os.environ["CHAT_REDIS_URL"]}},
}
