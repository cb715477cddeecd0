"""The HTTP API, version 1 (mounted under /api/v1/). See docs/api.md."""

from django.http import HttpRequest, JsonResponse
from django.urls import path, re_path
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.views import SpectacularAPIView

from audit.api import AuditExportView
from routing.api import ChatView


@csrf_exempt
def unknown_endpoint(request: HttpRequest, rest: str) -> JsonResponse:
    # A client with a typo in the path gets the API's JSON error, not the HTML 404 page.
    return JsonResponse(
        {
            "error": {
                "code": "not_found",
                "message": f"no endpoint /api/v1/{rest}; the endpoints are listed at /api/v1/schema/",
            }
        },
        status=404,
    )


urlpatterns = [
    path("chat", ChatView.as_view(), name="api-chat"),
    path("audit/export", AuditExportView.as_view(), name="api-audit-export"),
    # Public, like any API description: it shows the shapes, never data.
    path("schema/", SpectacularAPIView.as_view(authentication_classes=[], permission_classes=[]), name="api-schema"),
    re_path(r"^(?P<rest>.*)$", unknown_endpoint),
]
