"""The whole project: settings, async views, URLs, the database and the ASGI application.

Serve with ``trioscgi django_asgi_app.asgi:application`` (from tests/apps): no
``app_loop`` setting, auto puts Django's ASGIHandler on asyncio. The sqlite
database is the file named by ``DJANGO_ASGI_DB`` (default: in the temp dir);
it is migrated and given an admin user ``admin`` / ``admin-password`` on the
first import. ``DJANGO_ASGI_MARKS`` names a directory where views leave marks the tests
read (that a view started, what a cancelled view saw) and look for the
test's release files.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import os
import tempfile
import threading
from collections.abc import AsyncIterator
from pathlib import Path

from django.conf import settings

DB = os.environ.get("DJANGO_ASGI_DB", os.path.join(tempfile.gettempdir(), "trioscgi-django.db"))
MARKS = Path(os.environ.get("DJANGO_ASGI_MARKS", tempfile.gettempdir()))

settings.configure(
    DEBUG=False,
    ALLOWED_HOSTS=["*"],
    SECRET_KEY="trioscgi-e2e-not-secret",
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=[
        "django.contrib.admin",
        "django.contrib.auth",
        "django.contrib.contenttypes",
        "django.contrib.sessions",
        "django.contrib.messages",
    ],
    MIDDLEWARE=[
        "django.middleware.security.SecurityMiddleware",
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.common.CommonMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "django.contrib.messages.middleware.MessageMiddleware",
    ],
    TEMPLATES=[
        {
            "BACKEND": "django.template.backends.django.DjangoTemplates",
            "APP_DIRS": True,
            "OPTIONS": {
                "context_processors": [
                    "django.template.context_processors.request",
                    "django.contrib.auth.context_processors.auth",
                    "django.contrib.messages.context_processors.messages",
                ]
            },
        }
    ],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": DB}},
    DEFAULT_AUTO_FIELD="django.db.models.AutoField",
    USE_TZ=True,
    STATIC_URL="static/",
    LOGGING_CONFIG=None,
)

import django  # noqa: E402

django.setup()

from asgiref.sync import sync_to_async  # noqa: E402
from django.contrib import admin  # noqa: E402
from django.contrib.auth.models import User  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse  # noqa: E402
from django.urls import path  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402

if not os.path.exists(DB):
    call_command("migrate", verbosity=0, interactive=False)
    User.objects.create_superuser("admin", "admin@example.invalid", "admin-password")

request_tag: contextvars.ContextVar[str] = contextvars.ContextVar("request_tag", default="")


async def hello(request: HttpRequest) -> HttpResponse:
    return HttpResponse("hello from django asgi\n", content_type="text/plain")


async def stream(request: HttpRequest) -> StreamingHttpResponse:
    n = int(request.GET.get("n", "5"))

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(n):
            await asyncio.sleep(0)
            yield f"chunk {i}\n".encode()

    response = StreamingHttpResponse(chunks(), content_type="text/plain")
    response["X-Accel-Buffering"] = "no"
    return response


def _users_and_thread() -> tuple[list[str], int]:
    return sorted(User.objects.values_list("username", flat=True)), threading.get_ident()


async def orm(request: HttpRequest) -> JsonResponse:
    # The ORM is sync-only: Django's async views reach it through sync_to_async,
    # thread-sensitive by default (one thread for every such call of a request).
    request_tag.set(request.GET.get("tag", ""))
    users, first = await sync_to_async(_users_and_thread)()
    count = await User.objects.acount()
    _, second = await sync_to_async(_users_and_thread)()
    seen = await sync_to_async(request_tag.get)()
    return JsonResponse(
        {
            "users": users,
            "count": count,
            "same_thread": first == second,
            "not_loop_thread": first != threading.get_ident(),
            "tag_in_thread": seen,
        }
    )


async def forever(request: HttpRequest) -> StreamingHttpResponse:
    """Streams until the client goes away; leaves a mark saying how it ended."""
    name = request.GET.get("mark", "forever")

    async def chunks() -> AsyncIterator[bytes]:
        try:
            for i in range(100_000):
                yield f"tick {i}\n".encode() * 64
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            (MARKS / f"{name}.cancelled").write_text("CancelledError")
            raise
        except GeneratorExit:
            (MARKS / f"{name}.cancelled").write_text("GeneratorExit")
            raise

    response = StreamingHttpResponse(chunks(), content_type="text/plain")
    response["X-Accel-Buffering"] = "no"
    return response


async def slow(request: HttpRequest) -> HttpResponse:
    """Marks that it started, then waits (bounded) for the test's release file."""
    name = request.GET.get("mark", "slow")
    (MARKS / f"{name}.started").write_text("")
    release = MARKS / f"{name}.release"
    for _ in range(3000):  # 30 s at most
        if release.exists():
            return HttpResponse(f"{name} done\n", content_type="text/plain")
        await asyncio.sleep(0.01)
    return HttpResponse("never released\n", status=504, content_type="text/plain")


@csrf_exempt  # type: ignore[untyped-decorator]  # Django ships no type hints
async def upload(request: HttpRequest) -> JsonResponse:
    """The sha256 and size of each uploaded file, by field name (multipart/form-data)."""
    files = {}
    for field, uploaded in request.FILES.items():
        digest = hashlib.sha256()
        for chunk in uploaded.chunks():
            digest.update(chunk)
        files[field] = {"sha256": digest.hexdigest(), "size": uploaded.size}
    return JsonResponse({"files": files, "fields": dict(request.POST.items())})


urlpatterns = [
    path("", hello),
    path("stream", stream),
    path("orm", orm),
    path("forever", forever),
    path("slow", slow),
    path("upload", upload),
    path("admin/", admin.site.urls),
]

application = get_asgi_application()
