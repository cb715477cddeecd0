"""config.urls plus /bench/bare: a DRF POST that does nothing and answers {}. It goes
through the same middleware, the same gunicorn and the same settings as the callbacks."""

from django.urls import path
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.urls import urlpatterns as deployed_urlpatterns


class BareView(APIView):
    authentication_classes: list = []
    permission_classes: list = []

    def post(self, request: Request) -> Response:
        return Response({})


urlpatterns = [path("bench/bare", BareView.as_view(), name="bench-bare"), *deployed_urlpatterns]
