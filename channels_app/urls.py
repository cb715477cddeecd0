from django.urls import path

from channels_app.views import callback

urlpatterns = [
    path("callback/<str:platform>/<uuid:bot_uuid>/", callback, name="callback"),
]
