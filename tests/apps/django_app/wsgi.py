"""The whole Django project: settings, views, URLs and the WSGI application.

Serve with ``trioscgi django_app.wsgi:application`` (from tests/apps). Exceptions
propagate to the server (DEBUG_PROPAGATE_EXCEPTIONS), which answers 500.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from django.conf import settings

settings.configure(
    DEBUG=False,
    DEBUG_PROPAGATE_EXCEPTIONS=True,
    ALLOWED_HOSTS=["*"],
    SECRET_KEY="trioscgi-e2e-not-secret",
    ROOT_URLCONF=__name__,
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
    DATABASES={},
    USE_TZ=True,
    # Files above 2.5 MB go to a temp file: a 50 MB upload never sits in memory.
    FILE_UPLOAD_MAX_MEMORY_SIZE=2_621_440,
    DATA_UPLOAD_MAX_MEMORY_SIZE=2_621_440,
    LOGGING_CONFIG=None,
)

from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import (  # noqa: E402
    HttpRequest,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
)
from django.urls import path, re_path  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402


def hello(request: HttpRequest) -> HttpResponse:
    return HttpResponse("hello from django\n", content_type="text/plain")


def echo(request: HttpRequest, rest: str) -> JsonResponse:
    return JsonResponse(
        {
            "rest": rest,
            "path": request.path,
            "path_info": request.path_info,
            "script_name": request.META["SCRIPT_NAME"],
            "query": list(request.GET.items()),
            "absolute_uri": request.build_absolute_uri(),
        }
    )


@csrf_exempt  # type: ignore[untyped-decorator]  # Django ships no type hints
def form(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"fields": [[k, v] for k, vs in request.POST.lists() for v in vs]})


@csrf_exempt  # type: ignore[untyped-decorator]  # Django ships no type hints
def upload(request: HttpRequest) -> JsonResponse:
    f = request.FILES["file"]
    digest = hashlib.sha256()
    size = 0
    for block in f.chunks(1 << 16):
        digest.update(block)
        size += len(block)
    return JsonResponse({"name": f.name, "size": size, "sha256": digest.hexdigest()})


def stream(request: HttpRequest) -> StreamingHttpResponse:
    n = int(request.GET.get("n", "10"))

    def generate() -> Iterator[bytes]:
        for i in range(n):
            yield f"chunk {i}\n".encode()

    response = StreamingHttpResponse(generate(), content_type="text/plain")
    response["X-Accel-Buffering"] = "no"
    return response


def boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("boom from django")


urlpatterns = [
    path("", hello),
    re_path(r"^echo/(?P<rest>.*)$", echo),
    path("form", form),
    path("upload", upload),
    path("stream", stream),
    path("boom", boom),
]

application = get_wsgi_application()
