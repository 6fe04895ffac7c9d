"""Settings of the chat example: one PostgreSQL database, which also carries the channel layer.

Everything that differs between machines comes from the environment, so the same settings
run under the demo script, the end-to-end tests, docker-compose and your own server:

``DATABASE_URL``
    ``postgresql://user:password@host:port/dbname`` (or a libpq ``key=value`` string).
    Required: the layer needs a database that every server process can reach.
``CHAT_WORKER``
    A name for this server process, shown in the page and used as PostgreSQL's
    ``application_name`` (``chat <name>``), so each worker's connections can be told
    apart in ``pg_stat_activity``.
``DJANGO_SECRET_KEY``, ``DJANGO_DEBUG``, ``DJANGO_ALLOWED_HOSTS``
    The usual; the defaults suit a demo on localhost, not a public server.
"""

from __future__ import annotations

import os
from typing import Any

from django.core.exceptions import ImproperlyConfigured

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "insecure-chat-example-key-do-not-deploy")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",")

INSTALLED_APPS = [
    "channels",
    # Lets CHANNEL_LAYERS name an ENGINE, and brings the migration of the layer's tables.
    "channels_engines",
    "chat",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "chatsite.urls"
ASGI_APPLICATION = "chatsite.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]

USE_TZ = True
TIME_ZONE = "UTC"

WORKER_NAME = os.environ.get("CHAT_WORKER", "chat")


def _database(url: str) -> dict[str, Any]:
    """A DATABASES entry from a URL; keys other than the usual five become OPTIONS."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(url)
    except Exception:
        # Not chained: the parser's message may quote the URL, password included.
        raise ImproperlyConfigured("DATABASE_URL is not a valid PostgreSQL URL.") from None
    options = {key: str(value) for key, value in params.items()}
    entry = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": options.pop("dbname", ""),
        "USER": options.pop("user", ""),
        "PASSWORD": options.pop("password", ""),
        "HOST": options.pop("host", ""),
        "PORT": options.pop("port", ""),
        "OPTIONS": options,
    }
    options.setdefault("application_name", f"chat {WORKER_NAME}"[:63])
    return entry


_url = os.environ.get("DATABASE_URL", "").strip()
if not _url:
    raise ImproperlyConfigured(
        "DATABASE_URL is not set. Point it at a PostgreSQL database (every server process "
        "must use the same one), or run `python3 examples/chat/demo.py`, which starts a "
        "private PostgreSQL and sets it for you."
    )
DATABASES = {"default": _database(_url)}

CHANNEL_LAYERS = {
    "default": {
        "ENGINE": "postgres",
        "CONFIG": {
            # Connect like DATABASES["default"] (same server, login and application_name).
            "database": "default",
            # The tables come from `manage.py migrate`; the server processes run no DDL.
            "create_tables": False,
        },
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        # Reconnects and dropped messages are logged here, once each, not per message.
        "channels_engines": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
}
