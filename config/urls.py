from django.contrib import admin
from django.urls import include, path

from bots import twofactor
from config import health, metrics

urlpatterns = [
    path("admin/2fa/", include(twofactor)),
    path("admin/", admin.site.urls),
    path("api/v1/", include("config.api_urls")),
    path("", include("channels_app.urls")),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics.metrics, name="metrics"),
]
