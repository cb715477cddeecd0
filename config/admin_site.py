from urllib.parse import urlencode

from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django_otp.admin import OTPAdminSite


class SwitchboardAdminSite(OTPAdminSite):
    """The console. Every page requires a session verified with a second factor.

    OTPAdminSite.has_permission insists on request.user.is_verified(); logging in is our
    two-step flow (password, then a TOTP code or first-time enrollment) in bots.twofactor.
    """

    site_header = "Switchboard console"
    site_title = "Switchboard"
    index_title = "Bots, models and routing"

    def login(self, request: HttpRequest, extra_context=None) -> HttpResponse:
        target = reverse("twofactor:login")
        next_url = request.GET.get("next")
        if next_url:
            target = f"{target}?{urlencode({'next': next_url})}"
        return redirect(target)
