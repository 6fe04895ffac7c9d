"""Django settings for the test suite; the database comes from CHANNELS_ENGINES_TEST_DSN."""

import os

from psycopg.conninfo import conninfo_to_dict

SECRET_KEY = "channels-engines-tests"
USE_TZ = True
INSTALLED_APPS = ["channels", "channels_engines"]

# Unset or "embedded": a private server is started when a test first needs one
# (tests.support.pgtools.server_dsn), which then fills in the alias below.
_dsn = os.environ.get("CHANNELS_ENGINES_TEST_DSN", "").strip()
_params = conninfo_to_dict(_dsn if _dsn and _dsn != "embedded" else "dbname=test")
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _params.get("dbname", "test"),
        "USER": _params.get("user", ""),
        "PASSWORD": _params.get("password", ""),
        "HOST": _params.get("host", ""),
        "PORT": _params.get("port", ""),
    }
}
CHANNEL_LAYERS = {"default": {"ENGINE": "memory"}}
