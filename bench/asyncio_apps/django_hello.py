"""A fresh Django project's settings (startproject's middleware) with one async hello view.

Every path answers, so that the same app serves the harness's /scgi/ and /http/
locations. No view touches the database. The harness proxies HTTP with the
upstream's name as Host ("http_backend"), which Django refuses (an underscore
is not valid in a host name): :class:`SaneHost` puts "localhost" instead, for
every server alike.
"""

from __future__ import annotations

import os
import tempfile

from django.conf import settings

settings.configure(
    DEBUG=False,
    ALLOWED_HOSTS=["*"],
    SECRET_KEY="bench-not-secret",
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=[
        "django.contrib.admin",
        "django.contrib.auth",
        "django.contrib.contenttypes",
        "django.contrib.sessions",
        "django.contrib.messages",
        "django.contrib.staticfiles",
    ],
    MIDDLEWARE=[
        "django.middleware.security.SecurityMiddleware",
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.common.CommonMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "django.contrib.messages.middleware.MessageMiddleware",
        "django.middleware.clickjacking.XFrameOptionsMiddleware",
    ],
    TEMPLATES=[
        {
            "BACKEND": "django.template.backends.django.DjangoTemplates",
            "APP_DIRS": True,
            "OPTIONS": {"context_processors": []},
        }
    ],
    DATABASES={
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.path.join(tempfile.gettempdir(), "trioscgi-bench-django.db"),
        }
    },
    USE_TZ=True,
    STATIC_URL="static/",
    LOGGING_CONFIG=None,
)

from typing import Any  # noqa: E402

from django.core.asgi import get_asgi_application  # noqa: E402
from django.http import HttpRequest, HttpResponse  # noqa: E402
from django.urls import re_path  # noqa: E402


async def hello(request: HttpRequest) -> HttpResponse:
    return HttpResponse(b"Hello, world!", content_type="text/plain")


urlpatterns = [re_path(r"", hello)]


class SaneHost:
    """ASGI middleware: a Host header with "_" becomes "localhost"."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = [
                (k, b"localhost" if k == b"host" and b"_" in v else v) for k, v in scope["headers"]
            ]
            scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)


application = SaneHost(get_asgi_application())
